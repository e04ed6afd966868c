"""`POST /webhooks` end to end: signatures, de-duplication, ordering, malformed bodies, compliance topics."""

import copy
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from core.storage.models import Order, OrderLine, Product, Shop, SyncRun, Variant, WebhookDelivery, db
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


def test_unknown_topic_is_acknowledged_and_not_stored(client, shopify):
    response = post(client, shopify, "carts/update", {"id": 5})
    assert response.status_code == 200 and response.json["status"] == "ignored" and count(WebhookDelivery) == 0


def test_missing_headers_is_400(client, shopify):
    body, headers = shopify.signed_webhook("products/update", {"id": 1})
    del headers["X-Shopify-Webhook-Id"]
    assert client.post("/webhooks", data=body, headers=headers).status_code == 400


def test_handler_failure_keeps_the_delivery_and_answers_200(client, installed_shop, shopify, store):
    payload = product_webhook_payload(store.products[0])
    payload["updated_at"], payload["variants"][0]["price"] = "2030-01-01T00:00:00Z", "not a price"
    response = post(client, shopify, "products/update", payload)
    assert response.status_code == 200
    delivery = db.session.scalars(select(WebhookDelivery)).one()
    assert delivery.status == "failed" and "InvalidOperation" in delivery.error
    assert json.loads(delivery.raw_body)["id"] == payload["id"]  # kept until it is processed


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


def test_shop_redact_deletes_every_row_file_and_hosted_model_of_the_shop(app, client, installed_shop, shopify,
                                                                         store, tmp_path):
    from sample_store.ollama import OllamaDouble

    app.config["PAIRWELL_ARTIFACTS"] = str(tmp_path)
    training = tmp_path / shopify.shop / "run-1-20261126000000"
    (training / "dataset").mkdir(parents=True)
    (training / "dataset" / "train.jsonl").write_text('{"messages": []}\n')
    (training / "model-v1.q8_0.gguf").write_bytes(b"GGUF")
    other = tmp_path / "other-shop.myshopify.com"
    other.mkdir()
    ollama = OllamaDouble()
    try:
        app.config["OLLAMA_HOST"] = ollama.url
        ollama.models = {name: {"files": {}} for name in ("pairwell-outdoor-test:v1", "pairwell-outdoor-test:v2",
                                                         "pairwell-other:v1")}
        payload = product_webhook_payload(store.products[0])
        payload["variants"][0]["price"] = "not a price"
        post(client, shopify, "products/update", payload)  # leaves a stored (failed) delivery for the shop
        post(client, shopify, "shop/redact", {"shop_id": 1, "shop_domain": shopify.shop})
    finally:
        ollama.stop()
    assert count(Shop) == 0
    for model in (Product, Variant, Order, OrderLine, SyncRun):
        assert count(model) == 0, model
    assert [(d.topic, d.raw_body) for d in db.session.scalars(select(WebhookDelivery))] == [("shop/redact", b"")]
    assert not (tmp_path / shopify.shop).exists() and other.exists()  # training files gone, other shops' kept
    assert set(ollama.models) == {"pairwell-other:v1"}


def test_an_order_update_replaces_its_lines(client, installed_shop, shopify, store):
    order = next(o for o in store.orders if len(o.lines) >= 2)
    payload = order_webhook_payload(order, store)
    kept, dropped = payload["line_items"][0]["id"], payload["line_items"][1]["id"]
    payload["line_items"] = payload["line_items"][:1]
    payload["updated_at"] = later(payload["updated_at"], hours=1)
    assert post(client, shopify, "orders/updated", payload).json["status"] == "accepted"
    lines = set(db.session.scalars(select(OrderLine.id).where(OrderLine.order_id == order.id)))
    assert kept in lines and dropped not in lines


def test_an_order_update_carries_its_fulfilment_status(client, installed_shop, shopify, store):
    order = store.orders[0]
    payload = order_webhook_payload(order, store)
    payload["fulfillment_status"], payload["updated_at"] = None, later(payload["updated_at"], hours=1)
    post(client, shopify, "orders/updated", payload)
    assert db.session.get(Order, (installed_shop.id, order.id)).fulfillment_status == "UNFULFILLED"
    payload["fulfillment_status"], payload["updated_at"] = "fulfilled", later(payload["updated_at"], hours=1)
    post(client, shopify, "orders/updated", payload)
    assert db.session.get(Order, (installed_shop.id, order.id)).fulfillment_status == "FULFILLED"


def test_processed_bodies_are_dropped_and_personal_data_never_stored(client, installed_shop, shopify, store):
    order = next(o for o in store.orders if o.customer_id)
    payload = order_webhook_payload(order, store)
    payload["updated_at"] = later(payload["updated_at"], hours=1)
    payload["customer"] |= {"email": "jo@example.com", "first_name": "Jo", "phone": "+15550100"}
    payload["shipping_address"] = {"address1": "1 Main St", "name": "Jo Doe"}
    post(client, shopify, "orders/updated", payload)
    redact = {"shop_id": 1, "shop_domain": shopify.shop, "orders_to_redact": [order.id],
              "customer": {"id": order.customer_id, "email": "jo@example.com", "phone": "+15550100"}}
    post(client, shopify, "customers/redact", redact)
    stored = b"".join(d.raw_body for d in db.session.scalars(select(WebhookDelivery)))
    assert count(WebhookDelivery) == 2 and stored == b""  # processed: nothing of either body is kept
    assert count(Order, Order.id == order.id) == 0


def test_customer_redact_drops_waiting_deliveries_about_them(app, client, installed_shop, shopify, store,
                                                             monkeypatch):
    from worker import tasks

    order = next(o for o in store.orders if o.customer_id)
    someone_else = next(o for o in store.orders if o.customer_id and o.customer_id != order.customer_id)
    payload = order_webhook_payload(order, store)
    payload["customer"] |= {"email": "jo@example.com"}
    guest = order_webhook_payload(someone_else, store)
    guest["id"], guest["customer"] = 991_001, None  # a guest checkout names no customer
    monkeypatch.setattr(tasks, "enqueue_webhook", lambda delivery: None)  # the broker is down: it waits
    monkeypatch.setattr("shopify_app.webhooks.enqueue_webhook", lambda delivery: None)
    post(client, shopify, "orders/create", payload)
    waiting = db.session.scalars(select(WebhookDelivery)).one()
    assert waiting.status == "received" and b"jo@example.com" not in waiting.raw_body  # only what processing needs
    assert json.loads(waiting.raw_body)["customer"] == {"id": order.customer_id}
    post(client, shopify, "orders/create", order_webhook_payload(someone_else, store))
    post(client, shopify, "orders/create", guest)
    monkeypatch.undo()
    # kept as it came (malformed: about another shop), with the customer's id and email in it
    post(client, shopify, "customers/data_request", {
        "shop_id": 1, "shop_domain": "someone-else.myshopify.com", "orders_requested": [],
        "customer": {"id": order.customer_id, "email": "jo@example.com", "phone": None}, "data_request": {"id": 3}})
    post(client, shopify, "customers/redact", {"shop_id": 1, "shop_domain": shopify.shop, "orders_to_redact": [],
                                               "customer": {"id": order.customer_id, "email": "jo@example.com",
                                                            "phone": None}})
    kept = [(d.topic, d.status) for d in db.session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))]
    assert kept == [("orders/create", "received"), ("orders/create", "received"), ("customers/redact", "processed")]
    assert b"jo@example.com" not in b"".join(d.raw_body for d in db.session.scalars(select(WebhookDelivery)))


@pytest.mark.parametrize("topic, payload, message", [
    ("shop/redact", {"id": 1, "previous": [], "current": ["read_products"], "updated_at": "2026-11-01T00:00:00Z"},
     "lacks shop_id, shop_domain"),  # a scopes_update body re-sent under another topic
    ("shop/redact", {"shop_id": 1, "shop_domain": "someone-else.myshopify.com"}, "not X-Shopify-Shop-Domain"),
    ("customers/redact", {"shop_id": 1, "shop_domain": "someone-else.myshopify.com", "customer": {"id": 1}},
     "not X-Shopify-Shop-Domain"),
    ("app/uninstalled", {"id": 1, "myshopify_domain": "someone-else.myshopify.com"}, "not X-Shopify-Shop-Domain"),
    ("products/update", {"id": 5}, "lacks handle, title, updated_at"),
    ("orders/create", {"id": str(2**64), "created_at": "2026-01-01T00:00:00Z", "line_items": []}, "numeric"),
])
def test_a_body_must_be_its_topics_shape_and_about_the_signing_shop(client, installed_shop, shopify, topic,
                                                                    payload, message):
    response = post(client, shopify, topic, payload)
    assert response.status_code == 400 and message in response.json["message"]
    assert count(Shop) == 1 and installed_shop.is_installed  # nothing was deleted or uninstalled
    assert db.session.scalars(select(WebhookDelivery)).one().status == "malformed"


def test_a_replayed_delivery_triggered_long_ago_is_refused(client, installed_shop, shopify):
    body, headers = shopify.signed_webhook("shop/redact", {"shop_id": 1, "shop_domain": shopify.shop})
    headers["X-Shopify-Triggered-At"] = (datetime.now(timezone.utc) - timedelta(days=3)).isoformat()
    response = client.post("/webhooks", data=body, headers=headers)
    assert response.status_code == 400 and "longer ago" in response.json["message"]
    assert count(Shop) == 1 and count(WebhookDelivery) == 0


@pytest.mark.parametrize("header, value", [("X-Shopify-Hmac-Sha256", "é" * 44), ("X-Shopify-Webhook-Id", "x" * 300),
                                           ("X-Shopify-Triggered-At", "yesterday")])
def test_odd_headers_are_4xx_not_500(client, shopify, header, value):
    body, headers = shopify.signed_webhook("products/delete", {"id": 1})
    headers[header] = value
    assert 400 <= client.post("/webhooks", data=body, headers=headers).status_code < 500


def test_deeply_nested_body_is_400(client, shopify):
    body = b"[" * 100_000 + b"]" * 100_000
    response = post(client, shopify, "products/update", body)
    assert response.status_code == 400 and "deeper" in response.json["message"]


def test_webhooks_wait_for_the_broker_and_the_sweeper_hands_them_out(app, client, installed_shop, shopify, store):
    """Redis is down: Shopify still gets a quick 2xx once the delivery is stored, a retry is a duplicate, and
    the sweeper processes it exactly once when the broker is back."""
    from shopify_app import create_app
    from worker import tasks

    down = create_app({**app.config, "REDIS_URL": "redis://127.0.0.1:9/0"})  # a closed port
    payload = product_webhook_payload(store.products[0])
    payload["title"], payload["updated_at"] = "Sent While Redis Was Down", "2030-01-01T00:00:00Z"
    body, headers = shopify.signed_webhook("products/update", payload)
    started = time.monotonic()
    response = down.test_client().post("/webhooks", data=body, headers=headers)
    assert response.status_code == 200 and response.json["status"] == "accepted"
    assert time.monotonic() - started < 5.0
    assert down.test_client().post("/webhooks", data=body, headers=headers).json["status"] == "duplicate"
    app.extensions["celery"].set_current()  # back to the in-process app: the broker is "back"
    db.session.expire_all()
    delivery = db.session.scalars(select(WebhookDelivery)).one()
    assert delivery.status == "received"

    app.config["SWEEP_AFTER_SECONDS"] = 0  # the broker is back (in-process here): the next sweep sends it
    assert tasks.sweep.delay().get()["deliveries"] == 1
    db.session.expire_all()
    assert delivery.status == "processed" and delivery.raw_body == b""
    assert db.session.get(Product, (installed_shop.id, store.products[0].id)).title == "Sent While Redis Was Down"
    assert tasks.sweep.delay().get()["deliveries"] == 0  # exactly once


def test_the_sweeper_retries_a_failed_delivery_for_a_day(app, client, installed_shop, shopify, store, monkeypatch):
    from worker import tasks, webhooks

    def database_away(shop, payload, domain):
        raise ConnectionError("database away")

    payload = product_webhook_payload(store.products[0])
    payload["title"], payload["updated_at"] = "Applied On Retry", "2030-01-01T00:00:00Z"
    monkeypatch.setitem(webhooks.HANDLERS, "products/update", database_away)
    post(client, shopify, "products/update", payload)
    post(client, shopify, "products/update", {**payload, "title": "Too Old To Retry"})
    monkeypatch.undo()
    recent, old = db.session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)).all()
    assert recent.status == old.status == "failed"
    now = datetime.now(timezone.utc)
    recent.processed_at = old.processed_at = now - timedelta(minutes=11)
    old.received_at = now - timedelta(days=2)
    db.session.commit()
    assert tasks.sweep.delay().get()["deliveries"] == 1
    db.session.expire_all()
    assert (recent.status, old.status) == ("processed", "failed")
    assert db.session.get(Product, (installed_shop.id, store.products[0].id)).title == "Applied On Retry"
