// Pairwell "pairs well with" block: asks the app (through the App Proxy) and renders real catalog products in
// the space the Liquid reserved; each card can be added to the cart. It reports what shoppers do with it
// (shown, clicked, added to the cart) to /events. A failure, an empty answer or a slow app leaves no trace.
(() => {
  const CLICKED = "pairwell:clicked"; // product id → {viewed, source}, for the add-to-cart on the next page
  const BUDGET_MS = 3500; // the shopper will not wait longer for a block below the buy button
  const VISITOR = "pairwell:visitor"; // a random id, the A/B holdout's stable visitor (no storage: none)

  // The App Proxy's prefix and subpath, as the merchant may have renamed them (a block setting): a path of
  // plain segments under the shopper's locale root, or the default. Never "//host" nor "..".
  const proxy = (block, route) => {
    const path = block.dataset.proxyPath || "";
    const clean = /^(\/[\w-]+)+\/?$/.test(path) ? path.replace(/\/$/, "") : "/apps/pairwell";
    return `${block.dataset.root}${clean.slice(1)}/${route}`;
  };

  const visitor = () => {
    try {
      let id = localStorage.getItem(VISITOR);
      if (!/^[\w-]{8,64}$/.test(id || "")) {
        id = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
        localStorage.setItem(VISITOR, id);
      }
      return id;
    } catch { return null; }
  };

  const send = (block, events) => {
    const url = proxy(block, "events");
    const body = new Blob([JSON.stringify({ events })], { type: "application/json" });
    if (!(navigator.sendBeacon && navigator.sendBeacon(url, body))) {
      fetch(url, { method: "POST", body, keepalive: true }).catch(() => {});
    }
  };

  const clicked = () => {
    try { return JSON.parse(sessionStorage.getItem(CLICKED)) || {}; } catch { return {}; }
  };

  // On the page of a product reached through the block: its product form's add-to-cart counts for the block.
  const watchAddToCart = (block) => {
    const from = clicked()[block.dataset.productId];
    if (!from) return;
    document.querySelectorAll('form[action*="/cart/add"]').forEach((form) => form.addEventListener("submit", () => {
      send(block, [{ kind: "add_to_cart", viewed_product_id: from.viewed, product_id: block.dataset.productId,
                     source: from.source }]);
    }, { once: true }));
  };

  // The price the shopper pays: the storefront's own product JSON (presentment currency, minor units × 100),
  // formatted in the shopper's active currency. The app's price is the shop's currency: never shown.
  const money = (cents, block) => {
    const S = window.Shopify || {};
    const currency = (S.currency && S.currency.active) || block.dataset.currency;
    if (!currency || !Number.isFinite(cents)) return "";
    try {
      return new Intl.NumberFormat(S.locale || document.documentElement.lang || undefined,
                                   { style: "currency", currency }).format(cents / 100);
    } catch { return ""; }
  };

  async function price(block, item, li, signal) {
    const slot = li.querySelector(".pairwell-block__price");
    try {
      if (!item.handle) throw new Error("no handle");
      const response = await fetch(`${block.dataset.root}products/${encodeURIComponent(item.handle)}.js`,
                                   { headers: { Accept: "application/json" }, signal });
      if (!response.ok) throw new Error(response.status);
      const variant = ((await response.json()).variants || []).find((v) => String(v.id) === String(item.variant_id));
      if (variant && variant.available) slot.textContent = money(Number(variant.price), block);
      else li.querySelector(".pairwell-block__add")?.remove(); // sold out or gone since the app last synced
    } catch { /* no price rather than a wrong one */ }
    slot.classList.remove("is-pending");
  }

  const el = (tag, part, text) => {
    const node = document.createElement(tag);
    if (part) node.className = `pairwell-block__${part}`;
    if (text != null) node.textContent = text;
    return node;
  };

  // "Add to cart" is what is seen; screen readers hear it first, then which product.
  const label = (button, text, title) => {
    button.textContent = text;
    button.setAttribute("aria-label", `${text}: ${title}`);
  };

  async function refreshCart(block, line) {
    let cart = null;
    try {
      cart = await (await fetch(block.dataset.cartUrl, { headers: { Accept: "application/json" } })).json();
      document.querySelectorAll("[data-cart-count]").forEach((count) => { count.textContent = cart.item_count; });
    } catch { /* the theme's own listeners still hear the event */ }
    document.dispatchEvent(new CustomEvent("cart:refresh", { bubbles: true, detail: { cart, items: [line] } }));
  }

  async function addToCart(block, item, button, source) {
    if (button.getAttribute("aria-disabled") === "true") return;
    const say = block.dataset;
    const status = block.querySelector("[data-pairwell-status]");
    button.setAttribute("aria-disabled", "true"); // not `disabled`: the focus stays on the button
    try {
      const response = await fetch(say.cartAdd, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ id: item.variant_id, quantity: 1 }),
      });
      const line = await response.json();
      if (!response.ok) throw new Error(line.description || say.addFailed);
      label(button, say.added, item.title);
      button.classList.add("is-added");
      status.textContent = `${item.title}: ${say.added}`;
      send(block, [{ kind: "add_to_cart", viewed_product_id: block.dataset.productId, product_id: String(item.id),
                     source }]);
      refreshCart(block, line);
      setTimeout(() => { label(button, say.add, item.title); button.classList.remove("is-added"); }, 2500);
    } catch (error) {
      status.textContent = `${item.title}: ${error.message || say.addFailed}`;
    } finally {
      button.removeAttribute("aria-disabled");
    }
  }

  const card = (item, block, source) => {
    const li = el("li", "item");
    const link = el("a", "link");
    // The shopper's own storefront (locale, market), not the primary domain's URL.
    link.href = item.handle ? `${block.dataset.root}products/${encodeURIComponent(item.handle)}` : item.url;
    const media = el(item.image ? "img" : "span", "media");
    if (item.image) {
      Object.assign(media, { src: item.image, alt: "", loading: "lazy", width: 300, height: 300 });
    }
    link.append(media, el("span", "title", item.title));
    link.addEventListener("click", () => {
      const viewed = block.dataset.productId;
      try {
        sessionStorage.setItem(CLICKED, JSON.stringify({ ...clicked(), [item.id]: { viewed, source } }));
      } catch { /* private mode: the click still counts */ }
      send(block, [{ kind: "click", viewed_product_id: viewed, product_id: String(item.id), source }]);
    });
    const slot = el("span", "price");
    slot.classList.add("is-pending");
    li.append(link, slot, el("span", "reason", item.reason));
    if (item.variant_id) {
      const add = el("button", "add");
      add.type = "button";
      label(add, block.dataset.add, item.title);
      add.addEventListener("click", () => addToCart(block, item, add, source));
      li.append(add);
    }
    return li;
  };

  // Nothing to show: out of sight below, the block goes; in sight, its box stays blank so nothing moves.
  const vanish = (block) => {
    if (block.getBoundingClientRect().top >= window.innerHeight) block.hidden = true;
    else block.classList.add("is-empty");
    block.setAttribute("aria-hidden", "true");
  };

  async function fill(block) {
    const list = block.querySelector("[data-pairwell-list]");
    const limit = Number(block.dataset.limit) || 4;
    const params = new URLSearchParams({ product_id: block.dataset.productId, limit });
    if (block.dataset.cart) params.set("cart", block.dataset.cart);
    params.set("intent", block.dataset.intent === "related" ? "related" : "complementary");
    const id = visitor();
    if (id) params.set("visitor", id);
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), BUDGET_MS);
    try {
      const response = await fetch(`${proxy(block, "recommendations")}?${params}`,
                                   { headers: { Accept: "application/json" }, signal: controller.signal });
      if (!response.ok) throw new Error(response.status);
      const { products, source } = await response.json();
      const shown = (Array.isArray(products) ? products : []).filter((p) => p && p.id && p.title).slice(0, limit);
      if (!shown.length) throw new Error("empty");
      list.style.minHeight = `${list.offsetHeight}px`; // fewer cards than reserved: keep the space
      const cards = shown.map((item) => card(item, block, source));
      list.replaceChildren(...cards);
      const prices = new AbortController();
      setTimeout(() => prices.abort(), BUDGET_MS);
      shown.forEach((item, n) => price(block, item, cards[n], prices.signal));
      list.removeAttribute("aria-busy");
      block.classList.add("is-loaded");
      send(block, [{ kind: "impression", viewed_product_id: block.dataset.productId, shown: shown.length, source }]);
    } catch {
      vanish(block); // never leave a broken or half-empty block on the product page
    } finally {
      clearTimeout(timer);
    }
  }

  document.querySelectorAll("[data-pairwell-block]").forEach((block) => {
    watchAddToCart(block);
    fill(block);
  });
})();
