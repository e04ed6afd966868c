"""A loopback stand-in for Shopify serving one sample store, in Shopify's documented shapes.

It speaks the OAuth token endpoint (token exchange with expiring offline tokens, refresh, authorization
code), the Admin GraphQL endpoint (bulk operations with a downloadable JSONL, cost-based throttling with a
real leaky bucket), and sends signed webhooks. Faults can be injected: a drained bucket, 429s, 5xx.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

import jwt
import requests
from flask import Flask, Response, abort, jsonify, redirect, request
from graphql import OperationDefinitionNode, parse
from graphql.error import GraphQLSyntaxError
from werkzeug.serving import WSGIRequestHandler, make_server

from core.config import API_VERSION, DEFAULT_SCOPES
from core.shopify.signatures import webhook_hmac

from .catalog import SHOP_POLICIES, SampleOrder, SampleProduct, SampleStore, generate_store

BUCKET_SIZE = 2000.0
RESTORE_RATE = 100.0
QUERY_COSTS = {"bulkOperationRunQuery": 10, "bulkOperation": 1, "shop": 1}
INVALID_TOKEN = "[API] Invalid API key or access token (unrecognized login or wrong password)"


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _gid(kind: str, number: int) -> str:
    return f"gid://shopify/{kind}/{number}"


# --- The shapes Shopify produces --------------------------------------------------------------------

def product_jsonl(product: SampleProduct, shop: str) -> list[dict]:
    """A product and its variants as bulk-operation JSONL objects (children carry `__parentId`)."""
    parent = _gid("Product", product.id)
    lines = [{
        "id": parent, "handle": product.handle, "title": product.title, "description": product.description,
        "productType": product.product_type, "vendor": product.vendor, "tags": product.tags,
        "status": product.status,
        # Null unless shoppers can reach it: active and published to the Online Store sales channel.
        "onlineStoreUrl": f"https://{shop}/products/{product.handle}" if product.on_storefront else None,
        "totalInventory": product.total_inventory, "updatedAt": _iso(product.updated_at),
        "featuredMedia": {"image": {"url": product.image_url, "altText": product.title}},
    }]
    lines += [{
        "id": _gid("ProductVariant", v.id), "title": v.title, "sku": v.sku, "price": str(v.price),
        "inventoryQuantity": v.inventory_quantity, "availableForSale": v.available_for_sale,
        "__parentId": parent,
    } for v in product.variants]
    return lines


def order_jsonl(order: SampleOrder) -> list[dict]:
    parent = _gid("Order", order.id)
    lines = [{
        "id": parent, "name": order.name, "createdAt": _iso(order.created_at), "updatedAt": _iso(order.updated_at),
        "displayFulfillmentStatus": order.fulfillment_status,
        "customer": {"id": _gid("Customer", order.customer_id)} if order.customer_id else None,
    }]
    lines += [{
        "id": _gid("LineItem", line.id), "quantity": line.quantity,
        "product": {"id": _gid("Product", line.product_id)}, "variant": {"id": _gid("ProductVariant", line.variant_id)},
        "__parentId": parent,
    } for line in order.lines]
    return lines


def product_webhook_payload(product: SampleProduct) -> dict:
    """The REST-shaped body of products/create and products/update."""
    image = {"id": product.id + 1, "product_id": product.id, "position": 1, "alt": product.title,
             "width": 1200, "height": 1200, "src": product.image_url,
             "admin_graphql_api_id": _gid("ProductImage", product.id + 1)}
    return {
        "admin_graphql_api_id": _gid("Product", product.id), "id": product.id,
        "title": product.title, "body_html": f"<p>{product.description}</p>", "vendor": product.vendor,
        "product_type": product.product_type, "handle": product.handle,
        "created_at": _iso(product.created_at), "updated_at": _iso(product.updated_at),
        "published_at": _iso(product.published_at) if product.published_at else None,  # null: off the Online Store
        "template_suffix": None, "published_scope": "web",
        "status": product.status.lower(), "tags": ", ".join(product.tags),
        "variants": [{
            "admin_graphql_api_id": _gid("ProductVariant", v.id), "id": v.id, "product_id": product.id,
            "title": v.title, "price": str(v.price), "sku": v.sku, "position": i + 1,
            "inventory_policy": "deny", "compare_at_price": None, "option1": v.title, "option2": None,
            "option3": None, "created_at": _iso(product.created_at), "updated_at": _iso(product.updated_at),
            "taxable": True, "barcode": None, "inventory_item_id": v.id + 1, "inventory_quantity": v.inventory_quantity,
            "inventory_management": "shopify", "requires_shipping": True,
        } for i, v in enumerate(product.variants)],
        "options": [{"name": product.variant_axis, "position": 1, "values": [v.title for v in product.variants]}],
        "images": [image], "image": image,
    }


REST_FULFILLMENT = {"FULFILLED": "fulfilled", "PARTIALLY_FULFILLED": "partial"}  # REST: null until shipped


def order_webhook_payload(order: SampleOrder, store: SampleStore) -> dict:
    """The REST-shaped body of orders/create (the fields this app reads, plus the usual neighbours)."""
    items = []
    for line in order.lines:
        product = store.product(line.product_id)
        variant = next(v for v in product.variants if v.id == line.variant_id)
        items.append({
            "admin_graphql_api_id": _gid("LineItem", line.id), "id": line.id, "product_id": line.product_id,
            "variant_id": line.variant_id, "quantity": line.quantity, "title": product.title,
            "variant_title": variant.title, "sku": variant.sku, "price": str(variant.price),
            "vendor": product.vendor, "requires_shipping": True, "taxable": True,
        })
    total = sum(float(i["price"]) * i["quantity"] for i in items)
    return {
        "admin_graphql_api_id": _gid("Order", order.id), "id": order.id, "name": order.name,
        "order_number": int(order.name.lstrip("#")), "created_at": _iso(order.created_at),
        "updated_at": _iso(order.updated_at), "currency": "USD", "total_price": f"{total:.2f}",
        "financial_status": "paid",
        "fulfillment_status": REST_FULFILLMENT.get(order.fulfillment_status),
        "customer": {"id": order.customer_id, "admin_graphql_api_id": _gid("Customer", order.customer_id)}
        if order.customer_id else None,
        "line_items": items,
    }


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass


class LoopbackServer:
    """A WSGI app served from a thread on a free 127.0.0.1 port: the sample Shopify, the storefront preview, and
    Pairwell itself in the browser tests and screenshots. A context manager, or start()/stop()."""

    def __init__(self, app):
        self.app = app
        self._server = None
        self._thread = None

    def start(self) -> str:
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True, request_handler=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self.origin

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._thread.join()
            self._server = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"


# --- The server ---------------------------------------------------------------------------------------

@dataclass
class _Token:
    shop: str
    scope: str
    expires_at: datetime | None


@dataclass
class _BulkOperation:
    id: str
    shop: str
    root: str
    created_at: datetime
    polls: int = 0
    status: str = "CREATED"
    body: bytes = b""
    object_count: int = 0


@dataclass
class _Bucket:
    available: float = BUCKET_SIZE
    updated: float = field(default_factory=time.monotonic)

    def level(self) -> float:
        now = time.monotonic()
        self.available = min(BUCKET_SIZE, self.available + (now - self.updated) * RESTORE_RATE)
        self.updated = now
        return self.available


class SampleShopify(LoopbackServer):
    """Shopify for one sample shop on 127.0.0.1. Use as a context manager or call start()/stop()."""

    def __init__(self, store: SampleStore | None = None, *, api_key: str, api_secret: str,
                 shop: str = "pairwell-demo.myshopify.com", app_url: str | None = None,
                 granted_scopes: str = DEFAULT_SCOPES, now: datetime | None = None):
        self.store = store or generate_store()
        self.api_key, self.api_secret, self.shop = api_key, api_secret, shop
        self.app_url = app_url
        self.granted_scopes = granted_scopes
        self.now = now  # the store's "today" for the 60-day order window; None means the real clock
        self.tokens: dict[str, _Token] = {}
        self.refresh_tokens: dict[str, tuple[str, datetime]] = {}
        self.codes: set[str] = set()
        self.operations: dict[str, _BulkOperation] = {}
        self.bucket = _Bucket()
        self.faults: list[tuple[int, float | None]] = []  # (HTTP status, Retry-After) for the next requests
        self.requests: list[str] = []  # what was asked, for tests: "token:<grant>", "graphql:<root field>"
        self.sent_webhooks: list[requests.Response] = []
        self._lock = threading.Lock()
        super().__init__(self._build_app())

    # what the Shopify admin and platform do
    def session_token(self, *, shop: str | None = None, lifetime: int = 60, secret: str | None = None,
                      audience: str | None = None, issued_at: float | None = None, claims: dict | None = None,
                      drop: tuple[str, ...] = (), algorithm: str = "HS256") -> str:
        """An App Bridge session token, as the admin hands it to the embedded app. For tests of the app's checks:
        `claims` adds or replaces claims, `drop` leaves claims out, `algorithm` signs otherwise ("none": unsigned)."""
        shop = shop or self.shop
        iat = int(issued_at if issued_at is not None else time.time())
        payload = {"iss": f"https://{shop}/admin", "dest": f"https://{shop}", "aud": audience or self.api_key,
                   "sub": "42", "exp": iat + lifetime, "nbf": iat, "iat": iat, "jti": str(uuid.uuid4()),
                   "sid": secrets.token_hex(16), **(claims or {})}
        for name in drop:
            payload.pop(name, None)
        key = None if algorithm == "none" else secret or self.api_secret
        body = json.dumps(payload, separators=(",", ":")).encode()  # as jwt.encode, minus its checks of iss & co.
        return jwt.api_jws.encode(body, key, algorithm=algorithm, headers={"typ": "JWT"})

    def authorization_code(self) -> str:
        code = secrets.token_hex(16)
        self.codes.add(code)
        return code

    def expire_access_tokens(self) -> None:
        """Pretend an hour went by: every access token lapses, refresh tokens stay valid."""
        for token in self.tokens.values():
            token.expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)

    def drain_bucket(self, debt_seconds: float = 0.0) -> None:
        """Spend the whole query-cost bucket (and `debt_seconds` of restoring beyond it), so the next query is
        THROTTLED however long the caller takes to send it."""
        with self._lock:
            self.bucket.level()
            self.bucket.available = -debt_seconds * RESTORE_RATE

    def fail_next(self, status: int, times: int = 1, retry_after: float | None = None) -> None:
        self.faults.extend([(status, retry_after)] * times)

    def signed_webhook(self, topic: str, payload: dict | bytes, *, webhook_id: str | None = None,
                       secret: str | None = None, shop: str | None = None) -> tuple[bytes, dict[str, str]]:
        """The body and headers of a webhook delivery, signed as Shopify signs them."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": webhook_hmac(body, secret or self.api_secret),
            "X-Shopify-Shop-Domain": shop or self.shop,
            "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
            "X-Shopify-Event-Id": str(uuid.uuid4()),
            "X-Shopify-Triggered-At": datetime.now(timezone.utc).isoformat(),
            "X-Shopify-API-Version": API_VERSION,
        }
        return body, headers

    def update_product(self, product_id: int, *, published: bool | None = None, status: str | None = None,
                       inventory: int | None = None, send: bool = False) -> dict:
        """A merchant's edit in the Shopify admin: take the product off the Online Store sales channel or put it
        back (`published`; its status stays as it is), set its status (ACTIVE, DRAFT, ARCHIVED), or set every
        variant's stock (`inventory`). Shopify moves `updated_at` and sends products/update: this returns that
        body (REST shape, `published_at` null while unpublished) and, with `send`, delivers it to `app_url`.
        The next bulk query shows the change as well (`onlineStoreUrl` null unless active and published)."""
        product = self.store.product(product_id)
        if published is not None:
            product.published = published
        if status is not None:
            if status not in ("ACTIVE", "DRAFT", "ARCHIVED"):
                raise ValueError(f"a product's status is ACTIVE, DRAFT or ARCHIVED, not {status!r}")
            product.status = status
        if inventory is not None:
            for variant in product.variants:
                variant.inventory_quantity = inventory
        product.updated_at += timedelta(seconds=1)
        payload = product_webhook_payload(product)
        if send:
            self.send_webhook("products/update", payload)
        return payload

    def unpublish(self, product_id: int, *, send: bool = False) -> dict:
        """The merchant takes the product off the Online Store (it stays ACTIVE): see `update_product`."""
        return self.update_product(product_id, published=False, send=send)

    def publish(self, product_id: int, *, send: bool = False) -> dict:
        """The merchant puts the product back on the Online Store: see `update_product`."""
        return self.update_product(product_id, published=True, send=send)

    def send_webhook(self, topic: str, payload: dict | bytes, **kwargs) -> requests.Response:
        body, headers = self.signed_webhook(topic, payload, **kwargs)
        response = requests.post(f"{self.app_url}/webhooks", data=body, headers=headers, timeout=30)
        self.sent_webhooks.append(response)
        return response

    # the HTTP side
    def _build_app(self) -> Flask:
        app = Flask("sample_shopify")
        app.add_url_rule("/admin/oauth/access_token", view_func=self._access_token, methods=["POST"])
        app.add_url_rule(f"/admin/api/{API_VERSION}/graphql.json", view_func=self._graphql, methods=["POST"])
        app.add_url_rule("/bulk/<name>.jsonl", view_func=self._bulk_file)
        app.add_url_rule("/admin/apps/pairwell", view_func=self._open_app)
        app.add_url_rule("/app-bridge.js", view_func=self._app_bridge)
        app.add_url_rule("/admin/session-token", view_func=self._fresh_session_token)
        return app

    APP_BRIDGE = """// The sample admin's App Bridge: what an embedded app uses of Shopify's (a session token, a toast).
(() => {
  const admin = new URL(document.currentScript.src).origin;
  window.shopify = {
    environment: { embedded: false, mobile: false },
    idToken: async () => (await (await fetch(`${admin}/admin/session-token`)).json()).token,
    toast: { show(message) { console.info(`toast: ${message}`); } },
  };
})();
"""

    def _app_bridge(self):
        """Stands in for cdn.shopify.com/shopifycloud/app-bridge.js in the demo and the browser tests."""
        return Response(self.APP_BRIDGE, mimetype="text/javascript")

    def _fresh_session_token(self):
        """The sample admin's answer to App Bridge's token request (the real one is a postMessage to the
        admin frame). Loopback only, for its one shop, and only to the app's own pages (CORS)."""
        if not self.app_url:
            abort(404)
        response = jsonify(token=self.session_token())
        response.headers["Access-Control-Allow-Origin"] = self.app_url.rstrip("/")
        return response

    def _open_app(self):
        """What the admin does when a merchant clicks the app: load it with a fresh session token."""
        if not self.app_url:
            abort(404)
        query = urlencode({"embedded": "1", "shop": self.shop, "id_token": self.session_token()})
        return redirect(f"{self.app_url}/?{query}")

    def _request_shop(self) -> str:
        shop = request.host.split(":")[0]
        if shop != self.shop:
            abort(404)
        return shop

    def _access_token(self):
        shop = self._request_shop()
        form = request.get_json(silent=True) or request.form
        grant = form.get("grant_type", "authorization_code")
        self.requests.append(f"token:{grant}")
        if form.get("client_id") != self.api_key or form.get("client_secret") != self.api_secret:
            return jsonify(error="invalid_client", error_description="Client credentials are invalid"), 400
        if grant == "urn:ietf:params:oauth:grant-type:token-exchange":
            try:
                claims = jwt.decode(form.get("subject_token", ""), self.api_secret, audience=self.api_key,
                                    algorithms=["HS256"], leeway=10,
                                    options={"require": ["iss", "dest", "aud", "exp", "nbf", "sub"]})
            except jwt.PyJWTError as exc:
                return jsonify(error="invalid_subject_token", error_description=str(exc)), 400
            if claims["dest"] != f"https://{shop}":
                return jsonify(error="invalid_subject_token", error_description="token is for another shop"), 400
            if form.get("requested_token_type") != "urn:shopify:params:oauth:token-type:offline-access-token":
                return jsonify(error="invalid_request", error_description="unsupported requested_token_type"), 400
        elif grant == "refresh_token":
            known = self.refresh_tokens.pop(form.get("refresh_token", ""), None)
            if known is None or known[1] <= datetime.now(timezone.utc):
                return jsonify(error="invalid_grant", error_description="refresh token is invalid or expired"), 400
            return jsonify(self._issue(shop, expiring=True))
        elif grant == "authorization_code":
            if form.get("code") not in self.codes:
                return jsonify(error="invalid_request",
                               error_description="The authorization code was not found or was already used"), 400
            self.codes.discard(form.get("code"))
        else:
            return jsonify(error="unsupported_grant_type"), 400
        return jsonify(self._issue(shop, expiring=form.get("expiring") in ("1", 1, True)))

    def _issue(self, shop: str, *, expiring: bool) -> dict:
        now = datetime.now(timezone.utc)
        token = "shpat_" + secrets.token_hex(16)
        body = {"access_token": token, "scope": self.granted_scopes}
        if expiring:
            # One refreshable token per app and shop: a new one retires the previous refresh token.
            self.refresh_tokens = {k: v for k, v in self.refresh_tokens.items() if v[0] != shop}
            refresh = "shprt_" + secrets.token_hex(16)
            self.refresh_tokens[refresh] = (shop, now + timedelta(days=90))
            body |= {"expires_in": 3600, "refresh_token": refresh, "refresh_token_expires_in": 7776000}
        self.tokens[token] = _Token(shop, self.granted_scopes,
                                    now + timedelta(seconds=3600) if expiring else None)
        return body

    def _graphql(self):
        shop = self._request_shop()
        if self.faults:
            status, retry_after = self.faults.pop(0)
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            return Response(json.dumps({"errors": "Exceeded 2 calls per second for api client."}
                                       if status == 429 else {"errors": "Internal Server Error"}),
                            status=status, headers=headers, content_type="application/json")
        token = self.tokens.get(request.headers.get("X-Shopify-Access-Token", ""))
        if token is None or token.shop != shop or (token.expires_at and token.expires_at <= datetime.now(timezone.utc)):
            return jsonify(errors=INVALID_TOKEN), 401
        payload = request.get_json(silent=True) or {}
        try:
            document = parse(payload.get("query") or "")
        except GraphQLSyntaxError as exc:
            return jsonify(errors=[{"message": exc.message, "extensions": {"code": "PARSE_ERROR"}}])
        operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
        root = operation.selection_set.selections[0].name.value
        self.requests.append(f"graphql:{root}")
        cost = QUERY_COSTS.get(root, 1)
        with self._lock:
            available = self.bucket.level()
            if available < cost:
                return jsonify(errors=[{"message": "Throttled", "extensions": {
                    "code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
                    extensions={"cost": self._cost(cost, None, available)})
            self.bucket.available -= cost
            available = self.bucket.available
        variables = payload.get("variables") or {}
        if root == "bulkOperationRunQuery":
            data = {root: self._run_bulk_query(shop, token, variables.get("query", ""))}
        elif root == "bulkOperation":
            data = {root: self._poll_bulk_operation(variables.get("id", ""))}
        elif root == "shop":
            data = {"shop": {"name": "Pairwell Outdoor Demo", "myshopifyDomain": shop, "currencyCode": "USD",
                             "shopPolicies": [
                {"type": kind, "title": kind.replace("_", " ").title(), "body": body}
                for kind, body in SHOP_POLICIES.items()]}}
        else:
            return jsonify(errors=[{"message": f"Field '{root}' doesn't exist on type 'QueryRoot'",
                                    "extensions": {"code": "undefinedField", "typeName": "QueryRoot",
                                                   "fieldName": root}}])
        return jsonify(data=data, extensions={"cost": self._cost(cost, cost, available)})

    @staticmethod
    def _cost(requested: int, actual: int | None, available: float) -> dict:
        return {"requestedQueryCost": requested, "actualQueryCost": actual, "throttleStatus": {
            "maximumAvailable": BUCKET_SIZE, "currentlyAvailable": int(available), "restoreRate": RESTORE_RATE}}

    def _run_bulk_query(self, shop: str, token: _Token, query: str) -> dict:
        try:
            inner = parse(query)
            root = inner.definitions[0].selection_set.selections[0].name.value
        except (GraphQLSyntaxError, IndexError, AttributeError) as exc:
            return self._bulk_refusal(["query"], f"Invalid bulk query: {exc}")
        if root not in ("products", "orders"):
            return self._bulk_refusal(["query"], f"Unsupported root field {root}")
        running = [op for op in self.operations.values() if op.shop == shop and op.status in ("CREATED", "RUNNING")]
        if len(running) >= 5:
            return self._bulk_refusal(None, "A maximum of 5 bulk queries can run at once for this app and shop.")
        operation = _BulkOperation(_gid("BulkOperation", len(self.operations) + 1), shop, root,
                                   datetime.now(timezone.utc))
        self.operations[operation.id] = operation
        lines = self._jsonl(root, shop, token.scope)
        operation.object_count = len(lines)
        operation.body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        return {"bulkOperation": {"id": operation.id, "status": operation.status}, "userErrors": []}

    @staticmethod
    def _bulk_refusal(field: list[str] | None, message: str) -> dict:
        return {"bulkOperation": None, "userErrors": [{"field": field, "message": message}]}

    def _jsonl(self, root: str, shop: str, scope: str) -> list[dict]:
        if root == "products":
            return [line for product in self.store.products for line in product_jsonl(product, shop)]
        scopes = set(scope.split(","))
        if not scopes & {"read_orders", "read_all_orders"}:
            return []
        since = (self.now or datetime.now(timezone.utc)) - timedelta(days=60)
        return [line for order in self.store.orders
                if "read_all_orders" in scopes or order.created_at >= since for line in order_jsonl(order)]

    def _poll_bulk_operation(self, operation_id: str) -> dict | None:
        operation = self.operations.get(operation_id)
        if operation is None:
            return None
        operation.polls += 1  # CREATED → RUNNING → COMPLETED over successive polls
        if operation.status == "CREATED":
            operation.status = "RUNNING"
        elif operation.status == "RUNNING":
            operation.status = "COMPLETED"
            self._notify_finished(operation)
        completed = operation.status == "COMPLETED"
        name = operation.id.rsplit("/", 1)[1]
        return {"id": operation.id, "status": operation.status, "errorCode": None,
                "objectCount": str(operation.object_count if completed else 0),
                "fileSize": str(len(operation.body)) if completed else None,
                "url": f"{self.origin}/bulk/{name}.jsonl" if completed and operation.body else None,
                "partialDataUrl": None}

    def _notify_finished(self, operation: _BulkOperation) -> None:
        if not self.app_url:
            return
        payload = {"admin_graphql_api_id": operation.id, "completed_at": _iso(datetime.now(timezone.utc)),
                   "created_at": _iso(operation.created_at), "error_code": None, "status": "completed",
                   "type": "query"}

        def deliver():
            try:
                self.send_webhook("bulk_operations/finish", payload)
            except requests.RequestException:
                pass  # the app is not listening (yet); Shopify would retry, the app polls anyway

        threading.Thread(target=deliver, daemon=True).start()

    def _bulk_file(self, name: str):
        operation = self.operations.get(_gid("BulkOperation", int(name))) if name.isdigit() else None
        if operation is None or operation.status != "COMPLETED":
            abort(404)
        return Response(operation.body, content_type="application/jsonl")
