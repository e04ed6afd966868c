"""The storefront preview speaks Shopify's shapes: the Ajax cart's JSON and errors, and an App Proxy that signs
the shopper's query as Shopify does, passes method and body through and strips cookies both ways."""

from __future__ import annotations

import threading
from urllib.parse import parse_qsl

import pytest
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from core.shopify.signatures import verify_app_proxy_query
from sample_store.storefront import StorefrontPreview

SECRET = "preview-secret"
SHOP = "outdoor-test.myshopify.com"


@pytest.fixture
def the_app():
    """A stand-in for Pairwell that records what reached `/proxy/*` and answers with a cookie."""
    app = Flask("recording")
    app.seen = []

    @app.route("/proxy/<path:rest>", methods=["GET", "POST"])
    def proxy(rest):
        app.seen.append({"path": rest, "method": request.method, "query": request.query_string.decode(),
                         "body": request.get_data(as_text=True), "cookie": request.headers.get("Cookie"),
                         "type": request.content_type})
        response = jsonify(ok=True, path=rest)
        response.status_code = 201 if request.method == "POST" else 200
        response.set_cookie("app_session", "secret")
        return response

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    app.url = f"http://127.0.0.1:{server.server_port}"
    yield app
    server.shutdown()
    thread.join()


@pytest.fixture
def preview(store, the_app):
    return StorefrontPreview(store, shop=SHOP, app_url=the_app.url, api_secret=SECRET)


def in_stock(store):
    return next((p, v) for p in store.products if p.status == "ACTIVE" for v in p.variants if v.inventory_quantity > 1)


def test_the_proxy_signs_the_shoppers_query_with_shopifys_parameters(preview, the_app):
    client = preview.app.test_client()
    client.set_cookie("cart", "shopper-cookie")
    answer = client.get("/apps/pairwell/recommendations?product_id=7&extra=1&extra=2&signature=forged&shop=evil")
    assert answer.status_code == 200 and answer.json == {"ok": True, "path": "recommendations"}
    assert "Set-Cookie" not in answer.headers  # Shopify strips the app's cookies
    seen = the_app.seen[-1]
    pairs = parse_qsl(seen["query"], keep_blank_values=True)
    assert verify_app_proxy_query(pairs, SECRET)
    query = dict(pairs)
    assert query["shop"] == SHOP and query["path_prefix"] == "/apps/pairwell" and query["logged_in_customer_id"] == ""
    assert query["product_id"] == "7" and [v for k, v in pairs if k == "extra"] == ["1", "2"]
    assert query["signature"] != "forged" and [k for k, _ in pairs].count("shop") == 1
    assert seen["cookie"] is None  # nor are the shopper's cookies forwarded


def test_the_proxy_passes_method_body_and_status_through_and_under_a_locale(preview, the_app):
    client = preview.app.test_client()
    answer = client.post("/fr/apps/pairwell/events", json={"events": [{"kind": "impression"}]})
    assert answer.status_code == 201
    seen = the_app.seen[-1]
    assert seen["path"] == "events" and seen["method"] == "POST" and seen["type"] == "application/json"
    assert seen["body"] == '{"events": [{"kind": "impression"}]}'


@pytest.mark.parametrize("mode, status", [("error", 500), ("empty", 200)])
def test_proxy_modes_misbehave_without_asking_the_app(preview, the_app, mode, status):
    preview.proxy_mode = mode
    answer = preview.app.test_client().get("/apps/pairwell/recommendations?product_id=7")
    assert answer.status_code == status and the_app.seen == []
    if mode == "empty":
        assert answer.json["products"] == []


def test_the_proxy_lives_where_the_merchant_put_it(store, the_app):
    preview = StorefrontPreview(store, shop=SHOP, app_url=the_app.url, api_secret=SECRET, proxy_path="/tools/pairs")
    client = preview.app.test_client()
    assert client.get("/apps/pairwell/recommendations?product_id=7").status_code == 404
    assert client.get("/tools/pairs").status_code == 404 and client.get("/tools/pairs/").status_code == 404
    for path in ("/tools/pairs/recommendations?product_id=7", "/fr/tools/pairs/recommendations?product_id=7"):
        assert client.get(path).json == {"ok": True, "path": "recommendations"}
        query = dict(parse_qsl(the_app.seen[-1]["query"], keep_blank_values=True))
        assert query["path_prefix"] == "/tools/pairs" and query["product_id"] == "7"
    assert preview.proxied == ["GET /tools/pairs/recommendations"] * 2
    assert client.get("/extensions/pairwell/assets/pairs-well-with.js").status_code == 200  # routes stay routes


def test_an_unreachable_app_is_a_502(store):
    preview = StorefrontPreview(store, shop=SHOP, app_url="http://127.0.0.1:9", api_secret=SECRET)
    assert preview.app.test_client().get("/apps/pairwell/recommendations").status_code == 502


def test_the_ajax_cart_adds_lines_and_answers_in_shopifys_shapes(preview, store):
    product, variant = in_stock(store)
    client = preview.app.test_client()
    line = client.post("/cart/add.js", json={"id": variant.id, "quantity": 1}).json
    assert (line["id"], line["variant_id"], line["product_id"], line["quantity"]) == (variant.id, variant.id,
                                                                                     product.id, 1)
    assert line["price"] == int(variant.price * 100) and line["title"] == f"{product.title} - {variant.title}"
    assert client.post("/cart/add.js", data={"id": str(variant.id), "quantity": "1"}).json["quantity"] == 2
    both = client.post("/cart/add.js", json={"items": [{"id": variant.id, "quantity": 1}, {"id": 1}]})
    assert both.status_code == 422  # a list is all or nothing
    assert client.post("/cart/add.js", json={"id": variant.id, "quantity": 0}).status_code == 422
    cart = client.get("/cart.js").json
    assert cart["item_count"] == 2 and cart["total_price"] == 2 * line["price"] and cart["currency"] == "USD"
    assert [(i["variant_id"], i["quantity"]) for i in cart["items"]] == [(variant.id, 2)]
    rendered = client.post("/cart/add.js", json={"id": variant.id, "sections": "cart-icon-bubble,cart-drawer",
                                                 "sections_url": "/products/x"}).json
    assert rendered["quantity"] == 3 and rendered["sections"]["cart-drawer"] is None  # a section this theme lacks
    assert rendered["sections"]["cart-icon-bubble"].startswith('<div id="shopify-section-cart-icon-bubble"')
    assert "data-cart-count>3<" in rendered["sections"]["cart-icon-bubble"]  # the cart after the add
    redirect = client.post("/cart/add", data={"id": variant.id, "quantity": 1})
    assert redirect.status_code == 303 and redirect.headers["Location"].endswith("/cart")
    assert client.get("/cart.js").json["item_count"] == 4


def test_the_ajax_cart_refuses_unknown_and_sold_out_variants_with_a_422(preview, store):
    client = preview.app.test_client()
    unknown = client.post("/cart/add.js", json={"id": 1, "quantity": 1})
    assert unknown.status_code == 422
    assert unknown.json == {"status": 422, "message": "Cart Error", "description": "Cannot find variant"}
    product, variant = next((p, v) for p in store.products if p.status == "ACTIVE" for v in p.variants
                            if not v.inventory_quantity)
    sold_out = client.post("/cart/add.js", json={"id": variant.id})
    assert sold_out.status_code == 422 and "sold out" in sold_out.json["description"]
    assert client.get("/cart.js").json["item_count"] == 0


def test_product_pages_render_the_real_block_and_embed_for_active_products_only(preview, store):
    client = preview.app.test_client()
    active = next(p for p in store.products if p.status == "ACTIVE")
    page = client.get(f"/products/{active.handle}").get_data(as_text=True)
    assert f'data-product-id="{active.id}"' in page and "data-pairwell-block" in page and "data-pairwell-chat" in page
    assert "/extensions/pairwell/assets/pairs-well-with.js" in page and "{%" not in page
    draft = next(p for p in store.products if p.status != "ACTIVE")
    assert client.get(f"/products/{draft.handle}").status_code == 404
    assert client.get("/extensions/pairwell/assets/pairs-well-with.css").status_code == 200
    index = client.get("/").get_data(as_text=True)
    assert f"/products/{active.handle}" in index and f"/products/{draft.handle}" not in index
