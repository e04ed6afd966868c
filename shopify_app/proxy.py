"""`/proxy/*`: what the storefront reaches through Shopify's App Proxy (`/apps/pairwell/...`).
Every request must carry Shopify's signature; replies are JSON (passed through, not rendered as Liquid).

Nothing here may answer a shopper with a 5xx trace: Redis errors fall back to in-process limits and cache
(`cache.py`), model trouble to the retrieval ranking (`serving.py`), and a database that is
away to the cache or an empty block (503, with Retry-After)."""

from __future__ import annotations

import re

from cachetools import TTLCache
from flask import Blueprint, abort, current_app, g, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from core.assistant import replies
from core.inputs import BadInput, id_list, load_json, plain_text, shopify_id, whole_number
from core.recommendations import experiment, serving
from core.shopify import shops
from core.shopify.signatures import is_valid_shop_domain, verify_app_proxy_query
from core.storage import cache
from core.storage.models import Product, Shop, db

from . import analytics

bp = Blueprint("proxy", __name__, url_prefix="/proxy")
MAX_CART_ITEMS = 50
MAX_EVENTS_BYTES = 16 * 1024
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")  # a chat session or a visitor, as the storefront made it


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
    return first_limit_passed([("shopper", shopper_identity(), config["PROXY_LIMIT_PER_IP"]),
                               ("shop", domain, config["PROXY_LIMIT_PER_SHOP"])],
                              "Over {limit} requests a minute; retry later.")


def first_limit_passed(limits: list[tuple[str, str, int]], message: str):
    """Count this request against each (scope, identity, per-minute limit); the 429 of the first one it passes
    (`message` names `{limit}`), or None."""
    for scope, identity, limit in limits:
        wait = cache.over_limit(scope, identity, limit)
        if wait is not None:
            response = jsonify(error="Too Many Requests", message=message.format(limit=limit))
            response.status_code, response.headers["Retry-After"] = 429, str(wait)
            return response
    return None


def signed_customer() -> str:
    """The signed-in customer's id as Shopify signs it (`logged_in_customer_id`), or "" for a guest (or anything
    that is not a customer id): whose orders a reply may read."""
    customer = request.args.get("logged_in_customer_id", "")
    return customer if customer.isdigit() else ""


def shopper_identity() -> str:
    """Whom the per-shopper limit counts. Shopify signs `logged_in_customer_id`, so a signed-in shopper is
    that customer. A guest is the address Shopify's proxy saw: the right-most X-Forwarded-For entry past our
    own PAIRWELL_TRUSTED_PROXIES (load balancers in front of the app); entries to its left are whatever the
    client wrote and are never trusted."""
    customer = signed_customer()
    if customer:
        return f"customer:{customer[:32]}"
    hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",") if hop.strip()]
    trusted = current_app.config["TRUSTED_PROXIES"]
    if trusted and len(hops) >= trusted:
        return f"ip:{hops[-trusted][:64]}"
    return f"ip:{request.remote_addr or '-'}"


def installed_shop_id(domain: str) -> int | None:
    """The installed shop's id, remembered for 30 seconds: a storefront burst costs no shop query (an
    uninstall shows within those 30 seconds)."""
    known = current_app.extensions.setdefault("pairwell_installed_shops", TTLCache(maxsize=10_000, ttl=30))
    if domain not in known:
        try:
            shop = shops.get_shop(domain)
        except SQLAlchemyError:
            db.session.rollback()
            abort(503, "The store's recommendations are unavailable for a moment; retry later.")
        if shop is None or not shop.is_installed:
            return None
        known[domain] = shop.id
    return known[domain]


def experiment_arm(visitor: str) -> str:
    """The shopper's A/B arm: the signed-in customer Shopify signed, else the block's visitor id. The shop's
    experiment settings are remembered for 30 seconds, like its installation."""
    known = current_app.extensions.setdefault("pairwell_experiments", TTLCache(maxsize=10_000, ttl=30))
    if g.shop_id not in known:
        known[g.shop_id] = db.session.get(Shop, g.shop_id)
        db.session.expunge(known[g.shop_id])
    customer = request.args.get("logged_in_customer_id", "")
    return experiment.arm(known[g.shop_id], f"customer:{customer}" if customer else visitor)


@bp.get("/recommendations")
def product_recommendations():
    """`?product_id=&cart=&limit=&intent=&visitor=` → `{"products": [...], "source", "arm", "cached"}`."""
    try:
        product_id = shopify_id(request.args.get("product_id", ""), "product_id")
        cart_ids = id_list(request.args.get("cart", ""), "cart", MAX_CART_ITEMS)
        limit = whole_number(request.args.get("limit", "4"), "limit", 1, 10)
        visitor = request.args.get("visitor", "")
        if visitor and not SESSION_ID.match(visitor):
            raise BadInput("visitor must be 8-64 letters, digits, - or _.")
        intent = request.args.get("intent") or "complementary"
        if intent not in serving.INTENTS:
            raise BadInput(f"intent must be one of {list(serving.INTENTS)}.")
    except BadInput as exc:
        abort(400, str(exc))
    try:
        arm = experiment_arm(visitor)
    except SQLAlchemyError:
        db.session.rollback()
        arm = "served"
    customer = signed_customer()  # their earlier orders count
    cached = None if customer else serving.cached(
        serving.cache_key(g.shop_id, product_id, cart_ids, limit, arm, intent))
    if cached is not None:  # a guest's fast path: no database query at all
        return {**cached, "arm": arm}
    try:
        viewing = db.session.get(Product, (g.shop_id, product_id))
        if viewing is None:
            abort(400, f"Unknown product {product_id}.")
        cart = [p for p in (db.session.get(Product, (g.shop_id, c)) for c in cart_ids)
                if p is not None]  # a cart may hold products deleted since: ignore them
        return {**serving.serve(db.session.get(Shop, g.shop_id), viewing, cart, limit, arm=arm,
                                        intent=intent, customer=customer), "arm": arm}
    except SQLAlchemyError:
        db.session.rollback()
        response = jsonify(products=[], source="unavailable", cached=False,
                           message="Recommendations are unavailable for a moment.")
        response.status_code, response.headers["Retry-After"] = 503, "30"
        return response


@bp.post("/events")
def storefront_events():
    """The block's impressions, clicks and add-to-carts (sent with navigator.sendBeacon)."""
    body = request.get_data()
    if len(body) > MAX_EVENTS_BYTES:
        abort(413, f"Send at most {MAX_EVENTS_BYTES} bytes of events.")
    try:
        stored = analytics.record(g.shop_id, load_json(body, "the events body", max_depth=4))
    except (BadInput, analytics.BadEvents) as exc:
        abort(400, str(exc))
    return {"recorded": stored}, 202


@bp.post("/chat")
def support_chat():
    """The support assistant: `{"session_id", "message", "product_id"?, "cart"?}` → `{"reply", "products",
    "handoff", "handoff_url"?, "strategy"}`. A signed-in customer is who Shopify signed, never the body."""
    try:
        body = load_json(request.get_data(), "the chat body", max_depth=3)
        if not isinstance(body, dict):
            raise BadInput('Send a JSON object: {"session_id": "...", "message": "..."}.')
        session_id, message = body.get("session_id"), body.get("message")
        if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
            raise BadInput("session_id must be 8-64 letters, digits, - or _.")
        message = plain_text(message, "message", replies.MAX_MESSAGE_CHARS)
        product_id = shopify_id(str(body["product_id"]), "product_id") if body.get("product_id") else None
        cart = body.get("cart") or []
        if not isinstance(cart, list) or len(cart) > MAX_CART_ITEMS:
            raise BadInput(f"cart must be a list of at most {MAX_CART_ITEMS} product ids.")
        cart = [shopify_id(str(c), "cart") for c in cart]
    except BadInput as exc:
        abort(400, str(exc))
    # Counted per shopper and per shop, never per session: the shopper picks the session id.
    config = current_app.config
    refused = first_limit_passed([("chat", f"{g.shop_id}:{shopper_identity()}", config["CHAT_LIMIT_PER_SHOPPER"]),
                                  ("chat-shop", str(g.shop_id), config["CHAT_LIMIT_PER_SHOP"])],
                                 "Over {limit} messages a minute; wait a moment.")
    if refused is not None:
        return refused
    shop = db.session.get(Shop, g.shop_id)  # a database that is away: the app's 503 (shopify_app/__init__.py)
    if not replies.settings(shop)["enabled"]:
        abort(403, "The store's assistant is switched off.")
    viewing = db.session.get(Product, (g.shop_id, product_id)) if product_id else None
    reply = replies.answer(shop, session_id, message, viewing=viewing, cart=cart,
                             customer_ref=signed_customer(), chat=replies.live_chat(shop))
    return reply.as_json()
