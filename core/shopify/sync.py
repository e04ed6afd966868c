"""Full sync by bulk operations: submit the product and order queries, wait, stream each JSONL in."""

from __future__ import annotations

import time
from collections import Counter

from flask import current_app
from markupsafe import Markup
from sqlalchemy import select

from core.recommendations import serving
from core.shopify import shops
from core.shopify.ingest import delete_missing, embed_products, ingest_jsonl
from core.shopify.shopify_api import AdminClient, ShopifyError, stream_lines
from core.storage.models import Product, Shop, SyncRun, Variant, db, locked_shop, utcnow

PRODUCTS_BULK_QUERY = """
{
  products {
    edges {
      node {
        id handle title description productType vendor tags status onlineStoreUrl totalInventory updatedAt
        featuredMedia { ... on MediaImage { image { url altText } } }
        variants { edges { node { id title sku price inventoryQuantity availableForSale } } }
      }
    }
  }
}
"""

ORDERS_BULK_QUERY = """
{
  orders {
    edges {
      node {
        id name createdAt updatedAt displayFulfillmentStatus
        customer { id }
        lineItems { edges { node { id quantity product { id } variant { id } } } }
      }
    }
  }
}
"""

RUN_BULK_MUTATION = """
mutation RunBulkQuery($query: String!) {
  bulkOperationRunQuery(query: $query) {
    bulkOperation { id status }
    userErrors { field message }
  }
}
"""

BULK_OPERATION_QUERY = """
query BulkOperation($id: ID!) {
  bulkOperation(id: $id) { id status errorCode objectCount fileSize url partialDataUrl }
}
"""


SHOP_POLICIES_QUERY = "query ShopPolicies { shop { currencyCode shopPolicies { type body } } }"
POLICY_KINDS = {"SHIPPING_POLICY": "shipping", "REFUND_POLICY": "returns"}


def sync_policies(client: AdminClient, shop: Shop) -> int:
    """Shopify's shipping and refund policy pages (kinds the merchant entered in Pairwell stay as they are), and
    the shop's currency."""
    found_shop = client.execute(SHOP_POLICIES_QUERY)["shop"]
    policies = found_shop["shopPolicies"]
    found = {POLICY_KINDS[p["type"]]: Markup(p["body"]).striptags() for p in policies if p["type"] in POLICY_KINDS}
    locked_shop(shop.id)  # merged over what the merchant saved meanwhile (the caller commits at once)
    shop.policies = {**(shop.policies or {}), **found}
    shop.currency = str(found_shop.get("currencyCode") or shop.currency or "")[:3]
    return len(found)


def submit_bulk_query(client: AdminClient, query: str) -> str:
    result = client.execute(RUN_BULK_MUTATION, {"query": query})["bulkOperationRunQuery"]
    if result["userErrors"]:
        raise ShopifyError("bulk query refused: " + "; ".join(e["message"] for e in result["userErrors"]))
    return result["bulkOperation"]["id"]


def wait_for_bulk_operation(client: AdminClient, operation_id: str, *, poll_seconds: float = 1.0,
                            timeout_seconds: float = 3600) -> dict:
    """Poll until the operation ends; return it when COMPLETED (its `url` is None for an empty result)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        operation = client.execute(BULK_OPERATION_QUERY, {"id": operation_id})["bulkOperation"]
        if operation["status"] == "COMPLETED":
            return operation
        if operation["status"] in ("FAILED", "CANCELED", "EXPIRED"):
            raise ShopifyError(f"bulk operation {operation_id} {operation['status']}: {operation.get('errorCode')}")
        if time.monotonic() > deadline:
            raise ShopifyError(f"bulk operation {operation_id} did not finish in {timeout_seconds}s")
        time.sleep(poll_seconds)


def on_storefront(shop_id: int) -> set[int]:
    """The shop's products shoppers can see (`Product.on_storefront`)."""
    return set(db.session.scalars(select(Product.id).where(Product.shop_id == shop_id, Product.on_storefront)))


def run_full_sync(run: SyncRun) -> SyncRun:
    """Reconcile one shop with Shopify: products (deleting what vanished), then orders. When that changed which
    products shoppers can see (one unpublished, archived or deleted while no webhook reached us), the cached
    blocks, which may hold them, are dropped."""
    poll_seconds = current_app.config["BULK_POLL_SECONDS"]
    shop = db.session.get(Shop, run.shop_id)
    run.status, run.started_at, run.error = "running", utcnow(), None
    db.session.commit()
    visible = on_storefront(shop.id)
    try:
        client = shops.admin_client(shop)
        operations = {
            "products": submit_bulk_query(client, PRODUCTS_BULK_QUERY),
            "orders": submit_bulk_query(client, ORDERS_BULK_QUERY),
        }
        run.bulk_operation_ids = list(operations.values())
        totals: Counter = Counter()
        for index, (name, operation_id) in enumerate(operations.items()):
            run.stage = f"waiting for {name}"
            db.session.commit()
            operation = wait_for_bulk_operation(client, operation_id, poll_seconds=poll_seconds)
            expected = max(int(operation.get("objectCount") or 0), 1)
            run.stage = f"ingesting {name}"

            def report(counts: Counter, index=index, expected=expected):
                done = sum(counts.values()) / expected
                run.counts = dict(totals + counts)
                run.progress = round((index + min(done, 1.0)) / len(operations), 4)
                db.session.commit()

            lines = stream_lines(operation["url"]) if operation.get("url") else []
            counts, seen = ingest_jsonl(lines, shop.id, on_batch=report)
            totals += counts
            if name == "products":
                totals["products_deleted"] = delete_missing(Product, shop.id, seen[Product])
                totals["variants_deleted"] = delete_missing(Variant, shop.id, seen[Variant])
                if on_storefront(shop.id) != visible:
                    serving.invalidate(shop.id)
        totals["policies"] = sync_policies(client, shop)
        run.stage = "embedding products"
        db.session.commit()
        totals["products_embedded"] = embed_products(shop.id)
        run.counts = dict(totals)
        run.status, run.stage, run.progress = "succeeded", "done", 1.0
    except Exception as exc:
        db.session.rollback()
        run.status, run.error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        run.finished_at = utcnow()
        db.session.commit()
    return run
