"""A storefront preview for the sample store: the Online Store theme that Shopify would serve, reduced to what
the Pairwell extension touches.

Product pages are a plain, Dawn-like theme that renders the extension's real Liquid (`pairs_well_with.liquid`
in the product section, the `assistant.liquid` app embed in the body) with python-liquid, from the same
objects Shopify exposes (`product`, `cart`, `shop`, `routes`, `block`). The Ajax cart (`/cart.js`,
`/cart/add.js`) answers in Shopify's documented shapes, and `/apps/pairwell/*` is forwarded to the app as
Shopify's App Proxy forwards it: signed query, method and body passed through, cookies stripped.

Run it beside the app (tests, screenshots, `pairwell demo`) with start()/stop() or as a context manager.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import secrets
import threading
import time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from urllib.parse import urlsplit

import requests
from flask import (
    Flask,
    Response,
    abort,
    jsonify,
    redirect,
    render_template_string,
    request,
    send_from_directory,
    session,
)
from liquid import Environment
from liquid.filter import with_context

from core.config import ROOT
from core.shopify.signatures import app_proxy_signature

from .catalog import SampleProduct, SampleStore, SampleVariant
from .server import LoopbackServer

EXTENSION = ROOT / "extensions" / "pairwell"
PROXY_PREFIX = "/apps/pairwell"
PROXY_PARAMS = ("shop", "logged_in_customer_id", "path_prefix", "timestamp", "signature")  # Shopify's own
PROXY_TIMEOUT_SECONDS = 10.0
HANG_SECONDS = 15.0  # "hang" mode: far past the block's budget (a few seconds)
PROXY_MODES = ("ok", "error", "empty", "hang")
# The shop sells in USD; a shopper may browse in another currency (Shopify Markets: `?currency=EUR` on any page,
# remembered for the session), and then sees presentment prices: the shop price × the rate, rounded to the cent.
SHOP_CURRENCY = "USD"
CURRENCIES = {"USD": ("$", Decimal("1")), "EUR": ("€", Decimal("0.92")), "GBP": ("£", Decimal("0.79"))}
LOCALES = ("fr",)  # a second language: pages under /fr, where routes.root_url is "/fr" (no trailing slash)
SCHEMA = re.compile(r"{%-?\s*schema\s*-?%}(.*?){%-?\s*endschema\s*-?%}", re.S)


# --- Rendering extension blocks the way Shopify does ------------------------------------------------------------

class ExtensionBlock:
    """One of the extension's blocks: its Liquid without the schema, and the schema's defaults and assets."""

    def __init__(self, name: str, env: Environment):
        source = (EXTENSION / "blocks" / f"{name}.liquid").read_text()
        self.name = name
        self.schema = json.loads(SCHEMA.search(source).group(1))
        self.template = env.from_string(SCHEMA.sub("", source))
        self.settings = {s["id"]: s.get("default") for s in self.schema.get("settings", []) if "id" in s}

    @property
    def stylesheet(self) -> str | None:
        return f"/extensions/pairwell/assets/{self.schema['stylesheet']}" if "stylesheet" in self.schema else None

    @property
    def javascript(self) -> str | None:
        return f"/extensions/pairwell/assets/{self.schema['javascript']}" if "javascript" in self.schema else None

    def render(self, block_id: str, settings: dict | None = None, **objects) -> str:
        """The block wrapped as Shopify wraps app blocks (`shopify-block-…`), with merchant settings over the
        schema's defaults."""
        block = {"id": block_id, "type": f"shopify://apps/pairwell/blocks/{self.name}",
                 "settings": {**self.settings, **(settings or {})}, "shopify_attributes": ""}
        inner = self.template.render(block=block, **objects)
        return f'<div id="shopify-block-{block_id}" class="shopify-app-block">{inner}</div>'


def liquid_environment() -> Environment:
    """Liquid as a theme renders the extension: Shopify's `t` filter included."""
    env = Environment()
    env.filters["t"] = translate
    return env


@with_context
def translate(key: str, *, context) -> str:
    """Liquid's `t` filter: the extension's storefront strings in the request's locale, else the default's."""
    locale = (context.resolve("request") or {}).get("locale", {}).get("iso_code", "en")
    for name in (f"{locale}.json", "en.default.json"):
        path = EXTENSION / "locales" / name
        value = json.loads(path.read_text()) if path.exists() else {}
        for part in key.split("."):
            value = value.get(part, {}) if isinstance(value, dict) else {}
        if isinstance(value, str):
            return value
    return f"translation missing: {locale}.{key}"


def cents(price: Decimal, currency: str = SHOP_CURRENCY) -> int:
    """A shop price in the minor units of `currency` (Shopify's money values: amount × 100)."""
    return int((price * CURRENCIES[currency][1] * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def money(amount_cents: int, currency: str = SHOP_CURRENCY) -> str:
    """The money format `{symbol}{{amount}}`, as the theme's `money` filter writes it."""
    return f"{CURRENCIES[currency][0]}{amount_cents / 100:,.2f}"


def liquid_product(product: SampleProduct, root: str, currency: str = SHOP_CURRENCY) -> dict:
    """The `product` object as Shopify's Liquid exposes it (presentment prices, in cents)."""
    variants = [{"id": v.id, "title": v.title, "price": cents(v.price, currency), "available": v.available_for_sale,
                 "inventory_quantity": v.inventory_quantity, "sku": v.sku} for v in product.variants]
    first = next((v for v in variants if v["available"]), variants[0])
    return {"id": product.id, "handle": product.handle, "title": product.title, "description": product.description,
            "type": product.product_type, "vendor": product.vendor, "tags": product.tags,
            "url": f"{root.rstrip('/')}/products/{product.handle}", "price": min(v["price"] for v in variants),
            "available": any(v["available"] for v in variants), "variants": variants,
            "selected_or_first_available_variant": first, "featured_image": product.image_url}


def product_json(product: SampleProduct, root: str, currency: str = SHOP_CURRENCY) -> dict:
    """`/products/<handle>.js`, in Shopify's documented shape (Ajax Product API): prices in the presentment
    currency's minor units, `variants[]` with `id`, `price`, `available`, images as protocol-relative URLs."""
    image = product.image_url.removeprefix("https:")
    variants = [{"id": v.id, "title": v.title, "option1": v.title, "option2": None, "option3": None, "sku": v.sku,
                 "requires_shipping": True, "taxable": True, "featured_image": None, "available": v.available_for_sale,
                 "name": f"{product.title} - {v.title}", "public_title": v.title, "options": [v.title],
                 "price": cents(v.price, currency), "weight": 0, "compare_at_price": None,
                 "inventory_management": "shopify", "barcode": None} for v in product.variants]
    prices = [v["price"] for v in variants]
    return {"id": product.id, "title": product.title, "handle": product.handle,
            "description": f"<p>{html.escape(product.description)}</p>",
            "published_at": product.published_at.isoformat() if product.published_at else None,
            "created_at": product.created_at.isoformat(),
            "vendor": product.vendor, "type": product.product_type, "tags": product.tags,
            "price": min(prices), "price_min": min(prices), "price_max": max(prices),
            "available": any(v["available"] for v in variants), "price_varies": min(prices) != max(prices),
            "compare_at_price": None, "compare_at_price_min": 0, "compare_at_price_max": 0,
            "compare_at_price_varies": False, "variants": variants, "images": [image], "featured_image": image,
            "options": [{"name": product.variant_axis, "position": 1, "values": [v.title for v in product.variants]}],
            "url": f"{root.rstrip('/')}/products/{product.handle}", "requires_selling_plan": False,
            "selling_plan_groups": []}


def placeholder_image(url: str) -> bytes:
    """A quiet square standing in for a product photo on cdn.shopify.com (unreachable from here): a colour
    from the file name and the product's words, so screenshots tell the products apart."""
    name = Path(urlsplit(url).path).stem
    hue = int(hashlib.sha256(name.encode()).hexdigest()[:4], 16) % 360
    words = html.escape(" ".join(name.split("-")[-2:]).title())
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="600" height="600" viewBox="0 0 600 600">'
            f'<rect width="600" height="600" fill="hsl({hue},35%,88%)"/>'
            f'<circle cx="300" cy="260" r="120" fill="hsl({hue},30%,72%)"/>'
            f'<text x="300" y="470" font-family="sans-serif" font-size="40" text-anchor="middle" '
            f'fill="hsl({hue},30%,30%)">{words}</text></svg>').encode()


# --- The preview server ---------------------------------------------------------------------------------------

class StorefrontPreview(LoopbackServer):
    """The sample store's Online Store on 127.0.0.1, with the Pairwell app behind `/apps/pairwell`.

    `proxy_mode` makes the App Proxy misbehave for tests: "ok" forwards, "error" answers 500 as a failing app
    would, "empty" answers recommendations with no products, "hang" answers nothing for HANG_SECONDS;
    `proxy_delay` slows every proxied request down. `block_settings` are the merchant's block settings;
    `proxy_path` is where the App Proxy lives (prefix and subpath, `/apps/pairwell` unless the merchant renamed
    them): only that path reaches the app. `theme_font` is the theme's root font size: "dawn" (62.5%, 10 px) or
    "default" (16 px)."""

    def __init__(self, store: SampleStore, *, shop: str, app_url: str, api_secret: str,
                 block_settings: dict | None = None, proxy_path: str = PROXY_PREFIX):
        self.store, self.shop, self.app_url, self.api_secret = store, shop, app_url.rstrip("/"), api_secret
        self.block_settings = dict(block_settings or {})  # the merchant's settings for the "pairs well with" block
        self.proxy_path = proxy_path  # the App Proxy's prefix/subpath, as the merchant may have renamed it
        self.theme_font = "dawn"  # "dawn": a 10 px root (html 62.5%, body 1.5rem); "default": 16 px, body 1rem
        self.proxy_mode = "ok"
        self.proxy_delay = 0.0  # seconds the proxy waits before forwarding: a slow network, to see the skeleton
        self.proxied: list[str] = []  # "METHOD /apps/pairwell/..." as forwarded, for tests
        self._stopping = threading.Event()
        env = liquid_environment()
        self.blocks = {name: ExtensionBlock(name, env) for name in ("pairs_well_with", "assistant")}
        super().__init__(self._build_app())

    def start(self) -> str:
        self._stopping.clear()
        return super().start()

    def stop(self) -> None:
        self._stopping.set()  # hanging proxy requests end now
        super().stop()

    def product_url(self, product: SampleProduct | str, locale: str | None = None) -> str:
        handle = product if isinstance(product, str) else product.handle
        return f"{self.origin}{'/' + locale if locale else ''}/products/{handle}"

    # the catalog as the storefront sees it
    def _active(self, handle: str) -> SampleProduct:
        product = next((p for p in self.store.products if p.handle == handle and p.on_storefront), None)
        if product is None:
            abort(404)
        return product

    def _variant(self, variant_id) -> tuple[SampleProduct, SampleVariant] | None:
        for product in self.store.products:
            for variant in product.variants:
                if str(variant.id) == str(variant_id) and product.on_storefront:
                    return product, variant
        return None

    # the cart (a signed cookie, as the Ajax API's cart token would be)
    def _cart_lines(self) -> dict[str, int]:
        return dict(session.get("cart", {}))

    def currency(self) -> str:
        """The shopper's presentment currency (the shop's unless they chose another)."""
        return session.get("currency", SHOP_CURRENCY)

    def _line_json(self, variant_id: str, quantity: int) -> dict:
        product, variant = self._variant(variant_id)
        price = cents(variant.price, self.currency())
        return {"id": variant.id, "key": f"{variant.id}:{hashlib.md5(str(variant.id).encode()).hexdigest()}",
                "product_id": product.id, "variant_id": variant.id, "quantity": quantity,
                "title": f"{product.title} - {variant.title}", "product_title": product.title,
                "variant_title": variant.title, "handle": product.handle, "sku": variant.sku,
                "vendor": product.vendor, "product_type": product.product_type,
                "url": f"/products/{product.handle}?variant={variant.id}", "image": product.image_url,
                "price": price, "original_price": price, "final_price": price, "line_price": price * quantity,
                "original_line_price": price * quantity, "final_line_price": price * quantity,
                "discounts": [], "requires_shipping": True, "taxable": True}

    def cart_json(self) -> dict:
        """`/cart.js`: Shopify's Ajax cart (amounts in cents)."""
        items = [self._line_json(v, q) for v, q in self._cart_lines().items() if self._variant(v)]
        total = sum(i["final_line_price"] for i in items)
        return {"token": session.setdefault("token", secrets.token_hex(16)), "note": None, "attributes": {},
                "original_total_price": total, "total_price": total, "total_discount": 0, "total_weight": 0,
                "item_count": sum(i["quantity"] for i in items), "items": items, "requires_shipping": bool(items),
                "currency": self.currency(), "items_subtotal_price": total, "cart_level_discount_applications": []}

    def _add(self, variant_id, quantity) -> dict:
        """Add one line; raises _CartError with Shopify's 422 description when it cannot."""
        found = self._variant(variant_id)
        if found is None:
            raise _CartError("Cannot find variant")
        product, variant = found
        try:
            quantity = 1 if quantity in (None, "") else int(quantity)
        except (TypeError, ValueError):
            raise _CartError("Quantity must be a number") from None
        if quantity < 1:
            raise _CartError("Quantity must be 1 or more")
        lines = self._cart_lines()
        in_cart = lines.get(str(variant.id), 0)
        if variant.inventory_quantity <= 0:
            raise _CartError(f"The product '{product.title} - {variant.title}' is already sold out.")
        if in_cart + quantity > variant.inventory_quantity:
            raise _CartError(f"You can only add {variant.inventory_quantity} of {product.title} - {variant.title} "
                             "to the cart.")
        lines[str(variant.id)] = in_cart + quantity
        session["cart"] = lines
        return self._line_json(str(variant.id), lines[str(variant.id)])

    # the HTTP side
    def _build_app(self) -> Flask:
        app = Flask("storefront_preview")
        app.secret_key = secrets.token_hex(32)

        @app.before_request
        def choose_currency():  # Shopify's `?currency=` switch, kept for the session
            if request.args.get("currency") in CURRENCIES:
                session["currency"] = request.args["currency"]
        for prefix in ["", *(f"/{locale}" for locale in LOCALES)]:
            defaults = {"locale": prefix.strip("/") or None}
            app.add_url_rule(f"{prefix}/", f"index{prefix}", self._index, defaults=defaults)
            app.add_url_rule(f"{prefix}/products/<handle>", f"product{prefix}", self._product, defaults=defaults)
            app.add_url_rule(f"{prefix}/products/<handle>.js", f"product_js{prefix}", self._product_js,
                             defaults=defaults)
            app.add_url_rule(f"{prefix}/cart", f"cart{prefix}", self._cart_page, defaults=defaults)
            app.add_url_rule(f"{prefix}/cart.js", f"cart_js{prefix}", self._cart_js)
            app.add_url_rule(f"{prefix}/cart/add.js", f"add_js{prefix}", self._add_js, methods=["POST"])
            app.add_url_rule(f"{prefix}/cart/add", f"add{prefix}", self._add_form, methods=["POST"], defaults=defaults)
            app.add_url_rule(f"{prefix}/<path:path>", f"proxy{prefix}", self._proxy,
                             methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        app.add_url_rule("/extensions/pairwell/assets/<path:name>", "asset", self._asset)
        app.add_url_rule("/placeholder/<path:name>", "placeholder", self._placeholder)
        return app

    def _placeholder(self, name: str):
        """The stand-in for a product photo the sample store does not have (see the layout's error handler)."""
        return Response(placeholder_image(name), mimetype="image/svg+xml")

    def _asset(self, name: str):
        return send_from_directory(EXTENSION / "assets", name, max_age=0)

    def _objects(self, locale: str | None, product: SampleProduct | None = None) -> dict:
        """The global Liquid objects a block sees on a page."""
        root = f"/{locale}" if locale else "/"
        base = root.rstrip("/")
        cart = self.cart_json()
        objects = {
            "shop": {"name": "Pairwell Outdoor Demo", "currency": SHOP_CURRENCY, "money_format": "${{amount}}",
                     "permanent_domain": self.shop, "domain": self.shop, "url": request.host_url.rstrip("/")},
            "cart": {"item_count": cart["item_count"], "total_price": cart["total_price"], "items": cart["items"],
                     "currency": {"iso_code": cart["currency"], "symbol": CURRENCIES[cart["currency"]][0]}},
            "routes": {"root_url": root, "cart_url": f"{base}/cart", "cart_add_url": f"{base}/cart/add",
                       "cart_change_url": f"{base}/cart/change", "search_url": f"{base}/search",
                       "all_products_collection_url": f"{base}/collections/all"},
            "request": {"locale": {"iso_code": locale or "en"}, "page_type": "product" if product else "index",
                        "design_mode": False},
        }
        if product is not None:
            objects["product"] = liquid_product(product, root, self.currency())
        return objects

    def _page(self, title: str, body: str, locale: str | None, *, product: SampleProduct | None = None,
              blocks_css: list[str] = (), blocks_js: list[str] = ()):
        objects = self._objects(locale, product)
        embed = self.blocks["assistant"]
        return render_template_string(
            LAYOUT, title=title, body=body, shop_name=objects["shop"]["name"], lang=locale or "en",
            root=objects["routes"]["root_url"], cart_url=objects["routes"]["cart_url"],
            cart_icon=CART_ICON.format(count=objects["cart"]["item_count"]), shop=self.shop,
            currency=self.currency(),
            root_font="62.5%" if self.theme_font == "dawn" else "100%",
            body_font="1.5rem" if self.theme_font == "dawn" else "1rem",
            rate=str(CURRENCIES[self.currency()][1]),
            stylesheets=[*blocks_css, embed.stylesheet], scripts=[*blocks_js, embed.javascript],
            embed=embed.render("pairwell_assistant_embed", **objects))

    def _index(self, locale: str | None):
        base = f"/{locale}" if locale else ""
        products = [p for p in self.store.products if p.on_storefront]
        body = render_template_string(INDEX, products=products, base=base, money=self._money,
                                      price=lambda p: cents(p.variants[0].price, self.currency()))
        return self._page("Catalog", body, locale)

    def _product(self, handle: str, locale: str | None):
        product = self._active(handle)
        objects = self._objects(locale, product)
        block = self.blocks["pairs_well_with"]
        block_html = block.render("pairwell_pairs_well_with", self.block_settings, **objects)
        body = render_template_string(PRODUCT, product=objects["product"], money=self._money, block_html=block_html,
                                      add_url=objects["routes"]["cart_add_url"], image=product.image_url)
        return self._page(product.title, body, locale, product=product,
                          blocks_css=[block.stylesheet], blocks_js=[block.javascript])

    def _cart_page(self, locale: str | None):
        cart = self.cart_json()
        body = render_template_string(CART, cart=cart, money=self._money, base=f"/{locale}" if locale else "")
        return self._page("Your cart", body, locale)

    def _money(self, amount_cents: int) -> str:
        return money(amount_cents, self.currency())

    def _product_js(self, handle: str, locale: str | None):
        return jsonify(product_json(self._active(handle), f"/{locale}" if locale else "/", self.currency()))

    def _cart_js(self):
        return jsonify(self.cart_json())

    def sections(self, wanted) -> dict:
        """The Section Rendering API: each asked section id (a list or a comma-separated string, at most 5) as
        the theme renders it, wrapped in its `shopify-section-<id>` div; null for a section the theme lacks."""
        ids = wanted.split(",") if isinstance(wanted, str) else wanted if isinstance(wanted, list) else []
        count = self.cart_json()["item_count"]
        return {str(i).strip(): (f'<div id="shopify-section-{html.escape(str(i).strip())}" class="shopify-section">'
                                 f'{CART_ICON.format(count=count)}</div>' if str(i).strip() in SECTIONS else None)
                for i in ids[:5]}

    def _add_js(self):
        """`POST /cart/add.js`: `{id, quantity}` (JSON or form) answers the line; `{items: [...]}` answers
        `{items: [...]}`; an unknown or sold-out variant is a 422 with Shopify's error body. With `sections`
        (and `sections_url`), the answer also carries those sections rendered after the add."""
        payload = request.get_json(silent=True) if request.is_json else request.form.to_dict()
        payload = payload if isinstance(payload, dict) else {}
        wanted = payload.get("items") if isinstance(payload.get("items"), list) else None
        saved = self._cart_lines()
        try:
            if wanted is None:
                answer = self._add(payload.get("id"), payload.get("quantity", 1))
            else:
                answer = {"items": [self._add(item.get("id"), item.get("quantity", 1)) for item in wanted
                                    if isinstance(item, dict)]}
        except _CartError as error:
            session["cart"] = saved  # all or nothing, as Shopify adds a list
            return jsonify(status=422, message="Cart Error", description=str(error)), 422
        if payload.get("sections"):
            answer["sections"] = self.sections(payload["sections"])  # rendered with the new cart
        return jsonify(answer)

    def _add_form(self, locale: str | None):
        base = f"/{locale}" if locale else ""
        try:
            self._add(request.form.get("id"), request.form.get("quantity", 1))
        except _CartError as error:
            return self._page("Cart error", f"<main class='page'><p role='alert'>{html.escape(str(error))}</p></main>",
                              locale), 422
        return redirect(f"{base}/cart", 303)

    def _proxy(self, path: str):
        """Shopify's App Proxy under `proxy_path`: the shopper's query plus Shopify's signed parameters; method
        and body passed through; cookies never forwarded; status, type and body passed back."""
        under = self.proxy_path.strip("/") + "/"
        if not path.startswith(under) or path == under:
            abort(404)
        rest = path.removeprefix(under)
        self.proxied.append(f"{request.method} {self.proxy_path}/{rest}")
        mode = self.proxy_mode
        if self.proxy_delay:
            self._stopping.wait(self.proxy_delay)
        if mode == "error":
            return jsonify(error="Internal Server Error", message="The app failed."), 500
        if mode == "hang":
            self._stopping.wait(HANG_SECONDS)
            return jsonify(error="Gateway Timeout"), 504
        if mode == "empty" and rest.startswith("recommendations"):
            return jsonify(products=[], source="fallback", cached=False)
        pairs = [(k, v) for k, v in request.args.items(multi=True) if k not in PROXY_PARAMS]
        pairs += [("shop", self.shop), ("logged_in_customer_id", ""), ("path_prefix", self.proxy_path),
                  ("timestamp", str(int(time.time())))]
        pairs.append(("signature", app_proxy_signature(pairs, self.api_secret)))
        headers = {"X-Forwarded-For": request.remote_addr or "127.0.0.1",
                   "Accept": request.headers.get("Accept", "*/*"), "User-Agent": request.headers.get("User-Agent", "")}
        if request.content_type:
            headers["Content-Type"] = request.content_type
        try:
            answer = requests.request(request.method, f"{self.app_url}/proxy/{rest}", params=pairs,
                                      data=request.get_data(), headers=headers, timeout=PROXY_TIMEOUT_SECONDS,
                                      allow_redirects=False)
        except requests.RequestException:
            return Response("Bad Gateway: the app did not answer.", 502, content_type="text/plain")
        content_type = answer.headers.get("Content-Type", "text/plain")
        if content_type.startswith("application/liquid"):  # Shopify renders it inside the theme
            locale = request.path.split("/")[1] if request.path.split("/")[1] in LOCALES else None
            inner = Environment().from_string(answer.text).render(**self._objects(locale))
            return self._page("", inner, locale), answer.status_code
        response = Response(answer.content, answer.status_code, content_type=content_type)
        if "Retry-After" in answer.headers:
            response.headers["Retry-After"] = answer.headers["Retry-After"]
        return response  # Set-Cookie and the rest of the app's headers stay behind


class _CartError(ValueError):
    """Why a line cannot go into the cart, in Shopify's words."""


# --- The theme's templates (Jinja; the extension's blocks are real Liquid) --------------------------------------

# The theme's header cart link's contents: the `cart-icon-bubble` section (Dawn's name), on the page and through
# the Section Rendering API.
SECTIONS = ("cart-icon-bubble",)
CART_ICON = 'Cart <span class="cart-count" data-cart-count>{count}</span>'

LAYOUT = """<!doctype html>
<html lang="{{ lang }}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} – {{ shop_name }}</title>
<link rel="icon" href="data:,">
<style>
  html { font-size: {{ root_font }}; } /* Dawn's 10 px root (62.5%): blocks must not rely on rem */
  body { margin: 0; font: {{ body_font }}/1.6 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
         color: #121212; background: #fff; letter-spacing: .04rem; }
  a { color: inherit; }
  .header { display: flex; align-items: center; justify-content: space-between; padding: 1.6rem 3.2rem;
            border-bottom: 1px solid #e6e6e6; }
  .header__name { font-size: 2rem; font-weight: 600; text-decoration: none; }
  .header__cart { text-decoration: none; display: inline-flex; gap: .6rem; align-items: center; }
  .cart-count { display: inline-grid; place-items: center; min-width: 2.2rem; height: 2.2rem; border-radius: 1.1rem;
                background: #121212; color: #fff; font-size: 1.2rem; }
  .page { max-width: 120rem; margin: 0 auto; padding: 3.2rem; }
  .product { display: grid; grid-template-columns: minmax(0, 1.1fr) minmax(0, 1fr); gap: 4.8rem; }
  .product__media img { width: 100%; height: auto; aspect-ratio: 1; object-fit: cover; background: #f3f3f3; }
  .product__title { font-size: 3.2rem; line-height: 1.2; margin: 0 0 1rem; font-weight: 500; }
  .price { font-size: 1.8rem; margin: 0 0 2rem; }
  .product-form { display: grid; gap: 1.2rem; max-width: 44rem; }
  .product-form select { font: inherit; padding: 1rem; border: 1px solid #121212; background: #fff; }
  .product-form button { font: inherit; padding: 1.4rem; background: #121212; color: #fff; border: 0; cursor: pointer; }
  .product__description { margin: 2.4rem 0 0; color: #444; }
  .product__accordion { border-top: 1px solid #e6e6e6; border-bottom: 1px solid #e6e6e6; padding: 1.4rem 0; }
  .product__accordion summary { cursor: pointer; }
  .footer { border-top: 1px solid #e6e6e6; margin-top: 4rem; padding: 3.2rem; color: #555; }
  .catalog { display: grid; grid-template-columns: repeat(auto-fill, minmax(22rem, 1fr)); gap: 1.6rem;
             list-style: none; padding: 0; }
  .catalog a { display: block; padding: 1.2rem; border: 1px solid #e6e6e6; text-decoration: none; }
  @media (max-width: 749px) {
    .header { padding: 1.2rem 1.6rem; }
    .page { padding: 1.6rem; }
    .product { grid-template-columns: 1fr; gap: 2rem; }
    .product__title { font-size: 2.4rem; }
  }
</style>
{% for href in stylesheets if href %}<link rel="stylesheet" href="{{ href }}">
{% endfor %}
<script>window.Shopify = { shop: {{ shop|tojson }}, locale: {{ lang|tojson }},
  currency: { active: {{ currency|tojson }}, rate: {{ rate|tojson }} }, routes: { root: {{ root|tojson }} } };
// The sample store's photos do not exist on Shopify's CDN: a photo that fails draws the preview's placeholder.
addEventListener("error", (event) => {
  const img = event.target;
  if (img.tagName === "IMG" && !img.dataset.placeholder) {
    img.dataset.placeholder = "1";
    img.removeAttribute("srcset");
    img.src = "/placeholder/" + new URL(img.currentSrc || img.src, location.href).pathname.split("/").pop();
  }
}, true);</script>
</head>
<body>
<header class="header">
  <a class="header__name" href="{{ root }}">{{ shop_name }}</a>
  <a class="header__cart" id="cart-icon-bubble" href="{{ cart_url }}">{{ cart_icon|safe }}</a>
</header>
{{ body|safe }}
<footer class="footer"><p>© {{ shop_name }} · Storefront preview for the Pairwell theme app extension</p></footer>
{{ embed|safe }}
{% for src in scripts if src %}<script src="{{ src }}" defer></script>
{% endfor %}
</body>
</html>
"""

PRODUCT = """<main class="page" id="MainContent">
<section class="product" data-section-type="product">
  <div class="product__media"><img src="{{ image }}" alt="{{ product.title }}" width="600" height="600"></div>
  <div class="product__info">
    <h1 class="product__title">{{ product.title }}</h1>
    <p class="price" data-price>{{ money(product.selected_or_first_available_variant.price) }}</p>
    <form action="{{ add_url }}" method="post" class="product-form" data-product-form>
      <label for="product-variant">Variant</label>
      <select id="product-variant" name="id">
        {% for v in product.variants %}<option value="{{ v.id }}"{% if not v.available %} disabled{% endif %}
          {% if v.id == product.selected_or_first_available_variant.id %} selected{% endif %}>{{ v.title }} –
          {{ money(v.price) }}{% if not v.available %} (sold out){% endif %}</option>
        {% endfor %}
      </select>
      <input type="hidden" name="quantity" value="1">
      <button type="submit" name="add"{% if not product.available %} disabled{% endif %}>
        {{ product.available and "Add to cart" or "Sold out" }}</button>
    </form>
    <div class="product__description"><p>{{ product.description }}</p></div>
    {{ block_html|safe }}
    <details class="product__accordion" data-accordion>
      <summary>Shipping &amp; returns</summary>
      <p>Free shipping over $75. Return unused gear within 30 days.</p>
    </details>
  </div>
</section>
</main>
"""

INDEX = """<main class="page"><h1>Catalog</h1><ul class="catalog">
{% for p in products %}<li><a href="{{ base }}/products/{{ p.handle }}">{{ p.title }}<br>
{{ money(price(p)) }}</a></li>
{% endfor %}</ul></main>
"""

CART = """<main class="page"><h1>Your cart</h1>
{% if cart['items'] %}<table><thead><tr><th>Product</th><th>Quantity</th><th>Total</th></tr></thead><tbody>
{% for line in cart['items'] %}<tr><td><a href="{{ base }}{{ line.url }}">{{ line.title }}</a></td>
<td>{{ line.quantity }}</td><td>{{ money(line.final_line_price) }}</td></tr>{% endfor %}
</tbody></table><p>Subtotal: {{ money(cart.total_price) }}</p>
{% else %}<p>Your cart is empty.</p>{% endif %}</main>
"""
