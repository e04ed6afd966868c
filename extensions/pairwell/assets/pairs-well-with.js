// Pairwell "pairs well with" block: asks the app (through the App Proxy) and renders real catalog products.
(() => {
  const money = (price) => {
    const amount = Number(price);
    return Number.isFinite(amount) ? new Intl.NumberFormat(document.documentElement.lang || undefined, {
      style: "currency", currency: (window.Shopify && Shopify.currency && Shopify.currency.active) || "USD",
    }).format(amount) : "";
  };

  const card = (item) => {
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
      const { products } = await response.json();
      if (!products.length) { block.hidden = true; return; }
      list.replaceChildren(...products.map(card));
    } catch {
      block.hidden = true; // never leave a broken block on the product page
    }
  }

  document.querySelectorAll("[data-pairwell-block]").forEach(fill);
})();
