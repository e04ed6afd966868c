"""With REDIS_URL set, work goes through a real Redis broker to a Celery worker instead of running in-process."""

import os
import time

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from sqlalchemy import select

from core.storage.models import SyncRun, WebhookDelivery, db
from sample_store.server import product_webhook_payload
from shopify_app import create_app

REDIS_URL = os.environ.get("TEST_REDIS_URL")
pytestmark = pytest.mark.skipif(not REDIS_URL, reason="needs TEST_REDIS_URL (make test starts a Redis)")


@pytest.fixture
def queued_app(app, installed_shop):
    """A second app on the same database whose tasks go to Redis (the shop is installed in-process first)."""
    queued = create_app({**app.config, "REDIS_URL": REDIS_URL})
    redis.Redis.from_url(REDIS_URL).flushdb()
    yield queued
    app.extensions["celery"].set_default()


def test_webhook_is_queued_then_processed_by_a_worker(queued_app, installed_shop, shopify, store):
    celery = queued_app.extensions["celery"]
    assert not celery.conf.task_always_eager
    payload = product_webhook_payload(store.products[0])
    payload["title"], payload["updated_at"] = "Queued Title", "2030-01-01T00:00:00Z"
    body, headers = shopify.signed_webhook("products/update", payload)

    response = queued_app.test_client().post("/webhooks", data=body, headers=headers)
    assert response.json["status"] == "accepted"
    assert redis.Redis.from_url(REDIS_URL).llen("default") == 1  # waiting in the broker, not yet applied
    with queued_app.app_context():
        assert db.session.scalars(select(WebhookDelivery)).one().status == "received"

    with start_worker(celery, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        for _ in range(100):
            with queued_app.app_context():
                if db.session.scalars(select(WebhookDelivery)).one().status == "processed":
                    break
            time.sleep(0.1)
    with queued_app.app_context():
        delivery = db.session.scalars(select(WebhookDelivery)).one()
        assert delivery.status == "processed" and delivery.result["product"] == store.products[0].id


def test_sync_from_the_admin_api_is_queued(queued_app, installed_shop, shopify):
    token = shopify.session_token()
    response = queued_app.test_client().post("/api/sync-runs", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 202 and response.json["status"] == "queued"
    with queued_app.app_context():
        celery = queued_app.extensions["celery"]
        with start_worker(celery, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            for _ in range(200):
                db.session.expire_all()
                run = db.session.get(SyncRun, response.json["id"])
                if run.status in ("succeeded", "failed"):
                    break
                time.sleep(0.1)
        assert run.status == "succeeded", run.error
