// Pairwell "pairs well with": fills the Liquid's skeleton from the App Proxy, adds to the cart, reports
// impressions, clicks and adds. Failures leave no trace.
(() => {
const CLICKED = "pairwell:clicked"; // product id → {viewed, source}
const BUDGET_MS = 3500; // then the block gives up
const JSON_TYPE = { Accept: "application/json" };

// A renamed proxy (plain segments) under the locale root, else the default.
const proxy = (block, route) => {
  const path = block.dataset.proxyPath || "";
  return `${block.dataset.root}${(/^(\/[\w-]+)+\/?$/.test(path) ? path.replace(/\/$/, "") : "/apps/pairwell")
    .slice(1)}/${route}`;
};

// The A/B holdout's visitor: a random id in localStorage.
const visitor = () => {
  try {
    let id = localStorage.getItem("pairwell:visitor");
    if (!/^[\w-]{8,64}$/.test(id || "")) {
      id = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
      localStorage.setItem("pairwell:visitor", id);
    }
    return id;
  } catch { return null; }
};

const send = (block, kind, fields) => {
  const url = proxy(block, "events");
  const body = new Blob([JSON.stringify({ events: [{ kind, viewed_product_id: block.dataset.productId,
                                                    ...fields }] })], { type: "application/json" });
  if (!navigator.sendBeacon?.(url, body)) fetch(url, { method: "POST", body, keepalive: true }).catch(() => {});
};

const clicked = () => { try { return JSON.parse(sessionStorage.getItem(CLICKED)) || {}; } catch { return {}; } };

// A product reached through the block: its form's add counts.
const watchAddToCart = (block) => {
  const from = clicked()[block.dataset.productId];
  if (!from) return;
  document.querySelectorAll('form[action*="/cart/add"]').forEach((form) => form.addEventListener("submit", () => {
    send(block, "add_to_cart", { viewed_product_id: from.viewed, product_id: block.dataset.productId,
                                 source: from.source });
  }, { once: true }));
};

// The price the shopper pays: the storefront's product JSON (presentment currency), not the app's. None, no price.
async function price(block, item, li, signal) {
  const slot = li.querySelector(".pairwell-block__price");
  const S = window.Shopify || {};
  try {
    if (!item.handle) throw 0;
    const response = await fetch(`${block.dataset.root}products/${encodeURIComponent(item.handle)}.js`,
                                 { headers: JSON_TYPE, signal });
    const variant = response.ok && (await response.json()).variants?.find((v) => v.id == item.variant_id);
    if (variant?.available) {
      slot.textContent = new Intl.NumberFormat(S.locale || document.documentElement.lang || undefined, {
        style: "currency", currency: S.currency?.active || block.dataset.currency }).format(variant.price / 100);
    } else if (response.ok) li.querySelector("button")?.remove(); // sold out since the sync
  } catch { /* no price, not a wrong one */ }
  slot.classList.remove("is-pending");
}

const el = (tag, part, text) =>
  Object.assign(document.createElement(tag), { className: `pairwell-block__${part}`, textContent: text ?? "" });
const section = (id) => document.getElementById(`shopify-section-${id}`) || document.getElementById(id);

// A short word shown ("Ajouter"); the whole action and product spoken.
const label = (button, text, title, spoken = text) => {
  button.textContent = text;
  button.setAttribute("aria-label", `${spoken}: ${title}`);
};

// Dawn's drawer renders the sections, else each replaces its own; events for others.
const refreshCart = (line, item) => {
  const sections = line.sections || {};
  const drawer = document.querySelector("cart-drawer, cart-notification");
  if (drawer?.renderContents) drawer.renderContents(line);
  else {
    for (const [id, html] of Object.entries(sections)) {
      const fresh = html && new DOMParser().parseFromString(html, "text/html").getElementById(`shopify-section-${id}`);
      if (section(id) && fresh) section(id).replaceChildren(...fresh.childNodes);
    }
  }
  const detail = { items: [line], sections, source: "pairwell", productVariantId: item.variant_id };
  for (const name of ["cart:refresh", "cart:updated"]) document.dispatchEvent(new CustomEvent(name, { detail }));
  if (window.PUB_SUB_EVENTS) window.publish?.(PUB_SUB_EVENTS.cartUpdate, { ...detail, cartData: line }); // Dawn
};

async function addToCart(block, item, button, source) {
  if (button.getAttribute("aria-disabled") === "true") return;
  const say = block.dataset;
  const status = block.querySelector("[data-pairwell-status]");
  button.setAttribute("aria-disabled", "true"); // not `disabled`: focus stays
  try {
    const sections = ["cart-drawer", "cart-icon-bubble"].filter(section);
    const response = await fetch(say.cartAdd, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...JSON_TYPE },
      body: JSON.stringify({ id: item.variant_id, quantity: 1, ...(sections.length
        && { sections, sections_url: location.pathname }) }),
    });
    const line = await response.json();
    if (!response.ok) throw new Error(line.description || say.addFailed);
    label(button, say.added, item.title);
    button.classList.add("is-added");
    status.textContent = `${item.title}: ${say.added}`;
    send(block, "add_to_cart", { product_id: String(item.id), source });
    refreshCart(line, item);
    setTimeout(() => { label(button, say.add, item.title, say.addSpoken); button.classList.remove("is-added"); }, 2500);
  } catch (error) {
    status.textContent = `${item.title}: ${error.message || say.addFailed}`;
  } finally {
    button.removeAttribute("aria-disabled");
  }
}

// Shopify's CDN sizes images (`?width=`); other hosts as they are.
const sized = (src, width) => {
  if (!/\/\/cdn\.shopify\.com\/|\/cdn\/shop\//.test(src)) return src;
  const url = new URL(src, location.href);
  url.searchParams.set("width", width);
  return url.href;
};

// A reason cut short becomes a <details> that opens it whole, in place.
const disclose = (reason) => {
  if (reason.tagName === "DETAILS" || reason.scrollHeight <= reason.clientHeight + 1) return;
  const details = el("details", "reason");
  details.append(el("summary", "reason-text", reason.textContent));
  details.addEventListener("toggle", () => details.parentElement.classList.toggle("is-open", details.open));
  reason.replaceWith(details);
};

const card = (item, block, source, size) => {
  const li = el("li", "item");
  const link = el("a", "link");
  link.href = item.handle ? `${block.dataset.root}products/${encodeURIComponent(item.handle)}` : item.url; // the shopper's locale
  const media = el(item.image ? "img" : "span", "media");
  if (item.image) { // decorative: the title beside it names the link
    Object.assign(media, { src: sized(item.image, 360), alt: "", loading: "lazy", decoding: "async",
                           width: 360, height: 360, sizes: `${size}px` });
    if (media.src !== item.image) media.srcset = [180, 270, 360, 540].map((w) => `${sized(item.image, w)} ${w}w`).join(", ");
  }
  link.append(media, el("span", "title", item.title));
  link.addEventListener("click", () => {
    try {
      sessionStorage.setItem(CLICKED, JSON.stringify({ ...clicked(),
                                                      [item.id]: { viewed: block.dataset.productId, source } }));
    } catch { /* private mode */ }
    send(block, "click", { product_id: String(item.id), source });
  });
  const slot = el("span", "price is-pending");
  li.append(link, slot, el("span", "reason", item.reason));
  if (item.variant_id) {
    const add = el("button", "add");
    add.type = "button";
    label(add, block.dataset.add, item.title, block.dataset.addSpoken);
    add.addEventListener("click", () => addToCart(block, item, add, source));
    li.append(add);
  }
  return li;
};

// Nothing to show: below the fold the block goes; in sight its box stays blank.
const vanish = (block) => {
  if (block.getBoundingClientRect().top >= innerHeight) block.hidden = true;
  else block.classList.add("is-empty");
  block.setAttribute("aria-hidden", "true");
};

async function fill(block) {
  const list = block.querySelector("[data-pairwell-list]");
  const limit = Number(block.dataset.limit) || 4;
  const params = new URLSearchParams({ product_id: block.dataset.productId, limit,
                                       intent: block.dataset.intent === "related" ? "related" : "complementary" });
  if (block.dataset.cart) params.set("cart", block.dataset.cart);
  const id = visitor();
  if (id) params.set("visitor", id);
  const controller = new AbortController();
  setTimeout(() => controller.abort(), BUDGET_MS);
  try {
    const response = await fetch(`${proxy(block, "recommendations")}?${params}`,
                                 { headers: JSON_TYPE, signal: controller.signal });
    if (!response.ok) throw new Error(response.status);
    const { products, source = "unknown" } = await response.json();
    const shown = (Array.isArray(products) ? products : []).filter((p) => p?.id && p.title).slice(0, limit);
    if (!shown.length) throw new Error("empty");
    list.style.minHeight = `${list.offsetHeight}px`; // fewer cards: keep the space
    const size = Math.ceil(list.querySelector(".pairwell-block__media")?.offsetWidth || 360);
    const cards = shown.map((item) => card(item, block, source, size));
    list.replaceChildren(...cards);
    shown.forEach((item, n) => price(block, item, cards[n], AbortSignal.timeout?.(BUDGET_MS)));
    list.removeAttribute("aria-busy");
    new ResizeObserver(() => list.querySelectorAll(".pairwell-block__reason").forEach(disclose)).observe(list);
    block.classList.add("is-loaded");
    send(block, "impression", { shown: shown.length, source });
  } catch {
    vanish(block);
  }
}

document.querySelectorAll("[data-pairwell-block]").forEach((block) => {
  watchAddToCart(block);
  fill(block);
});
})();
