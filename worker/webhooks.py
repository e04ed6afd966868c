"""What each webhook topic does to our data. One function a topic; `handle_delivery` dispatches."""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy import delete, or_, select, update

from core import recommendations, shops
from core.assistant import conversation_json
from core.inputs import MAX_ID
from core.models import Conversation, Order, OrderLine, Product, Shop, SyncRun, Variant, WebhookDelivery, db, utcnow
from core.webhooks import TOPICS

from .ingest import embed_products, order_rows_from_webhook, product_rows_from_webhook, upsert
from .pipeline import forget_artifacts

HANDLERS: dict[str, Callable[[Shop | None, dict, str], dict | None]] = {}


def handles(*topics: str):
    def register(fn):
        for topic in topics:
            assert topic in TOPICS, f"{topic} is not in core.webhooks.TOPICS"
            HANDLERS[topic] = fn
        return fn
    return register


@handles("products/create", "products/update")
def product_changed(shop: Shop | None, payload: dict, domain: str) -> dict | None:
    if shop is None:
        return {"ignored": "unknown shop"}
    product, variants = product_rows_from_webhook(payload, shop.id)
    current = db.session.get(Product, (shop.id, product["id"]))
    if current is not None and current.updated_at >= product["updated_at"]:
        return {"ignored": "stale update", "stored_updated_at": current.updated_at.isoformat()}
    upsert(Product, [product])
    db.session.execute(delete(Variant).where(
        Variant.shop_id == shop.id, Variant.product_id == product["id"],
        Variant.id.not_in([v["id"] for v in variants])))
    upsert(Variant, variants)
    embed_products(shop.id, [product["id"]])
    recommendations.invalidate(shop.id)
    return {"product": product["id"], "variants": len(variants)}


@handles("products/delete")
def product_deleted(shop: Shop | None, payload: dict, domain: str) -> dict | None:
    if shop is None:
        return {"ignored": "unknown shop"}
    deleted = db.session.execute(delete(Product).where(Product.shop_id == shop.id, Product.id == payload["id"]))
    recommendations.invalidate(shop.id)
    return {"deleted": deleted.rowcount}


@handles("orders/create", "orders/updated")
def order_changed(shop: Shop | None, payload: dict, domain: str) -> dict | None:
    if shop is None:
        return {"ignored": "unknown shop"}
    order, lines = order_rows_from_webhook(payload, shop.id)
    current = db.session.get(Order, (shop.id, order["id"]))
    if current is not None and current.updated_at >= order["updated_at"]:
        return {"ignored": "stale update"}
    upsert(Order, [order])
    # An update carries the whole order: lines it no longer names were removed (or edited away).
    db.session.execute(delete(OrderLine).where(
        OrderLine.shop_id == shop.id, OrderLine.order_id == order["id"],
        OrderLine.id.not_in([line["id"] for line in lines])))
    upsert(OrderLine, lines)
    return {"order": order["id"], "lines": len(lines)}


@handles("app/uninstalled")
def app_uninstalled(shop: Shop | None, payload: dict, domain: str) -> dict | None:
    shops.uninstall(domain)
    return {"uninstalled": domain}


@handles("app/scopes_update")
def scopes_updated(shop: Shop | None, payload: dict, domain: str) -> dict | None:
    if shop is not None:
        shop.scopes = ",".join(payload.get("current") or [])
    return {"scopes": payload.get("current")}


@handles("bulk_operations/finish")
def bulk_operation_finished(shop: Shop | None, payload: dict, domain: str) -> dict | None:
    """The sync task polls the operation itself; this records a failure early on the run waiting for it."""
    operation_id = payload.get("admin_graphql_api_id")
    runs = db.session.scalars(select(SyncRun).where(SyncRun.status == "running")).all() if shop else []
    for run in runs:
        if run.shop_id == shop.id and operation_id in (run.bulk_operation_ids or []):
            if payload.get("status") != "completed":
                run.error = f"bulk operation {operation_id} {payload.get('status')}: {payload.get('error_code')}"
            return {"sync_run": run.id, "status": payload.get("status")}
    return {"ignored": "no running sync waits for this operation"}


def _customer_orders(shop: Shop, payload: dict) -> list[Order]:
    customer_id = (payload.get("customer") or {}).get("id")
    order_ids = {i for i in [*(payload.get("orders_requested") or []), *(payload.get("orders_to_redact") or [])]
                 if isinstance(i, int) and 0 < i <= MAX_ID}
    conditions = [Order.id.in_(order_ids)] if order_ids else []
    if customer_id is not None:
        conditions.append(Order.customer_ref == str(customer_id))
    if not conditions:
        return []
    return db.session.scalars(select(Order).where(Order.shop_id == shop.id, or_(*conditions))).all()


def _customer_conversations(shop: Shop, payload: dict) -> list[Conversation]:
    """The chats the customer had while signed in (a guest's chats name nobody)."""
    customer_id = (payload.get("customer") or {}).get("id")
    if not isinstance(customer_id, int) or customer_id <= 0:
        return []
    return db.session.scalars(select(Conversation).where(
        Conversation.shop_id == shop.id, Conversation.customer_ref == str(customer_id))).all()


@handles("customers/data_request")
def customer_data_request(shop: Shop | None, payload: dict, domain: str) -> dict | None:
    """Everything we hold on the customer: their orders' ids, dates and line items, nothing else."""
    if shop is None:
        return {"customer": (payload.get("customer") or {}).get("id"), "orders": []}
    return {
        "customer": (payload.get("customer") or {}).get("id"),
        "conversations": [conversation_json(t) for t in _customer_conversations(shop, payload)],
        "orders": [{
            "id": order.id, "name": order.name, "created_at": order.created_at.isoformat(),
            "lines": [{"product_id": line.product_id, "variant_id": line.variant_id, "quantity": line.quantity}
                      for line in order.lines],
        } for order in _customer_orders(shop, payload)],
    }


@handles("customers/redact")
def customer_redact(shop: Shop | None, payload: dict, domain: str) -> dict | None:
    """Delete the customer's orders, and any stored delivery still waiting that is about them."""
    orders = _customer_orders(shop, payload) if shop else []
    order_ids = {order.id for order in orders}
    for order in orders:
        db.session.delete(order)
    talks = _customer_conversations(shop, payload) if shop else []
    for talk in talks:
        db.session.delete(talk)
    customer = str((payload.get("customer") or {}).get("id"))
    waiting = db.session.scalars(select(WebhookDelivery).where(
        WebhookDelivery.shop_domain == domain, WebhookDelivery.topic.in_(("orders/create", "orders/updated")),
        WebhookDelivery.status.in_(("received", "failed", "processing", "malformed")))).all()
    dropped = 0
    for delivery in waiting:
        body = delivery.raw_body.decode("utf-8", "replace")
        try:
            order = json.loads(body)
            about_them = str((order.get("customer") or {}).get("id")) == customer or order.get("id") in order_ids
        except (ValueError, AttributeError):
            about_them = customer in body  # a malformed body: drop it if it names them at all
        if about_them:
            db.session.delete(delivery)
            dropped += 1
    return {"orders_deleted": len(orders), "conversations_deleted": len(talks), "deliveries_dropped": dropped}


@handles("shop/redact")
def shop_redact(shop: Shop | None, payload: dict, domain: str) -> dict | None:
    """Forget the shop entirely: its rows cascade from the shop, its stored webhook bodies go too."""
    if shop is not None:
        db.session.delete(shop)
    db.session.execute(delete(WebhookDelivery).where(
        WebhookDelivery.shop_domain == domain, WebhookDelivery.topic != "shop/redact"))
    return {"shop_deleted": shop is not None, **forget_artifacts(domain)}


def claim(delivery_id: int, stuck_before=None) -> bool:
    """Take a delivery for processing, atomically: a delivery queued twice (a retry, the sweeper) is still
    processed once. `stuck_before`: also take one whose worker died while processing it."""
    claimable = WebhookDelivery.status.in_(("received", "failed"))
    if stuck_before is not None:
        claimable = or_(claimable, (WebhookDelivery.status == "processing")
                        & (WebhookDelivery.processed_at < stuck_before))
    taken = db.session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id, claimable)
                               .values(status="processing", processed_at=utcnow()))
    db.session.commit()
    return taken.rowcount == 1


def handle_delivery(delivery_id: int, stuck_before=None) -> WebhookDelivery | None:
    if not claim(delivery_id, stuck_before):
        return db.session.get(WebhookDelivery, delivery_id)
    delivery = db.session.get(WebhookDelivery, delivery_id)
    try:
        shop = shops.get_shop(delivery.shop_domain)
        delivery.result = HANDLERS[delivery.topic](shop, json.loads(delivery.raw_body), delivery.shop_domain)
        delivery.status, delivery.error = "processed", None
        delivery.raw_body = b""  # applied to the tables: the body, and whatever personal data it held, goes
    except Exception as exc:
        db.session.rollback()
        delivery = db.session.get(WebhookDelivery, delivery_id)
        delivery.status, delivery.error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        delivery.processed_at = utcnow()
        db.session.commit()
    return delivery


def waiting_deliveries(received_before, stuck_before, failed_before, failed_since) -> list[int]:
    """Stored deliveries nobody processed: never handed to a worker (the broker was down), taken by a worker
    that died, or failed for a while (the database was away past Celery's retries) but not for days."""
    return list(db.session.scalars(select(WebhookDelivery.id).where(or_(
        (WebhookDelivery.status == "received") & (WebhookDelivery.received_at < received_before),
        (WebhookDelivery.status == "processing") & (WebhookDelivery.processed_at < stuck_before),
        (WebhookDelivery.status == "failed") & (WebhookDelivery.processed_at < failed_before)
        & (WebhookDelivery.received_at > failed_since)))
        .order_by(WebhookDelivery.id)))


def drop_old_malformed(before) -> int:
    """Malformed bodies are kept for inspection, not for ever."""
    return db.session.execute(delete(WebhookDelivery).where(
        WebhookDelivery.status == "malformed", WebhookDelivery.received_at < before)).rowcount
