"""Full sync through the Admin GraphQL client against the sample Shopify: exact counts, idempotence,
reconciliation, the 60-day order window, and throttling, 429 and 5xx handling."""

import json
from collections import Counter

import pytest
from sqlalchemy import func, select

from core.shopify import shops
from core.shopify.ingest import ingest_jsonl
from core.shopify.shopify_api import ShopifyError
from core.shopify.sync import BULK_OPERATION_QUERY
from core.storage.models import Order, OrderLine, Product, SyncRun, Variant, db
from sample_store.server import order_jsonl, product_jsonl
from worker.tasks import enqueue_full_sync


def counts(shop_id):
    query = select(func.count()).select_from
    return {model.__tablename__: db.session.scalar(query(model).where(model.shop_id == shop_id))
            for model in (Product, Variant, Order, OrderLine)}


def snapshot(shop_id):
    """Every synced row, as plain tuples."""
    rows = {}
    for model in (Product, Variant, Order, OrderLine):
        columns = model.__table__.columns
        rows[model.__tablename__] = sorted(
            tuple(getattr(row, c.key) for c in columns)
            for row in db.session.scalars(select(model).where(model.shop_id == shop_id)))
    return rows


def test_install_syncs_the_whole_store_exactly(installed_shop, store):
    assert counts(installed_shop.id) == {"products": len(store.products), "variants": store.variant_count,
                                         "orders": len(store.orders), "order_lines": store.line_count}
    run = db.session.scalars(select(SyncRun)).one()
    assert run.status == "succeeded" and run.progress == 1.0 and len(run.bulk_operation_ids) == 2
    assert run.counts["order_lines"] == store.line_count
    product = db.session.get(Product, (installed_shop.id, store.products[0].id))
    assert product.title == store.products[0].title and product.image_url == store.products[0].image_url
    assert sorted(v.id for v in product.variants) == sorted(v.id for v in store.products[0].variants)
    order = db.session.get(Order, (installed_shop.id, store.orders[0].id))
    assert order.created_at == store.orders[0].created_at


def test_resync_changes_nothing(installed_shop):
    before = snapshot(installed_shop.id)
    run = enqueue_full_sync(installed_shop)
    assert run.status == "succeeded"
    db.session.expire_all()
    assert snapshot(installed_shop.id) == before


def test_resync_removes_products_deleted_without_a_webhook(installed_shop, shopify, store):
    gone = shopify.store.products.pop()
    try:
        assert enqueue_full_sync(installed_shop).counts["products_deleted"] == 1
        assert db.session.get(Product, (installed_shop.id, gone.id)) is None
        assert counts(installed_shop.id)["products"] == len(store.products)
    finally:
        shopify.store.products.append(gone)


def test_without_read_all_orders_only_the_last_60_days_arrive(client, shopify, store):
    shopify.granted_scopes = "read_products,read_orders,write_app_proxy"
    shopify.now = max(o.created_at for o in store.orders)
    client.get(f"/?id_token={shopify.session_token()}")
    recent = [o for o in store.orders if (shopify.now - o.created_at).days < 60]
    assert 0 < len(recent) < len(store.orders)
    assert counts(shops.get_shop(shopify.shop).id)["orders"] == len(recent)


def test_throttled_query_waits_for_the_bucket_then_succeeds(installed_shop, shopify):
    client = shops.admin_client(installed_shop, sleep=lambda s: None)
    shopify.drain_bucket(debt_seconds=0.5)  # a slow test machine must not refill it before the query
    real_sleep = []
    client.sleep = lambda seconds: (real_sleep.append(seconds), __import__("time").sleep(seconds))
    assert client.execute(BULK_OPERATION_QUERY, {"id": "gid://shopify/BulkOperation/404"}) == {"bulkOperation": None}
    assert real_sleep and 0 < real_sleep[0] <= 1.0  # cost 1 at 100/s restore
    assert client.throttle_status["maximumAvailable"] == 2000.0


def test_429_retry_after_and_5xx_are_retried(installed_shop, shopify):
    waits = []
    client = shops.admin_client(installed_shop, sleep=waits.append)
    shopify.fail_next(429, retry_after=2.0)
    shopify.fail_next(503)
    shopify.fail_next(500)
    assert client.execute(BULK_OPERATION_QUERY, {"id": "gid://shopify/BulkOperation/404"}) == {"bulkOperation": None}
    assert waits[0] == 2.0 and waits[1:] == [1.0, 2.0]  # Retry-After honoured, then exponential backoff


def test_persistent_5xx_fails_the_sync_run_with_the_error(app, installed_shop, shopify):
    shopify.fail_next(500, times=50)
    app.config["ADMIN_API_MAX_ATTEMPTS"] = 2
    run = enqueue_full_sync(installed_shop)
    assert run.status == "failed" and "still failing after 2 attempts" in run.error
    assert run.finished_at is not None


def test_invalid_token_is_an_error_not_a_retry(installed_shop, shopify):
    shopify.tokens.clear()
    with pytest.raises(ShopifyError) as error:
        shops.admin_client(installed_shop).execute(BULK_OPERATION_QUERY, {"id": "x"})
    assert error.value.status == 401


def test_jsonl_streams_in_batches_with_children_across_batch_edges(app, installed_shop, store):
    lines = [json.dumps(obj) for p in store.products[:20] for obj in product_jsonl(p, "x.myshopify.com")]
    lines += [json.dumps(obj) for o in store.orders[:50] for obj in order_jsonl(o)]
    batches = []
    result, seen = ingest_jsonl(iter(lines), installed_shop.id, batch_size=7,
                                on_batch=lambda c: batches.append(sum(c.values())))
    assert sum(result.values()) == len(lines) and len(batches) == -(-len(lines) // 7)
    assert batches == sorted(batches)  # progress only grows
    assert result == Counter(products=20, variants=sum(len(p.variants) for p in store.products[:20]),
                             orders=50, order_lines=sum(len(o.lines) for o in store.orders[:50]))
    assert seen[Product] == {p.id for p in store.products[:20]}


def test_sync_brings_shopify_policies_and_keeps_merchant_ones(client, shopify):
    from sample_store.catalog import SHOP_POLICIES

    client.get(f"/?id_token={shopify.session_token()}")
    shop = shops.get_shop(shopify.shop)
    assert "60 days" in shop.policies["returns"] and "<p>" not in shop.policies["returns"]
    assert set(shop.policies) == {"shipping", "returns"} and len(SHOP_POLICIES) == 2
    token = {"Authorization": f"Bearer {shopify.session_token()}"}
    response = client.put("/api/policies", json={"payment": "Cards and PayPal."}, headers=token)
    assert response.status_code == 200
    assert client.put("/api/policies", json={"warranty": "x"}, headers=token).status_code == 400
    assert client.put("/api/policies", data="not json", headers=token).status_code == 400
    enqueue_full_sync(shop)
    db.session.refresh(shop)
    assert shop.policies["payment"] == "Cards and PayPal." and "shipping" in shop.policies
