// Pairwell "pairs well with" block: asks the app (through the App Proxy) and renders real catalog products.
// It also reports what shoppers do with it (shown, clicked, clicked product added to cart) to /events.
(() => {
  const CLICKED = "pairwell:clicked"; // product id → {viewed, source}, for the add-to-cart on the next page

  const send = (block, events) => {
    const url = block.dataset.proxy.replace(/recommendations$/, "events");
    const body = new Blob([JSON.stringify({ events })], { type: "application/json" });
    if (!(navigator.sendBeacon && navigator.sendBeacon(url, body))) {
      fetch(url, { method: "POST", body, keepalive: true }).catch(() => {});
    }
  };

  const clicked = () => {
    try { return JSON.parse(sessionStorage.getItem(CLICKED)) || {}; } catch { return {}; }
  };

  // On the page of a product reached through the block: its add-to-cart counts for the block.
  const watchAddToCart = (block) => {
    const from = clicked()[block.dataset.productId];
    if (!from) return;
    document.querySelectorAll('form[action*="/cart/add"]').forEach((form) => form.addEventListener("submit", () => {
      send(block, [{ kind: "add_to_cart", viewed_product_id: from.viewed, product_id: block.dataset.productId,
                     source: from.source }]);
    }, { once: true }));
  };

  const money = (price) => {
    const amount = Number(price);
    return Number.isFinite(amount) ? new Intl.NumberFormat(document.documentElement.lang || undefined, {
      style: "currency", currency: (window.Shopify && Shopify.currency && Shopify.currency.active) || "USD",
    }).format(amount) : "";
  };

  const card = (item, block, source) => {
    const li = document.createElement("li");
    li.className = "pairwell-block__item";
    const link = document.createElement("a");
    link.href = item.url;
    link.className = "pairwell-block__link";
    if (item.image) {
      const img = document.createElement("img");
      img.src = item.image;
      img.alt = item.title;
      img.loading = "lazy";
      img.width = 160;
      img.height = 160;
      link.append(img);
    }
    const title = document.createElement("span");
    title.className = "pairwell-block__title";
    title.textContent = item.title;
    const price = document.createElement("span");
    price.className = "pairwell-block__price";
    price.textContent = money(item.price);
    const reason = document.createElement("span");
    reason.className = "pairwell-block__reason";
    reason.textContent = item.reason;
    link.append(title, price, reason);
    link.addEventListener("click", () => {
      const viewed = block.dataset.productId;
      try {
        sessionStorage.setItem(CLICKED, JSON.stringify({ ...clicked(), [item.id]: { viewed, source } }));
      } catch { /* private mode: the click still counts */ }
      send(block, [{ kind: "click", viewed_product_id: viewed, product_id: String(item.id), source }]);
    });
    li.append(link);
    return li;
  };

  async function cartProductIds() {
    try {
      const cart = await (await fetch("/cart.js", { headers: { Accept: "application/json" } })).json();
      return [...new Set(cart.items.map((line) => line.product_id))].slice(0, 50);
    } catch {
      return [];
    }
  }

  async function fill(block) {
    const list = block.querySelector("[data-pairwell-list]");
    const params = new URLSearchParams({ product_id: block.dataset.productId, limit: block.dataset.limit || "4" });
    const cart = await cartProductIds();
    if (cart.length) params.set("cart", cart.join(","));
    try {
      const response = await fetch(`${block.dataset.proxy}?${params}`, { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(response.status);
      const { products, source } = await response.json();
      if (!products.length) { block.hidden = true; return; }
      list.replaceChildren(...products.map((item) => card(item, block, source)));
      send(block, [{ kind: "impression", viewed_product_id: block.dataset.productId, shown: products.length,
                     source }]);
    } catch {
      block.hidden = true; // never leave a broken block on the product page
    }
  }

  document.querySelectorAll("[data-pairwell-block]").forEach((block) => {
    watchAddToCart(block);
    fill(block);
  });
})();
