"""`/proxy/*`: what the storefront reaches through Shopify's App Proxy (`/apps/pairwell/...`).
Every request must carry Shopify's signature; replies are JSON (passed through, not rendered as Liquid)."""

from __future__ import annotations

from cachetools import TTLCache
from flask import Blueprint, abort, current_app, g, jsonify, request

from core import cache, recommendations, shops
from core.models import Product, Shop, db
from core.signatures import is_valid_shop_domain, verify_app_proxy_query

from . import analytics

bp = Blueprint("proxy", __name__, url_prefix="/proxy")
MAX_CART_ITEMS = 50


@bp.before_request
def verify_signature_and_rate():
    pairs = list(request.args.items(multi=True))
    if not verify_app_proxy_query(pairs, current_app.config["SHOPIFY_API_SECRET"]):
        abort(401, "App Proxy signature is missing, wrong or expired.")
    domain = request.args.get("shop", "")
    g.shop_id = installed_shop_id(domain) if is_valid_shop_domain(domain) else None
    if g.shop_id is None:
        abort(404, f"Pairwell is not installed on {domain}.")
    config = current_app.config
    for scope, identity, limit in (("ip", request.access_route[0] if request.access_route else "-",
                                    config["PROXY_LIMIT_PER_IP"]),
                                   ("shop", domain, config["PROXY_LIMIT_PER_SHOP"])):
        wait = cache.over_limit(scope, identity, limit)
        if wait is not None:
            response = jsonify(error="Too Many Requests", message=f"Over {limit} requests a minute; retry later.")
            response.status_code, response.headers["Retry-After"] = 429, str(wait)
            return response


def installed_shop_id(domain: str) -> int | None:
    """The installed shop's id, remembered for 30 seconds: a storefront burst costs no shop query (an
    uninstall shows within those 30 seconds)."""
    known = current_app.extensions.setdefault("pairwell_installed_shops", TTLCache(maxsize=10_000, ttl=30))
    if domain not in known:
        shop = shops.get_shop(domain)
        if shop is None or not shop.is_installed:
            return None
        known[domain] = shop.id
    return known[domain]


def _product_id(value: str, what: str) -> int:
    if not value.isdigit():
        abort(400, f"{what} must be a numeric Shopify product id, got {value[:40]!r}.")
    return int(value)


def _product(product_id: int) -> Product:
    product = db.session.get(Product, (g.shop_id, product_id))
    if product is None:
        abort(400, f"Unknown product {product_id}.")
    return product


@bp.get("/recommendations")
def product_recommendations():
    product_id = _product_id(request.args.get("product_id", ""), "product_id")
    cart_ids = [part.strip() for part in request.args.get("cart", "").split(",") if part.strip()]
    if len(cart_ids) > MAX_CART_ITEMS:
        abort(400, f"cart has {len(cart_ids)} items; at most {MAX_CART_ITEMS}.")
    cart_ids = [_product_id(c, "cart item") for c in cart_ids]
    limit = request.args.get("limit", "4")
    if not limit.isdigit() or not 1 <= int(limit) <= 10:
        abort(400, "limit must be a whole number from 1 to 10.")
    cached = recommendations.cached(recommendations.cache_key(g.shop_id, product_id, cart_ids, int(limit)))
    if cached is not None:  # the fast path: no database query at all
        return cached
    viewing = _product(product_id)
    cart = [p for p in (db.session.get(Product, (g.shop_id, c)) for c in cart_ids)
            if p is not None]  # a cart may hold products deleted since: ignore them
    return recommendations.serve(db.session.get(Shop, g.shop_id), viewing, cart, int(limit))


@bp.post("/events")
def storefront_events():
    """The block's impressions, clicks and add-to-carts (sent with navigator.sendBeacon)."""
    try:
        stored = analytics.record(g.shop_id, request.get_json(force=True, silent=True))
    except analytics.BadEvents as exc:
        abort(400, str(exc))
    return {"recorded": stored}, 202
