"""`POST /webhooks`: verify, record, de-duplicate, hand off. Work happens in the worker (`worker/webhooks.py`)."""

from __future__ import annotations

import json
import logging

from flask import Blueprint, abort, current_app, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core.models import WebhookDelivery, db
from core.signatures import is_valid_shop_domain, verify_webhook
from core.webhooks import TOPICS
from worker.tasks import enqueue_webhook

bp = Blueprint("webhooks", __name__)
log = logging.getLogger(__name__)


@bp.post("/webhooks")
def receive():
    body = request.get_data()
    if not verify_webhook(body, request.headers.get("X-Shopify-Hmac-Sha256"), current_app.config["SHOPIFY_API_SECRET"]):
        abort(401, "Webhook HMAC verification failed.")
    topic = request.headers.get("X-Shopify-Topic", "")
    shop = request.headers.get("X-Shopify-Shop-Domain", "")
    webhook_id = request.headers.get("X-Shopify-Webhook-Id", "")
    if not topic or not webhook_id or not is_valid_shop_domain(shop):
        abort(400, "Missing or invalid X-Shopify-Topic, X-Shopify-Shop-Domain or X-Shopify-Webhook-Id.")

    if db.session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.webhook_id == webhook_id)):
        return {"status": "duplicate"}
    delivery = WebhookDelivery(
        webhook_id=webhook_id, topic=topic, shop_domain=shop, raw_body=body, status="received",
        api_version=request.headers.get("X-Shopify-API-Version"),
        triggered_at=request.headers.get("X-Shopify-Triggered-At"),
    )
    try:
        json.loads(body)
    except ValueError as exc:
        delivery.status, delivery.error = "malformed", f"invalid JSON: {exc}"
    if topic not in TOPICS and delivery.status == "received":
        delivery.status = "ignored"
    db.session.add(delivery)
    try:
        db.session.commit()
    except IntegrityError:  # the same delivery raced in on another worker
        db.session.rollback()
        return {"status": "duplicate"}

    if delivery.status == "malformed":
        abort(400, f"Body is not valid JSON; kept as delivery {delivery.id} for inspection.")
    if delivery.status == "received":
        enqueue_webhook(delivery)
    return {"status": delivery.status if delivery.status == "ignored" else "accepted", "delivery": delivery.id}
