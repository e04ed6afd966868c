// Pairwell support assistant (app embed): a chat panel whose replies come from the app through the App Proxy.
// Whatever the shopper or the model wrote is set with textContent (or as a text node), never parsed as markup.
(() => {
  const SESSION = "pairwell-chat-session";
  const HISTORY = "pairwell-chat-history";
  const KEEP = 20; // messages kept for the next page of this tab
  const TIMEOUT = 12000;
  const MAX_CART = 50;

  const store = {
    get(key) { try { return sessionStorage.getItem(key); } catch (_) { return null; } },
    set(key, value) { try { sessionStorage.setItem(key, value); } catch (_) { /* storage off: this page only */ } },
  };

  const el = (tag, name, text) => {
    const node = document.createElement(tag);
    if (name) node.className = `pairwell-chat__${name}`;
    if (text != null) node.textContent = text;
    return node;
  };

  // A link target from the app: http(s):, mailto: or a path on this store; anything else is not linked.
  const safeUrl = (value) => {
    if (typeof value !== "string" || !value) return null;
    try {
      const url = new URL(value, location.origin);
      if (value.startsWith("/")) return url.origin === location.origin ? url.href : null;
      return /^(https?|mailto):/i.test(value.trim()) && /^(https?|mailto):$/.test(url.protocol) ? url.href : null;
    } catch (_) { return null; }
  };

  const imageUrl = (value) => {
    if (typeof value !== "string" || !value) return null;
    try {
      const url = new URL(value, location.href);
      return /^https?:$/.test(url.protocol) ? url.href : null;
    } catch (_) { return null; }
  };

  const newSessionId = () => Array.from(crypto.getRandomValues(new Uint8Array(16)),
    (byte) => byte.toString(16).padStart(2, "0")).join("");

  function start(root) {
    const $ = (name) => root.querySelector(`[data-pairwell-${name}]`);
    const launcher = $("launcher"), panel = $("panel"), log = $("log"), form = $("form");
    const input = $("input"), send = $("send"), closer = $("close");
    const say = root.dataset;

    let sessionId = store.get(SESSION);
    if (!/^[0-9a-f]{32}$/.test(sessionId || "")) {
      sessionId = newSessionId();
      store.set(SESSION, sessionId);
    }
    let history;
    try { history = JSON.parse(store.get(HISTORY)); } catch (_) { history = null; }
    if (!Array.isArray(history)) history = [];

    const money = (price) => {
      const amount = Number(price);
      if (price == null || price === "") return "";
      if (!Number.isFinite(amount)) return String(price);
      try {
        return new Intl.NumberFormat(document.documentElement.lang || undefined,
          { style: "currency", currency: say.currency || "USD" }).format(amount);
      } catch (_) { return String(price); }
    };

    const productList = (products) => {
      const list = el("ul", "products");
      products.forEach((product) => {
        const href = product && safeUrl(product.url);
        if (!href) return;
        const link = el("a", "product");
        link.href = href;
        const src = imageUrl(product.image);
        if (src) {
          const img = el("img");
          img.src = src;
          img.alt = "";
          img.width = 48;
          img.height = 48;
          img.setAttribute("loading", "lazy");
          link.append(img);
        }
        link.append(el("span", "product-title", String(product.title || "")),
          el("span", "product-price", money(product.price)));
        const item = el("li");
        item.append(link);
        list.append(item);
      });
      return list.childElementCount ? list : null;
    };

    const scroll = () => { log.scrollTop = log.scrollHeight; };

    const render = (message) => {
      const item = el("div", `msg pairwell-chat__msg--${message.role === "user" ? "user" : "bot"}`);
      if (message.role === "note") item.classList.add("pairwell-chat__msg--note");
      const line = el("p", "text");
      line.append(el("span", "sr", `${message.role === "user" ? say.you : say.bot} `), String(message.text));
      item.append(line);
      const products = Array.isArray(message.products) && productList(message.products);
      if (products) item.append(products);
      const contact = message.handoff && safeUrl(message.handoff_url);
      if (contact) {
        const link = el("a", "handoff", say.contact);
        link.href = contact;
        if (/^https?:/.test(contact) && new URL(contact).origin !== location.origin) {
          link.target = "_blank";
          link.rel = "noopener noreferrer";
        }
        item.append(link);
      }
      log.append(item);
      scroll();
    };

    const add = (message) => {
      history = history.concat(message).slice(-KEEP);
      store.set(HISTORY, JSON.stringify(history));
      render(message);
    };

    if (say.greeting) render({ role: "bot", text: say.greeting });
    history.forEach((message) => {
      if (message && typeof message.text === "string") render(message);
    });

    const typing = el("div", "typing");
    typing.append(el("span", "sr", say.typing), el("span", "dot"), el("span", "dot"), el("span", "dot"));

    let busy = false;
    let coolUntil = 0; // after a 429, until Retry-After has passed
    const setBusy = (on) => {
      busy = on;
      send.disabled = on || Date.now() < coolUntil;
      if (on) log.append(typing); else typing.remove();
      scroll();
    };

    // The cart as it is now (a theme may have added to it without a page load); the page's copy otherwise.
    const cartIds = async (signal) => {
      try {
        const response = await fetch(say.cartUrl, { headers: { Accept: "application/json" }, signal });
        const cart = await response.json();
        return [...new Set(cart.items.map((line) => String(line.product_id)))];
      } catch (_) {
        return (say.cart || "").split(",").filter(Boolean);
      }
    };

    const ask = async (message) => {
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), TIMEOUT);
      try {
        const body = { session_id: sessionId, message };
        if (say.productId) body.product_id = say.productId;
        const cart = (await cartIds(controller.signal)).slice(0, MAX_CART);
        if (cart.length) body.cart = cart;
        const response = await fetch(say.proxy, {
          method: "POST",
          headers: { "Content-Type": "application/json", Accept: "application/json" },
          body: JSON.stringify(body),
          signal: controller.signal,
        });
        if (response.ok) {
          const data = await response.json();
          if (typeof data.reply !== "string") throw new Error("no reply");
          return {
            role: "bot",
            text: data.reply,
            products: Array.isArray(data.products) ? data.products.slice(0, 6) : [],
            handoff: data.handoff === true,
            handoff_url: data.handoff_url,
          };
        }
        if (response.status === 429) {
          coolUntil = Date.now() + Math.min(Number(response.headers.get("Retry-After")) || 5, 60) * 1000;
        }
        if (response.status === 400 || response.status === 429) {
          const data = await response.json().catch(() => ({}));
          if (data && typeof data.message === "string" && data.message) return { role: "note", text: data.message };
        }
      } catch (_) { /* offline, timed out or an unreadable answer */ } finally {
        clearTimeout(timer);
      }
      return { role: "note", text: say.error };
    };

    const setOpen = (open) => {
      panel.hidden = !open;
      launcher.setAttribute("aria-expanded", String(open));
      root.classList.toggle("pairwell-chat--open", open);
      if (open) {
        scroll();
        input.focus();
      }
    };
    const close = () => {
      setOpen(false);
      launcher.focus();
    };

    launcher.addEventListener("click", () => setOpen(panel.hidden));
    closer.addEventListener("click", close);
    root.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !panel.hidden) close();
    });

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const message = input.value.trim().slice(0, 2000);
      if (!message || busy || Date.now() < coolUntil) return;
      input.value = "";
      add({ role: "user", text: message });
      setBusy(true);
      const reply = await ask(message);
      setBusy(false);
      add(reply);
      if (reply.role === "note" && !input.value) input.value = message; // easy to send again
      if (Date.now() < coolUntil) setTimeout(() => { send.disabled = busy; }, coolUntil - Date.now());
      if (!panel.hidden && (document.activeElement === send || document.activeElement === document.body)) {
        input.focus();
      }
    });

    launcher.hidden = false; // shown only once it works
  }

  const boot = () => {
    const root = document.querySelector("[data-pairwell-chat]");
    if (root && !root.dataset.pairwellReady) {
      root.dataset.pairwellReady = "true";
      start(root);
    }
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
