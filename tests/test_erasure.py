"""Erasure reaches every copy: a unique marker is planted wherever a customer's words can go (their chat through the
signed App Proxy, an earlier `customers/data_request` export, a waiting delivery, dataset files and what training
made of them, the cache), `customers/redact` or `shop/redact` is sent as Shopify sends it, and then every column of
every table, every file under the artifacts folder, the cache store (in-process, and Redis when the suite has one)
and the logs are searched for the marker."""

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from core.model import datasets, pipeline
from core.recommendations import serving
from core.shopify.signatures import signed_app_proxy_query
from core.storage import cache
from core.storage.models import Base, Conversation, Order, Shop, TrainingRun, WebhookDelivery, db
from sample_store.catalog import MERCHANT_ASSISTANT, MERCHANT_POLICIES

from .conftest import API_SECRET

REDIS_URL = os.environ.get("TEST_REDIS_URL")


def erasure_redis_url() -> str:
    return REDIS_URL.rsplit("/", 1)[0] + "/7"  # a database of its own: the broker tests use /0


@pytest.fixture(params=["in-process", pytest.param("redis", marks=pytest.mark.skipif(
    not REDIS_URL, reason="needs TEST_REDIS_URL (make test starts a Redis)"))])
def cache_store(request, app):
    """The cache every request and handler of the test uses: the in-process store, or a real Redis."""
    if request.param == "in-process":
        app.extensions["pairwell_store"] = cache.LocalStore()
        yield app.extensions["pairwell_store"]
        return
    import redis

    client = redis.Redis.from_url(erasure_redis_url())
    client.flushdb()
    app.extensions["pairwell_store"] = cache.RedisStore(erasure_redis_url())
    yield app.extensions["pairwell_store"]
    client.flushdb()


def cache_entries(store) -> list[tuple[str, str]]:
    """Every key and value the store holds now."""
    if isinstance(store, cache.LocalStore):
        with store._lock:
            return [(key, str(value[0])) for key, value in store._data.items()]
    client = store._redis
    return [(key.decode(), (client.get(key) or b"").decode("utf-8", "replace"))
            for key in client.scan_iter() if client.type(key) == b"string"]


def database_text() -> str:
    """Every column of every row of every table, as text (JSON columns as JSON, binary ones decoded)."""
    db.session.expire_all()
    parts = []
    with db.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            for row in connection.execute(table.select()):
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        parts.append(bytes(value).decode("utf-8", "replace"))
                    elif isinstance(value, dict | list):
                        parts.append(json.dumps(value, ensure_ascii=False))
                    elif value is not None:
                        parts.append(str(value))
    return "\n".join(parts)


def files_holding(root: Path, marker: str) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and marker.encode() in path.read_bytes()]


@pytest.fixture
def shop(installed_shop, app, tmp_path):
    installed_shop.policies = {**installed_shop.policies, **MERCHANT_POLICIES}
    installed_shop.assistant = dict(MERCHANT_ASSISTANT)
    installed_shop.experiment = {"enabled": False}  # every shopper gets the served block (never the holdout's)
    db.session.commit()
    serving.invalidate(installed_shop.id)
    app.config["PAIRWELL_ARTIFACTS"] = str(tmp_path / "artifacts")
    return installed_shop


def chat(client, shop, message, session, customer=""):
    query = signed_app_proxy_query(shop.domain, API_SECRET, None, logged_in_customer_id=customer)
    response = client.post(f"/proxy/chat?{query}", json={"session_id": session, "message": message})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def block(client, shop, product_id, customer):
    query = signed_app_proxy_query(shop.domain, API_SECRET, None, logged_in_customer_id=customer,
                                   product_id=product_id, limit=4)
    return client.get(f"/proxy/recommendations?{query}")


def webhook(client, shopify, topic, payload):
    body, headers = shopify.signed_webhook(topic, payload)
    response = client.post("/webhooks", data=body, headers=headers)
    db.session.expire_all()
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def build(shop) -> Path:
    """A pipeline run's build_datasets stage, as `pairwell dataset` runs it: the run stays `running`."""
    run = TrainingRun(shop_id=shop.id, status="running")
    db.session.add(run)
    db.session.commit()
    pipeline.stage_build_datasets(run)
    return Path(run.artifact_dir)


def a_customer_with_orders(shop) -> tuple[str, list[int]]:
    customer = db.session.scalars(select(Order.customer_ref).where(
        Order.shop_id == shop.id, Order.customer_ref.is_not(None)).order_by(Order.customer_ref)).first()
    orders = db.session.scalars(select(Order.id).where(Order.shop_id == shop.id,
                                                       Order.customer_ref == customer)).all()
    return customer, list(orders)


def plant(client, shopify, shop, monkeypatch, marker: str) -> dict:
    """The customer's words everywhere they can go; returns what the checks need."""
    customer, orders = a_customer_with_orders(shop)
    guest_run = build(shop)  # before the customer spoke: holds none of their words
    chat(client, shop, "Is there free shipping?", "guest-session-0001")
    chat(client, shop, f"How long does shipping take to {marker}ville?", "customer-session-01", customer)
    chat(client, shop, f"Where is my order? Ask {marker} at the door.", "customer-session-01", customer)
    customer_body = {"id": int(customer), "email": f"{marker}@example.com", "phone": "+15550100"}
    webhook(client, shopify, "customers/data_request", {
        "shop_id": 1, "shop_domain": shop.domain, "orders_requested": orders, "customer": customer_body,
        "data_request": {"id": 9}})
    with monkeypatch.context() as broker_down:  # a second request waits, stored, for the broker
        broker_down.setattr("shopify_app.webhooks.enqueue_webhook", lambda delivery: None)
        webhook(client, shopify, "customers/data_request", {
            "shop_id": 1, "shop_domain": shop.domain, "orders_requested": orders, "customer": customer_body,
            "data_request": {"id": 10}})
    customer_run = build(shop)
    for derived in ("train/checkpoint", "train/adapter", "merged"):  # what training and export leave there
        (customer_run / derived).mkdir(parents=True)
        (customer_run / derived / "weights.safetensors").write_bytes(b"weights")
    (customer_run / "model-v1.q8_0.gguf").write_bytes(b"GGUF")
    legacy_run = customer_run.with_name("run-999-20260101000000")  # written before examples named their talk
    (legacy_run / "dataset").mkdir(parents=True)
    for name in ("train.jsonl", "eval.jsonl"):
        rows = [json.loads(text) for text in (customer_run / "dataset" / name).open()]
        (legacy_run / "dataset" / name).write_text("".join(
            json.dumps({k: v for k, v in row.items() if k != "conversation"}) + "\n" for row in rows))
    product = int(db.session.scalars(select(Order).where(Order.shop_id == shop.id, Order.customer_ref == customer))
                  .first().lines[0].product_id)
    assert block(client, shop, product, customer).status_code == 200
    return {"customer": customer, "orders": orders, "guest_run": guest_run, "customer_run": customer_run,
            "legacy_run": legacy_run, "product": product}


def customer_block_key(shop, planted) -> str:
    """The key the storefront would look the customer's block up under now."""
    return serving.cache_key(shop.id, planted["product"], [], 4, "served", "complementary",
                                     planted["customer"])


def test_customers_redact_erases_every_copy_of_their_words(app, client, shopify, shop, cache_store, monkeypatch,
                                                           caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    marker = f"Zq{uuid.uuid4().hex[:12]}"
    artifacts = tmp_path / "artifacts"
    planted = plant(client, shopify, shop, monkeypatch, marker)
    customer, customer_run = planted["customer"], planted["customer_run"]

    # Planted: in the conversation, the data request's export, the datasets built after, the customer's block.
    assert marker in database_text()
    export = db.session.scalars(select(WebhookDelivery).where(WebhookDelivery.topic == "customers/data_request",
                                                              WebhookDelivery.status == "processed")).one()
    assert marker in json.dumps(export.result)
    assert f"{marker}@example.com" not in database_text()  # never stored: the body is cut to the ids at receipt
    holding = files_holding(artifacts, marker)
    assert customer_run / "dataset" / "train.jsonl" in holding or customer_run / "dataset" / "eval.jsonl" in holding
    assert any(planted["legacy_run"] in path.parents for path in holding)
    assert not files_holding(planted["guest_run"], marker)
    assert serving.cached(customer_block_key(shop, planted)) is not None  # their own block, cached

    webhook(client, shopify, "customers/redact", {
        "shop_id": 1, "shop_domain": shop.domain,
        "customer": {"id": int(customer), "email": f"{marker}@example.com", "phone": "+15550100"},
        "orders_to_redact": planted["orders"]})

    redact = db.session.scalars(select(WebhookDelivery).where(WebhookDelivery.topic == "customers/redact")).one()
    assert redact.status == "processed", redact.error
    assert marker not in database_text()
    assert not files_holding(artifacts, marker)
    assert not [entry for entry in cache_entries(cache_store) if marker in entry[0] or marker in entry[1]]
    assert marker not in caplog.text

    # The rows: their conversations and orders gone, a guest's kept; every delivery about them gone or emptied.
    assert db.session.query(Conversation).filter_by(customer_ref=customer).count() == 0
    assert db.session.query(Conversation).filter_by(customer_ref="").count() == 1
    assert db.session.query(Order).filter_by(customer_ref=customer).count() == 0
    deliveries = db.session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)).all()
    assert [(d.topic, d.status) for d in deliveries if d.topic.startswith("customers/")] == [
        ("customers/data_request", "processed"), ("customers/redact", "processed")]  # the waiting one dropped
    assert deliveries[0].result == {"erased": "customers/redact"} and deliveries[0].raw_body == b""
    assert not [d for d in deliveries if customer in (d.raw_body or b"").decode() + json.dumps(d.result)]
    # The files: datasets holding their words and what training made of them gone, the GGUF kept; others kept.
    assert not (customer_run / "dataset").exists() and not (customer_run / "train").exists()
    assert not (customer_run / "merged").exists() and (customer_run / "model-v1.q8_0.gguf").exists()
    assert not (planted["legacy_run"] / "dataset").exists()
    assert (planted["guest_run"] / "dataset" / "train.jsonl").exists()
    assert redact.result["runs_cleared"] == 2 and redact.result["runs_cancelled"] == 1
    run = db.session.scalars(select(TrainingRun).where(TrainingRun.artifact_dir == str(customer_run))).one()
    assert run.cancel_requested  # a run still going on that dataset stops
    # The cache: their block is not found again.
    assert serving.cached(customer_block_key(shop, planted)) is None
    # A later build has none of it, and works.
    assert marker not in "".join(p.read_text() for p in build(shop).rglob("*.jsonl"))


def test_shop_redact_erases_everything_of_the_shop(app, client, shopify, shop, cache_store, monkeypatch, caplog,
                                                   tmp_path):
    caplog.set_level(logging.DEBUG)
    marker = f"Zq{uuid.uuid4().hex[:12]}"
    artifacts = tmp_path / "artifacts"
    planted = plant(client, shopify, shop, monkeypatch, marker)
    chat(client, shop, f"Do you ship to {marker}ton?", "guest-session-0002")
    upload = client.post("/api/conversations/import?format=csv",
                         data=f"question,answer\nDo you ship to {marker}?,Yes.\n".encode(),
                         headers={"Authorization": f"Bearer {shopify.session_token()}"})
    assert upload.status_code == 201, upload.json
    assert files_holding(datasets.uploads_dir(shop), marker)
    other = artifacts / "other-shop.myshopify.com"
    other.mkdir()
    (other / "keep.txt").write_text("another shop's file")
    assert marker in database_text() and files_holding(artifacts, marker)
    assert serving.cached(customer_block_key(shop, planted)) is not None
    shop_id, domain = shop.id, shop.domain

    webhook(client, shopify, "shop/redact", {"shop_id": 1, "shop_domain": domain})

    assert db.session.get(Shop, shop_id) is None
    assert marker not in database_text()
    assert not files_holding(artifacts, marker) and not (artifacts / domain).exists()
    assert (other / "keep.txt").exists()  # another shop's files stay
    assert not [entry for entry in cache_entries(cache_store) if marker in entry[0] or marker in entry[1]]
    assert marker not in caplog.text
    assert [d.topic for d in db.session.scalars(select(WebhookDelivery))] == ["shop/redact"]
    # nothing of the shop is served any more, cached or not
    app.extensions.pop("pairwell_installed_shops", None)
    assert block(client, shop, planted["product"], planted["customer"]).status_code == 404


def test_redaction_of_a_shop_without_files_or_rows_still_succeeds(app, client, shopify, shop, tmp_path):
    """A redaction retried, or of a customer with nothing stored: no error, nothing else touched."""
    shutil.rmtree(tmp_path / "artifacts", ignore_errors=True)
    webhook(client, shopify, "customers/redact", {
        "shop_id": 1, "shop_domain": shop.domain, "customer": {"id": 424242, "email": None, "phone": None},
        "orders_to_redact": []})
    delivery = db.session.scalars(select(WebhookDelivery)).one()
    assert delivery.status == "processed" and delivery.result["conversations_deleted"] == 0
