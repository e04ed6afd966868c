"""`POST /webhooks`: verify, check, store, hand off. Work happens in the worker (`worker/webhooks.py`).

Shopify gets its 2xx only once the delivery is durably stored; if handing it to the worker fails (the broker
is down), the stored delivery waits for the sweeper (`worker/tasks.py` `sweep`) instead of being lost."""

from __future__ import annotations

import json
import logging

from flask import Blueprint, abort, current_app, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from core.inputs import BadInput, load_json
from core.shopify.signatures import is_valid_shop_domain, verify_webhook
from core.shopify.webhooks import TOPICS, check_triggered_at, stored_payload
from core.storage.models import WebhookDelivery, db
from worker.tasks import enqueue_webhook

bp = Blueprint("webhooks", __name__)
log = logging.getLogger(__name__)
HEADER_LIMITS = {"X-Shopify-Topic": 64, "X-Shopify-Webhook-Id": 255, "X-Shopify-API-Version": 16,
                 "X-Shopify-Triggered-At": 64}


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
    too_long = [name for name, limit in HEADER_LIMITS.items() if len(request.headers.get(name, "")) > limit]
    if too_long:
        abort(400, f"Header {too_long[0]} is longer than {HEADER_LIMITS[too_long[0]]} characters.")
    if topic not in TOPICS:
        return {"status": "ignored"}  # nothing to do, so nothing is stored
    try:
        check_triggered_at(request.headers.get("X-Shopify-Triggered-At"))
    except BadInput as exc:
        abort(400, f"Refused: {exc}.")

    try:
        if db.session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.webhook_id == webhook_id)):
            return {"status": "duplicate"}
        delivery = WebhookDelivery(webhook_id=webhook_id, topic=topic, shop_domain=shop, status="received",
                                   api_version=request.headers.get("X-Shopify-API-Version"),
                                   triggered_at=request.headers.get("X-Shopify-Triggered-At"))
        try:
            delivery.raw_body = json.dumps(stored_payload(topic, shop, load_json(body, "the body"))).encode()
        except BadInput as exc:  # signed, so Shopify's: keep it as it came, for inspection
            delivery.raw_body, delivery.status, delivery.error = body, "malformed", str(exc)
        db.session.add(delivery)
        try:
            db.session.commit()
        except IntegrityError:  # the same delivery raced in on another worker
            db.session.rollback()
            return {"status": "duplicate"}
    except SQLAlchemyError as exc:
        db.session.rollback()
        log.error("webhook %s not stored: %s", webhook_id, exc)
        abort(503, "The delivery could not be stored; retry later.")

    if delivery.status == "malformed":
        abort(400, f"{delivery.error[:1].upper()}{delivery.error[1:]}; kept as delivery {delivery.id} for inspection.")
    enqueue_webhook(delivery)
    return {"status": "accepted", "delivery": delivery.id}
