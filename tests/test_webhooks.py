"""`POST /webhooks` end to end: signatures, de-duplication, ordering, malformed bodies, compliance topics."""

import copy
from datetime import datetime, timedelta

from sqlalchemy import func, select

from core.models import Order, OrderLine, Product, Shop, SyncRun, Variant, WebhookDelivery, db
from sample_store.server import order_webhook_payload, product_webhook_payload


def post(client, shopify, topic, payload, **kwargs):
    body, headers = shopify.signed_webhook(topic, payload, **kwargs)
    response = client.post("/webhooks", data=body, headers=headers)
    db.session.expire_all()  # the handler ran in its own task context; read what it wrote
    return response


def count(model, *where):
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def later(timestamp: str, **delta) -> str:
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00")) + timedelta(**delta)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_forged_webhook_is_401_and_not_stored(client, shopify):
    body, headers = shopify.signed_webhook("products/update", {"id": 1}, secret="forger")
    response = client.post("/webhooks", data=body, headers=headers)
    assert response.status_code == 401
    body, headers = shopify.signed_webhook("products/update", {"id": 1})
    response = client.post("/webhooks", data=body + b" ", headers=headers)  # body altered after signing
    assert response.status_code == 401
    assert count(WebhookDelivery) == 0


def test_newer_product_update_applies_and_older_one_is_ignored(client, installed_shop, shopify, store):
    product = store.products[0]
    payload = product_webhook_payload(product)
    newer = copy.deepcopy(payload)
    newer["title"], newer["updated_at"] = "Renamed Tent", later(payload["updated_at"], hours=1)
    newer["variants"] = newer["variants"][:1]
    newer["variants"][0]["price"] = "1.50"
    assert post(client, shopify, "products/update", newer).json["status"] == "accepted"

    stored = db.session.get(Product, (installed_shop.id, product.id))
    assert stored.title == "Renamed Tent"
    assert [(v.id, str(v.price)) for v in stored.variants] == [(product.variants[0].id, "1.50")]

    older = copy.deepcopy(payload)
    older["title"] = "Stale Title"
    post(client, shopify, "products/update", older)
    db.session.expire_all()
    assert db.session.get(Product, (installed_shop.id, product.id)).title == "Renamed Tent"
    delivery = db.session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id.desc())).first()
    assert delivery.status == "processed" and delivery.result["ignored"] == "stale update"


def test_product_create_and_delete(client, installed_shop, shopify, store):
    payload = product_webhook_payload(store.products[1])
    payload["id"] = 999_001
    for variant in payload["variants"]:
        variant["id"] += 10**9
    post(client, shopify, "products/create", payload)
    assert count(Variant, Variant.product_id == 999_001) == len(payload["variants"])
    post(client, shopify, "products/delete", {"id": 999_001})
    assert count(Product, Product.id == 999_001) == 0
    assert count(Variant, Variant.product_id == 999_001) == 0


def test_orders_create_adds_order_and_lines(client, installed_shop, shopify, store):
    order = copy.deepcopy(store.orders[0])
    order.id, order.name = 123_456, "#99999"
    for offset, line in enumerate(order.lines):
        line.id = 777_000 + offset
    post(client, shopify, "orders/create", order_webhook_payload(order, store))
    stored = db.session.get(Order, (installed_shop.id, 123_456))
    assert stored.name == "#99999"
    assert sorted((line.product_id, line.quantity) for line in stored.lines) == \
        sorted((line.product_id, line.quantity) for line in order.lines)


def test_duplicate_delivery_is_processed_once(client, installed_shop, shopify, store):
    payload = product_webhook_payload(store.products[2])
    payload["updated_at"] = later(payload["updated_at"], hours=2)
    first = post(client, shopify, "products/update", payload, webhook_id="same-id")
    second = post(client, shopify, "products/update", payload, webhook_id="same-id")
    assert first.json["status"] == "accepted" and second.json == {"status": "duplicate"}
    assert count(WebhookDelivery) == 1


def test_malformed_json_with_valid_hmac_is_400_and_kept(client, shopify):
    body = b'{"id": 1, "title": '
    response = post(client, shopify, "products/update", body)
    assert response.status_code == 400 and "kept as delivery" in response.json["message"]
    delivery = db.session.scalars(select(WebhookDelivery)).one()
    assert delivery.status == "malformed" and delivery.raw_body == body


def test_unknown_topic_is_acknowledged_and_ignored(client, shopify):
    response = post(client, shopify, "carts/update", {"id": 5})
    assert response.status_code == 200 and response.json["status"] == "ignored"


def test_missing_headers_is_400(client, shopify):
    body, headers = shopify.signed_webhook("products/update", {"id": 1})
    del headers["X-Shopify-Webhook-Id"]
    assert client.post("/webhooks", data=body, headers=headers).status_code == 400


def test_handler_failure_keeps_the_delivery_and_answers_200(client, installed_shop, shopify):
    response = post(client, shopify, "products/update", {"id": 5})  # valid JSON, not a product
    assert response.status_code == 200
    delivery = db.session.scalars(select(WebhookDelivery)).one()
    assert delivery.status == "failed" and "KeyError" in delivery.error


def test_bulk_operation_finish_marks_a_failed_operation_on_its_run(client, installed_shop, shopify):
    run = SyncRun(shop_id=installed_shop.id, status="running", bulk_operation_ids=["gid://shopify/BulkOperation/77"])
    db.session.add(run)
    db.session.commit()
    post(client, shopify, "bulk_operations/finish", {
        "admin_graphql_api_id": "gid://shopify/BulkOperation/77", "completed_at": None,
        "created_at": "2026-11-01T00:00:00Z", "error_code": "access_denied", "status": "failed", "type": "query"})
    db.session.refresh(run)
    assert "access_denied" in run.error


def _customer_with_orders(store):
    customer = next(o.customer_id for o in store.orders if o.customer_id)
    return customer, [o.id for o in store.orders if o.customer_id == customer]


def test_customer_data_request_produces_that_customers_orders(client, installed_shop, shopify, store):
    customer, order_ids = _customer_with_orders(store)
    post(client, shopify, "customers/data_request", {
        "shop_id": 1, "shop_domain": shopify.shop, "orders_requested": order_ids,
        "customer": {"id": customer, "email": "x@example.com", "phone": None}, "data_request": {"id": 9}})
    delivery = db.session.scalars(select(WebhookDelivery)).one()
    assert delivery.status == "processed"
    assert sorted(o["id"] for o in delivery.result["orders"]) == sorted(order_ids)
    assert all(o["lines"] for o in delivery.result["orders"])


def test_customer_redact_deletes_their_orders(client, installed_shop, shopify, store):
    customer, order_ids = _customer_with_orders(store)
    total = count(Order)
    post(client, shopify, "customers/redact", {
        "shop_id": 1, "shop_domain": shopify.shop, "customer": {"id": customer, "email": None, "phone": None},
        "orders_to_redact": order_ids})
    assert count(Order, Order.customer_ref == str(customer)) == 0
    assert count(OrderLine, OrderLine.order_id.in_(order_ids)) == 0
    assert count(Order) == total - len(order_ids)


def test_shop_redact_deletes_every_row_of_the_shop(client, installed_shop, shopify):
    post(client, shopify, "products/update", {"id": 5})  # leaves a stored delivery for the shop
    post(client, shopify, "shop/redact", {"shop_id": 1, "shop_domain": shopify.shop})
    assert count(Shop) == 0
    for model in (Product, Variant, Order, OrderLine, SyncRun):
        assert count(model) == 0, model
    assert [d.topic for d in db.session.scalars(select(WebhookDelivery))] == ["shop/redact"]
