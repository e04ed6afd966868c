"""Storefront measurement: what shoppers did with the "pairs well with" block (recorded through the App
Proxy) and what it earned, by where the block's products came from (the model or the fallback ranking).

CTR = clicks / impressions; add-to-cart rate = adds of a clicked recommendation / impressions; AOV of the
orders that contain a product a shopper added from the block (within ATTRIBUTION of the add) against the
other orders of the period. Orders carry no totals in this database, so an order's value is its lines at
the variants' current prices."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import datetime, timedelta
from decimal import Decimal

from flask import current_app
from sqlalchemy import insert, select

from core.inputs import BadInput, shopify_id
from core.recommendations.experiment import HOLDOUT, mean_interval, wilson
from core.storage.models import Order, OrderLine, StorefrontEvent, Variant, db, utcnow

log = logging.getLogger(__name__)

KINDS = ("impression", "click", "add_to_cart")
# "holdout": the A/B holdout's co-purchase list; "cache": events from before cached replies kept their origin
SOURCES = ("model", "fallback", "holdout", "cache", "unknown")
ATTRIBUTION = timedelta(days=7)
MAX_EVENTS = 20  # a page sends a handful; more is not a browser


class BadEvents(ValueError):
    """The payload is not a list of events we record: the message says what is wrong."""


def record(shop_id: int, payload: object) -> int:
    """Validate every event first, then queue them all for the writer: a bad batch stores nothing, and a
    shopper's beacon never waits on the database."""
    events = payload.get("events") if isinstance(payload, dict) else None
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
        raise BadEvents(f'send {{"events": [...]}} with 1 to {MAX_EVENTS} events')
    rows = []
    for n, event in enumerate(events):
        if not isinstance(event, dict) or event.get("kind") not in KINDS:
            raise BadEvents(f"event {n}: kind must be one of {list(KINDS)}")
        try:
            viewed = shopify_id(event.get("viewed_product_id"), f"event {n}: viewed_product_id")
            product = shopify_id(event["product_id"], f"event {n}: product_id") \
                if event["kind"] != "impression" or event.get("product_id") is not None else None
        except KeyError:
            raise BadEvents(f"event {n}: a {event['kind']} needs the recommended product_id") from None
        except BadInput as exc:
            raise BadEvents(str(exc)) from None
        shown = event.get("shown", 0)
        if not isinstance(shown, int) or isinstance(shown, bool) or not 0 <= shown <= 10:
            raise BadEvents(f"event {n}: shown must be 0 to 10")
        source = event.get("source") if event.get("source") in SOURCES else "unknown"
        rows.append({"shop_id": shop_id, "kind": event["kind"], "viewed_product_id": viewed, "product_id": product,
                     "source": source, "shown": shown, "created_at": utcnow()})
    writer().put(rows)
    return len(rows)


class EventWriter:
    """Stores queued events in batches from one background thread. While the database is away events wait
    in memory (up to MAX_WAITING, then the oldest are dropped and counted), so beacons and recommendations
    never hold a server thread on a locked or missing database."""

    MAX_WAITING = 50_000

    def __init__(self, app):
        self.app, self.dropped = app, 0
        self._waiting: deque[dict] = deque()
        self._lock = threading.Condition()
        self._busy = False
        threading.Thread(target=self._run, name="pairwell-events", daemon=True).start()

    def put(self, rows: list[dict]) -> None:
        with self._lock:
            overflow = len(self._waiting) + len(rows) - self.MAX_WAITING
            for _ in range(max(overflow, 0)):
                self._waiting.popleft()
                self.dropped += 1
            self._waiting.extend(rows)
            self._lock.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until what was queued so far is stored (metrics, tests); False if the database is away."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._waiting and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting:
                    self._lock.wait()
                batch = [self._waiting.popleft() for _ in range(min(len(self._waiting), 500))]
                self._busy = True
            try:
                with self.app.app_context():
                    db.session.execute(insert(StorefrontEvent), batch)
                    db.session.commit()
            except Exception as exc:  # the database is away: put them back and wait a little
                log.warning("storefront events not stored yet (%s): %d waiting", exc, len(batch))
                with self._lock:
                    self._waiting.extendleft(reversed(batch))
                    self._busy = False
                    self._lock.notify_all()
                time.sleep(1.0)
                continue
            with self._lock:
                self._busy = False
                self._lock.notify_all()


def writer() -> EventWriter:
    app = current_app._get_current_object()
    if "pairwell_events" not in app.extensions:
        app.extensions["pairwell_events"] = EventWriter(app)
    return app.extensions["pairwell_events"]


def summary(shop_id: int, days: int = 30) -> dict:
    since = utcnow() - timedelta(days=days)
    events = _events(shop_id, since)
    by_source = {}
    for source in sorted({e.source for e in events}):
        chosen = [e for e in events if e.source == source]
        by_source[source] = _rates(chosen)
    report = {"days": days, **_rates(events), "by_source": by_source}
    with_block, without = attributed_orders(period_orders(shop_id, since),
                                            [e for e in events if e.kind == "add_to_cart"])
    report.update({"orders_with_recommendations": len(with_block), "orders_without": len(without),
                   "aov_with_recommendations": _mean(with_block), "aov_without": _mean(without)})
    return report


def experiment_summary(shop_id: int, days: int = 30) -> dict:
    """The A/B holdout read per arm (`served`: the ranking and model; `holdout`: co-purchase): CTR and
    add-to-cart rate with 95% Wilson intervals, and the AOV of orders holding a product added from that arm's
    blocks, with a 95% interval."""
    since = utcnow() - timedelta(days=days)
    events, orders = _events(shop_id, since), period_orders(shop_id, since)
    arms = {}
    for arm in ("served", HOLDOUT):
        chosen = [e for e in events if (e.source == HOLDOUT) == (arm == HOLDOUT)]
        rates = _rates(chosen)
        orders_of_arm, _ = attributed_orders(orders, [e for e in chosen if e.kind == "add_to_cart"])
        arms[arm] = {**rates, "ctr_interval": wilson(rates["clicks"], rates["impressions"]),
                     "add_to_cart_interval": wilson(rates["add_to_carts"], rates["impressions"]),
                     "orders": len(orders_of_arm), "aov": _mean(orders_of_arm),
                     "aov_interval": mean_interval([float(v) for v in orders_of_arm])}
    return {"days": days, "arms": arms}


def _events(shop_id: int, since) -> list[StorefrontEvent]:
    writer().flush(timeout=2.0)  # this process's beacons of the last moments count too
    return list(db.session.scalars(select(StorefrontEvent).where(
        StorefrontEvent.shop_id == shop_id, StorefrontEvent.created_at >= since)))


def _rates(events: list[StorefrontEvent]) -> dict:
    counts = {kind: sum(e.kind == kind for e in events) for kind in KINDS}
    shown = counts["impression"]
    return {"impressions": shown, "clicks": counts["click"], "add_to_carts": counts["add_to_cart"],
            "ctr": round(counts["click"] / shown, 4) if shown else None,
            "add_to_cart_rate": round(counts["add_to_cart"] / shown, 4) if shown else None}


def _mean(values: list[Decimal]) -> str | None:
    return str(round(sum(values) / len(values), 2)) if values else None


def period_orders(shop_id: int, since) -> list[tuple[datetime, Decimal, set[int]]]:
    """The period's orders: when each was placed, its value and its products."""
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
    return [(o.created_at, value.get(o.id, Decimal(0)), products.get(o.id, set())) for o in orders]


def attributed_orders(orders: list[tuple[datetime, Decimal, set[int]]],
                      adds: list[StorefrontEvent]) -> tuple[list[Decimal], list[Decimal]]:
    """The values of the orders that hold a product added from the block (within ATTRIBUTION of the add), and
    of the others."""
    added = [(e.product_id, e.created_at) for e in adds]
    with_block, without = [], []
    for placed, value, products in orders:
        attributed = any(product in products and at <= placed <= at + ATTRIBUTION for product, at in added)
        (with_block if attributed else without).append(value)
    return with_block, without
