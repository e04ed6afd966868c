"""Turning Shopify's shapes into rows: bulk-operation JSONL (GraphQL names) and webhook payloads (REST names).

Writes are batched upserts keyed by (shop_id, Shopify id). Products and orders carry `updated_at`, and
an older copy never overwrites a newer one, so webhooks may arrive in any order and re-syncs change nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal

import numpy as np
from markupsafe import Markup
from sqlalchemy import delete, select, text
from sqlalchemy.dialects import postgresql, sqlite

from core.embeddings import embed, product_text, text_sha
from core.storage.models import Order, OrderLine, Product, Variant, db

GUARDED = {Product: "updated_at", Order: "updated_at"}


def gid_number(gid: str | int | None) -> int | None:
    """`gid://shopify/Product/42` → 42 (REST payloads already carry the number)."""
    if gid is None or isinstance(gid, int):
        return gid
    return int(gid.rsplit("/", 1)[1])


def gid_type(gid: str) -> str:
    return gid.split("/")[3]


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def embed_products(shop_id: int, product_ids: list[int] | None = None) -> int:
    """Store the sentence embedding of every product whose text changed since it was last embedded, so serving
    processes read vectors instead of running the encoder. Returns how many were embedded."""
    query = select(Product).where(Product.shop_id == shop_id)
    if product_ids is not None:
        query = query.where(Product.id.in_(product_ids))
    stale = []
    for product in db.session.scalars(query):
        words = product_text(product.title, product.product_type, product.description)
        if product.embedding_sha != text_sha(words):
            stale.append((product, words))
    for start in range(0, len(stale), 256):
        batch = stale[start:start + 256]
        for (product, words), vector in zip(batch, embed([words for _, words in batch])):
            product.embedding, product.embedding_sha = vector.astype(np.float32).tobytes(), text_sha(words)
    db.session.commit()
    return len(stale)


def upsert(model: type[db.Model], rows: list[dict]) -> None:
    """Insert or update rows by primary key; for guarded models only where the incoming row is newer."""
    if not rows:
        return
    table = model.__table__
    insert = postgresql.insert if db.session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table)
    keys = [c.name for c in table.primary_key]
    updates = {name: stmt.excluded[name] for name in rows[0] if name not in keys}
    guard = GUARDED.get(model)
    where = table.c[guard] < stmt.excluded[guard] if guard else None
    db.session.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updates, where=where), rows)


# --- Bulk-operation JSONL (GraphQL field names) ------------------------------------------------------

def product_row(obj: dict, shop_id: int) -> dict:
    image = ((obj.get("featuredMedia") or {}).get("image")) or {}
    return {
        "shop_id": shop_id,
        "id": gid_number(obj["id"]),
        "handle": obj["handle"],
        "title": obj["title"],
        "description": obj.get("description") or "",
        "product_type": obj.get("productType") or "",
        "vendor": obj.get("vendor") or "",
        "tags": list(obj.get("tags") or []),
        "status": obj.get("status") or "ACTIVE",
        # GraphQL `Product.onlineStoreUrl`: null when the product is not published to the Online Store.
        "published": obj.get("onlineStoreUrl") is not None,
        "online_store_url": obj.get("onlineStoreUrl"),
        "image_url": image.get("url"),
        "image_alt": image.get("altText"),
        "total_inventory": obj.get("totalInventory") or 0,
        "updated_at": parse_time(obj["updatedAt"]),
    }


def variant_row(obj: dict, shop_id: int) -> dict:
    return {
        "shop_id": shop_id,
        "id": gid_number(obj["id"]),
        "product_id": gid_number(obj["__parentId"]),
        "title": obj.get("title") or "",
        "sku": obj.get("sku") or None,
        "price": Decimal(obj["price"]),
        "inventory_quantity": obj.get("inventoryQuantity") or 0,
        "available_for_sale": bool(obj.get("availableForSale")),
    }


def order_row(obj: dict, shop_id: int) -> dict:
    customer = obj.get("customer") or {}
    return {
        "shop_id": shop_id,
        "id": gid_number(obj["id"]),
        "name": obj.get("name") or "",
        "customer_ref": str(gid_number(customer["id"])) if customer.get("id") else None,
        "fulfillment_status": obj.get("displayFulfillmentStatus"),
        "created_at": parse_time(obj["createdAt"]),
        "updated_at": parse_time(obj.get("updatedAt") or obj["createdAt"]),
    }


def line_row(obj: dict, shop_id: int) -> dict:
    return {
        "shop_id": shop_id,
        "id": gid_number(obj["id"]),
        "order_id": gid_number(obj["__parentId"]),
        "product_id": gid_number((obj.get("product") or {}).get("id")),
        "variant_id": gid_number((obj.get("variant") or {}).get("id")),
        "quantity": obj.get("quantity") or 1,
    }


JSONL_TYPES = {
    "Product": (Product, product_row),
    "ProductVariant": (Variant, variant_row),
    "Order": (Order, order_row),
    "LineItem": (OrderLine, line_row),
}
PARENT_FIRST = [Product, Order, Variant, OrderLine]


def ingest_jsonl(lines: Iterable[bytes | str], shop_id: int, *, batch_size: int = 2000,
                 on_batch: Callable[[Counter], None] | None = None) -> tuple[Counter, dict[type, set[int]]]:
    """Stream a bulk result into the database in batches; return counts and the ids seen per model."""
    counts: Counter = Counter()
    seen: dict[type, set[int]] = {model: set() for model in PARENT_FIRST}
    pending: dict[type, list[dict]] = {model: [] for model in PARENT_FIRST}
    size = flushed = 0

    def flush():
        nonlocal flushed
        for model in PARENT_FIRST:  # parents before children: a batch may hold both
            upsert(model, pending[model])
            pending[model].clear()
        db.session.commit()
        if flushed == 0:
            refresh_planner_statistics()
        flushed += 1
        if on_batch:
            on_batch(counts)

    for line in lines:
        obj = json.loads(line)
        model, to_row = JSONL_TYPES[gid_type(obj["id"])]
        row = to_row(obj, shop_id)
        pending[model].append(row)
        seen[model].add(row["id"])
        counts[model.__tablename__] += 1
        size += 1
        if size >= batch_size:
            flush()
            size = 0
    flush()
    return counts, seen


def refresh_planner_statistics() -> None:
    """Postgres plans foreign-key checks once per connection; planned on never-analysed (empty) tables they
    scan sequentially and a first sync crawls (2k rows/s instead of 30k). ANALYZE after the first batch."""
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(text("ANALYZE " + ", ".join(m.__tablename__ for m in PARENT_FIRST)))
        db.session.commit()


def delete_missing(model: type[db.Model], shop_id: int, keep: set[int]) -> int:
    """Remove rows the latest full sync no longer saw (deleted while no webhook reached us)."""
    existing = db.session.scalars(select(model.id).where(model.shop_id == shop_id)).all()
    gone = [row_id for row_id in existing if row_id not in keep]
    for start in range(0, len(gone), 500):
        db.session.execute(delete(model).where(model.shop_id == shop_id, model.id.in_(gone[start:start + 500])))
    db.session.commit()
    return len(gone)


# --- Webhook payloads (REST field names) -------------------------------------------------------------

def product_rows_from_webhook(payload: dict, shop_id: int) -> tuple[dict, list[dict]]:
    image = payload.get("image") or {}
    variants = payload.get("variants") or []
    product = {
        "shop_id": shop_id,
        "id": payload["id"],
        "handle": payload["handle"],
        "title": payload["title"],
        "description": Markup(payload.get("body_html") or "").striptags(),
        "product_type": payload.get("product_type") or "",
        "vendor": payload.get("vendor") or "",
        "tags": [t.strip() for t in (payload.get("tags") or "").split(",") if t.strip()],
        "status": (payload.get("status") or "active").upper(),
        # REST `published_at`: null when the product is not published to the Online Store (taking it off the
        # channel sends products/update with it null). A body without the key leaves the stored value alone.
        **({"published": payload["published_at"] is not None} if "published_at" in payload else {}),
        "image_url": image.get("src"),
        "image_alt": image.get("alt"),
        "total_inventory": sum(v.get("inventory_quantity") or 0 for v in variants),
        "updated_at": parse_time(payload["updated_at"]),
    }
    variant_rows = [{
        "shop_id": shop_id,
        "id": v["id"],
        "product_id": payload["id"],
        "title": v.get("title") or "",
        "sku": v.get("sku") or None,
        "price": Decimal(str(v["price"])),
        "inventory_quantity": v.get("inventory_quantity") or 0,
        "available_for_sale": (v.get("inventory_quantity") or 0) > 0 or v.get("inventory_policy") == "continue"
                              or not v.get("inventory_management"),
    } for v in variants]
    return product, variant_rows


# An order webhook's REST `fulfillment_status` as GraphQL's displayFulfillmentStatus (what a sync stores).
REST_FULFILLMENT = {None: "UNFULFILLED", "fulfilled": "FULFILLED", "partial": "PARTIALLY_FULFILLED",
                    "restocked": "RESTOCKED"}


def order_rows_from_webhook(payload: dict, shop_id: int) -> tuple[dict, list[dict]]:
    customer = payload.get("customer") or {}
    order = {
        "shop_id": shop_id,
        "id": payload["id"],
        "name": payload.get("name") or "",
        "customer_ref": str(customer["id"]) if customer.get("id") else None,
        "fulfillment_status": REST_FULFILLMENT.get(payload.get("fulfillment_status"), "UNFULFILLED"),
        "created_at": parse_time(payload["created_at"]),
        "updated_at": parse_time(payload.get("updated_at") or payload["created_at"]),
    }
    lines = [{
        "shop_id": shop_id,
        "id": item["id"],
        "order_id": payload["id"],
        "product_id": item.get("product_id"),
        "variant_id": item.get("variant_id"),
        "quantity": item.get("quantity") or 1,
    } for item in payload.get("line_items") or []]
    return order, lines
