"""The webhook topics Pairwell subscribes to (shopify.app.toml), and what a delivery of each must look like.

One table for the receiving endpoint and the worker: the keys a topic's payload must carry (a body signed for
one topic and re-sent under another does not pass), the key naming the shop where the payload has one (it
must match X-Shopify-Shop-Domain), and what of the payload processing needs. Only that is stored: a
customer's name, email, address or phone never reaches the database, and processed bodies are dropped."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from core.inputs import BadInput, shopify_id

MAX_AGE = timedelta(hours=12)  # Shopify retries for 4 hours; a delivery triggered far before that is a replay


def _pick(payload: dict, *keys: str) -> dict:
    return {k: payload[k] for k in keys if k in payload}


def _order(payload: dict) -> dict:
    customer = payload.get("customer") if isinstance(payload.get("customer"), dict) else {}
    return {**_pick(payload, "id", "name", "created_at", "updated_at", "fulfillment_status"),
            "customer": _pick(customer, "id"),
            "line_items": [_pick(item, "id", "product_id", "variant_id", "quantity")
                           for item in payload.get("line_items") or [] if isinstance(item, dict)]}


def _customer_request(payload: dict) -> dict:
    customer = payload.get("customer") if isinstance(payload.get("customer"), dict) else {}
    return {**_pick(payload, "shop_id", "shop_domain", "orders_requested", "orders_to_redact", "data_request"),
            "customer": _pick(customer, "id")}


@dataclass(frozen=True)
class Topic:
    required: tuple[str, ...]
    keep: Callable[[dict], dict]
    ids: tuple[str, ...] = ()  # keys that must hold a Shopify numeric id
    shop_key: str | None = None  # the payload's own word on which shop it is about


def _product(payload: dict) -> dict:
    return payload  # a product holds no personal data; the handler reads most of it


TOPICS: dict[str, Topic] = {
    "products/create": Topic(("id", "handle", "title", "updated_at"), _product, ids=("id",)),
    "products/update": Topic(("id", "handle", "title", "updated_at"), _product, ids=("id",)),
    "products/delete": Topic(("id",), lambda p: _pick(p, "id"), ids=("id",)),
    "orders/create": Topic(("id", "created_at", "line_items"), _order, ids=("id",)),
    "orders/updated": Topic(("id", "created_at", "line_items"), _order, ids=("id",)),
    "app/uninstalled": Topic(("id",), lambda p: _pick(p, "id", "myshopify_domain"), ids=("id",),
                             shop_key="myshopify_domain"),
    "app/scopes_update": Topic(("current",), lambda p: _pick(p, "id", "previous", "current", "updated_at")),
    "bulk_operations/finish": Topic(("admin_graphql_api_id", "status"),
                                    lambda p: _pick(p, "admin_graphql_api_id", "status", "error_code", "type")),
    "customers/data_request": Topic(("shop_id", "shop_domain", "customer"), _customer_request,
                                    shop_key="shop_domain"),
    "customers/redact": Topic(("shop_id", "shop_domain", "customer"), _customer_request, shop_key="shop_domain"),
    "shop/redact": Topic(("shop_id", "shop_domain"), lambda p: _pick(p, "shop_id", "shop_domain"),
                         shop_key="shop_domain"),
}


def stored_payload(topic: str, shop_domain: str, payload: object) -> dict:
    """What is kept of a delivery of `topic` from `shop_domain`, or BadInput saying why it is not one."""
    spec = TOPICS[topic]
    if not isinstance(payload, dict):
        raise BadInput(f"a {topic} body is a JSON object")
    missing = [key for key in spec.required if key not in payload]
    if missing:
        raise BadInput(f"this is not a {topic} body: it lacks {', '.join(missing)}")
    for key in spec.ids:
        shopify_id(payload[key], f"{topic} {key}")
    if spec.shop_key and payload.get(spec.shop_key) not in (None, shop_domain):
        raise BadInput(f"the body is about {str(payload[spec.shop_key])[:80]!r}, "
                       f"not X-Shopify-Shop-Domain {shop_domain}")
    return spec.keep(payload)


def check_triggered_at(value: str | None, now: datetime | None = None) -> None:
    """Refuse a delivery triggered long before Shopify's retry window (a replayed one)."""
    if not value:
        return
    try:
        triggered = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"X-Shopify-Triggered-At {value[:40]!r} is not a time") from None
    if triggered.tzinfo is None:
        triggered = triggered.replace(tzinfo=timezone.utc)
    if (now or datetime.now(timezone.utc)) - triggered > MAX_AGE:
        raise BadInput(f"the delivery was triggered at {value[:40]}, longer ago than Shopify retries")
