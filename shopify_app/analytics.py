"""Storefront measurement: what shoppers did with the "pairs well with" block (recorded through the App
Proxy) and what it earned, by where the block's products came from (model, cache of model answers, fallback).

CTR = clicks / impressions; add-to-cart rate = adds of a clicked recommendation / impressions; AOV of the
orders that contain a product a shopper added from the block (within ATTRIBUTION of the add) against the
other orders of the period. Orders carry no totals in this database, so an order's value is its lines at
the variants' current prices."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sqlalchemy import select

from core.models import Order, OrderLine, StorefrontEvent, Variant, db, utcnow

KINDS = ("impression", "click", "add_to_cart")
SOURCES = ("model", "cache", "fallback", "unknown")
ATTRIBUTION = timedelta(days=7)
MAX_EVENTS = 20  # a page sends a handful; more is not a browser


class BadEvents(ValueError):
    """The payload is not a list of events we record: the message says what is wrong."""


def record(shop_id: int, payload: object) -> int:
    """Validate every event first, then store them all: a bad batch stores nothing."""
    events = payload.get("events") if isinstance(payload, dict) else None
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
        raise BadEvents(f'send {{"events": [...]}} with 1 to {MAX_EVENTS} events')
    rows = []
    for n, event in enumerate(events):
        if not isinstance(event, dict) or event.get("kind") not in KINDS:
            raise BadEvents(f"event {n}: kind must be one of {list(KINDS)}")
        viewed, product = event.get("viewed_product_id"), event.get("product_id")
        if not _is_id(viewed):
            raise BadEvents(f"event {n}: viewed_product_id must be a numeric product id")
        if event["kind"] != "impression" and not _is_id(product):
            raise BadEvents(f"event {n}: a {event['kind']} needs the recommended product_id")
        shown = event.get("shown", 0)
        if not isinstance(shown, int) or not 0 <= shown <= 10:
            raise BadEvents(f"event {n}: shown must be 0 to 10")
        source = event.get("source") if event.get("source") in SOURCES else "unknown"
        rows.append(StorefrontEvent(shop_id=shop_id, kind=event["kind"], viewed_product_id=int(viewed),
                                    product_id=int(product) if _is_id(product) else None, source=source,
                                    shown=shown))
    db.session.add_all(rows)
    db.session.commit()
    return len(rows)


def _is_id(value: object) -> bool:
    """A Shopify numeric id, as a number or a string of digits, within the database's 64 bits."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63


def summary(shop_id: int, days: int = 30) -> dict:
    since = utcnow() - timedelta(days=days)
    events = db.session.scalars(select(StorefrontEvent).where(
        StorefrontEvent.shop_id == shop_id, StorefrontEvent.created_at >= since)).all()
    by_source = {}
    for source in sorted({e.source for e in events}):
        chosen = [e for e in events if e.source == source]
        by_source[source] = _rates(chosen)
    report = {"days": days, **_rates(events), "by_source": by_source}
    report.update(order_values(shop_id, since, [e for e in events if e.kind == "add_to_cart"]))
    return report


def _rates(events: list[StorefrontEvent]) -> dict:
    counts = {kind: sum(e.kind == kind for e in events) for kind in KINDS}
    shown = counts["impression"]
    return {"impressions": shown, "clicks": counts["click"], "add_to_carts": counts["add_to_cart"],
            "ctr": round(counts["click"] / shown, 4) if shown else None,
            "add_to_cart_rate": round(counts["add_to_cart"] / shown, 4) if shown else None}


def order_values(shop_id: int, since, adds: list[StorefrontEvent]) -> dict:
    orders = db.session.scalars(select(Order).where(Order.shop_id == shop_id, Order.created_at >= since)).all()
    lines = db.session.execute(select(OrderLine.order_id, OrderLine.product_id, OrderLine.quantity, Variant.price)
                               .join(Variant, (Variant.shop_id == OrderLine.shop_id)
                                     & (Variant.id == OrderLine.variant_id))
                               .where(OrderLine.shop_id == shop_id, OrderLine.order_id.in_([o.id for o in orders])))
    value: dict[int, Decimal] = {}
    products: dict[int, set[int]] = {}
    for order_id, product_id, quantity, price in lines:
        value[order_id] = value.get(order_id, Decimal(0)) + price * quantity
        products.setdefault(order_id, set()).add(product_id)
    added = [(e.product_id, e.created_at) for e in adds]
    with_block, without = [], []
    for order in orders:
        attributed = any(product in products.get(order.id, ()) and at <= order.created_at <= at + ATTRIBUTION
                         for product, at in added)
        (with_block if attributed else without).append(value.get(order.id, Decimal(0)))

    def mean(values: list[Decimal]) -> str | None:
        return str(round(sum(values) / len(values), 2)) if values else None

    return {"orders_with_recommendations": len(with_block), "orders_without": len(without),
            "aov_with_recommendations": mean(with_block), "aov_without": mean(without)}

