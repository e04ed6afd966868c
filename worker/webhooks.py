"""What each webhook topic does to our data. One function a topic; `handle_delivery` dispatches."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable

from sqlalchemy import delete, or_, select, update

from core.assistant.replies import conversation_json
from core.inputs import MAX_ID
from core.model.datasets import forget_conversations, uploads_dir
from core.model.pipeline import forget_artifacts
from core.recommendations import neighbours, serving
from core.shopify import shops
from core.shopify.ingest import embed_products, order_rows_from_webhook, product_rows_from_webhook, upsert
from core.shopify.webhooks import TOPICS
from core.storage.models import (
    Conversation,
    Order,
    OrderLine,
    Product,
    Shop,
    SyncRun,
    Variant,
    WebhookDelivery,
    db,
    locked_shop,
    utcnow,
)

HANDLERS: dict[str, Callable[[Shop | None, dict, str], dict | None]] = {}


def handles(*topics: str):
    def register(fn):
        for topic in topics:
            assert topic in TOPICS, f"{topic} is not in core.shopify.webhooks.TOPICS"
            HANDLERS[topic] = fn
        return fn
    return register


@handles("products/create", "products/update")
def product_changed(shop: Shop | None, payload: dict, domain: str) -> dict | None:
    if shop is None:
        return {"ignored": "unknown shop"}
    product, variants = product_rows_from_webhook(payload, shop.id)
    locked_shop(shop.id)  # two deliveries of one product at once: the check and the writes are one step
    current = db.session.get(Product, (shop.id, product["id"]), populate_existing=True)
    if current is not None and current.updated_at >= product["updated_at"]:
        return {"ignored": "stale update", "stored_updated_at": current.updated_at.isoformat()}
    upsert(Product, [product])
    db.session.execute(delete(Variant).where(
        Variant.shop_id == shop.id, Variant.product_id == product["id"],
        Variant.id.not_in([v["id"] for v in variants])))
    upsert(Variant, variants)
    embed_products(shop.id, [product["id"]])  # commits: a block built after the invalidation reads the new row
    # Cached blocks may hold the product as it was: one unpublished (`published_at: null`), archived or sold out
    # must leave them now (Shopify sends products/update when a product leaves the Online Store).
    serving.invalidate(shop.id)
    neighbours.mark_changed(shop.id)
    return {"product": product["id"], "variants": len(variants)}


@handles("products/delete")
def product_deleted(shop: Shop | None, payload: dict, domain: str) -> dict | None:
    if shop is None:
        return {"ignored": "unknown shop"}
    deleted = db.session.execute(delete(Product).where(Product.shop_id == shop.id, Product.id == payload["id"]))
    db.session.commit()  # before the invalidation: a block rebuilt at once must not find the product still there
    serving.invalidate(shop.id)
    neighbours.mark_changed(shop.id)
    return {"deleted": deleted.rowcount}


@handles("orders/create", "orders/updated")
def order_changed(shop: Shop | None, payload: dict, domain: str) -> dict | None:
    if shop is None:
        return {"ignored": "unknown shop"}
    order, lines = order_rows_from_webhook(payload, shop.id)
    locked_shop(shop.id)  # two deliveries of one order at once: the check and the writes are one step
    current = db.session.get(Order, (shop.id, order["id"]), populate_existing=True)
    if current is not None and current.updated_at >= order["updated_at"]:
        return {"ignored": "stale update"}
    upsert(Order, [order])
    # An update carries the whole order: lines it no longer names were removed (or edited away).
    db.session.execute(delete(OrderLine).where(
        OrderLine.shop_id == shop.id, OrderLine.order_id == order["id"],
        OrderLine.id.not_in([line["id"] for line in lines])))
    upsert(OrderLine, lines)
    neighbours.mark_changed(shop.id)  # what it was bought with: the lists are built again
    return {"order": order["id"], "lines": len(lines)}


@handles("app/uninstalled")
def app_uninstalled(shop: Shop | None, payload: dict, domain: str) -> dict | None:
    shops.uninstall(domain)
    if shop is not None:  # this process's index and shelf of the shop go now; others' age out of their bound
        serving.forget_shop(shop.id)
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
    """Everything we hold on the customer: their conversations with the assistant, and their orders' ids, dates and
    line items. This export is the delivery's stored result, for the merchant to hand over; `customers/redact`
    erases it with the rest."""
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


WAITING = ("received", "failed", "processing", "malformed")
ABOUT_A_CUSTOMER = ("orders/create", "orders/updated", "customers/data_request")


def _names_customer(delivery: WebhookDelivery, customer: str | None, order_ids: set[int]) -> bool:
    """Whether a stored delivery's body or result is about the customer or one of their orders. A body that is not
    JSON (a malformed delivery, kept as it came) counts if it holds their id anywhere."""
    for stored in (delivery.raw_body, delivery.result):
        if not stored:
            continue
        try:
            data = json.loads(stored) if isinstance(stored, bytes) else stored
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            text = stored.decode("utf-8", "replace") if isinstance(stored, bytes) else json.dumps(stored)
            if customer and re.search(rf"(?<!\d){customer}(?!\d)", text):
                return True
            continue
        who = data.get("customer")
        who = who.get("id") if isinstance(who, dict) else who
        if customer and str(who) == customer:
            return True
        if any(isinstance(data.get(key), int) and data[key] in order_ids for key in ("id", "order")):
            return True
    return False


@handles("customers/redact")
def customer_redact(shop: Shop | None, payload: dict, domain: str) -> dict | None:
    """Erase the customer: their orders and conversations; every dataset file holding their words, with the training
    files made from it (`datasets.forget_conversations`); every stored delivery about them (a waiting one is
    dropped, a processed one, such as an earlier data request's export, keeps only its id for de-duplication);
    and the shop's cached replies (a signed-in customer's block is cached under their own key); the neighbour
    lists, which counted their orders, are built again."""
    orders = _customer_orders(shop, payload) if shop else []
    order_ids = {order.id for order in orders}
    talks = _customer_conversations(shop, payload) if shop else []
    files = forget_conversations(shop, talks) if talks else {}
    for order in orders:
        db.session.delete(order)
    for talk in talks:
        db.session.delete(talk)
    customer_id = (payload.get("customer") or {}).get("id")
    customer = str(customer_id) if isinstance(customer_id, int) and 0 < customer_id <= MAX_ID else None
    deliveries = db.session.scalars(select(WebhookDelivery).where(
        WebhookDelivery.shop_domain == domain,
        or_(WebhookDelivery.topic.in_(ABOUT_A_CUSTOMER), WebhookDelivery.status == "malformed"))).all()
    dropped = erased = 0
    for delivery in deliveries:
        if not _names_customer(delivery, customer, order_ids):
            continue
        if delivery.status in WAITING:
            db.session.delete(delivery)
            dropped += 1
        else:
            delivery.raw_body, delivery.result, delivery.error = b"", {"erased": "customers/redact"}, None
            erased += 1
    if shop is not None:
        serving.forget_replies(shop.id)
        if orders:
            neighbours.mark_changed(shop.id)  # the lists' bought-together counts held their orders
    return {"orders_deleted": len(orders), "conversations_deleted": len(talks), "deliveries_dropped": dropped,
            "delivery_results_erased": erased, **files}


@handles("shop/redact")
def shop_redact(shop: Shop | None, payload: dict, domain: str) -> dict | None:
    """Forget the shop entirely: its rows cascade from the shop, its stored webhook bodies and results go too, its
    files (datasets, training files, models, reports, the merchant's uploads) and its cached replies."""
    if shop is not None:
        serving.forget_shop(shop.id)
        shutil.rmtree(uploads_dir(shop), ignore_errors=True)  # under the artifacts folder today; wherever it lives
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
