"""`GET /proxy/recommendations` through a signed App Proxy request: forgeries, bad input, the fallback
ranking, and the model path (a tiny GGUF under a candidate grammar) — always real, sellable products."""

import time

import pytest

from shopify_app.models import ModelVersion, Product, db
from shopify_app.signatures import signed_app_proxy_query

from .conftest import API_SECRET


def proxy_url(shop: str, secret: str = API_SECRET, timestamp: float | None = None, **params) -> str:
    return "/proxy/recommendations?" + signed_app_proxy_query(shop, secret, timestamp, **params)


def sellable(product: Product) -> bool:
    return product.status == "ACTIVE" and any(v.available_for_sale and v.inventory_quantity > 0
                                               for v in product.variants)


def test_forged_or_stale_signatures_are_401(client, installed_shop, store):
    product_id = store.products[0].id
    assert client.get(proxy_url(installed_shop.domain, secret="forger", product_id=product_id)).status_code == 401
    stale = proxy_url(installed_shop.domain, timestamp=time.time() - 300, product_id=product_id)
    assert client.get(stale).status_code == 401
    assert client.get(f"/proxy/recommendations?shop={installed_shop.domain}&product_id={product_id}").status_code == 401
    tampered = proxy_url(installed_shop.domain, product_id=product_id).replace("limit", "x") + "&limit=9"
    assert client.get(tampered).status_code == 401


def test_shop_without_pairwell_is_404(client):
    assert client.get(proxy_url("stranger.myshopify.com", product_id=1)).status_code == 404


@pytest.mark.parametrize("params, message", [
    ({"product_id": "abc"}, "numeric"),
    ({"product_id": "1"}, "Unknown product"),
    ({"limit": "0"}, "limit"),
    ({"limit": "11"}, "limit"),
    ({"cart": ",".join(["1"] * 51)}, "at most 50"),
    ({"cart": "1,x"}, "numeric"),
])
def test_bad_input_is_400_with_a_message(client, installed_shop, store, params, message):
    query = {"product_id": str(store.products[0].id), **params}
    response = client.get(proxy_url(installed_shop.domain, **query))
    assert response.status_code == 400 and message in response.json["message"]


def test_fallback_serves_real_sellable_co_purchases(client, installed_shop, store):
    viewing = next(p for p in store.products if p.item_type == "Backpacking Stove" and p.status == "ACTIVE")
    cart = next(p for p in store.products if p.item_type == "Cook Pot")
    response = client.get(proxy_url(installed_shop.domain, product_id=viewing.id, cart=str(cart.id), limit=6))
    body = response.json
    assert response.status_code == 200 and body["source"] == "fallback" and len(body["products"]) == 6
    ids = [p["id"] for p in body["products"]]
    assert len(set(ids)) == 6 and viewing.id not in ids and cart.id not in ids
    for item in body["products"]:
        product = db.session.get(Product, (installed_shop.id, item["id"]))
        assert sellable(product) and item["title"] == product.title and item["reason"]
        assert item["url"].endswith(f"/products/{product.handle}") and float(item["price"]) > 0
    # Co-purchase first: the stove's usual companions lead the list.
    top_types = {store.product(i).item_type for i in ids[:3]}
    assert top_types & {"Fuel Canister", "Waterproof Matches", "Titanium Spork", "Butane Lighter"}


def test_model_path_names_only_candidates_and_falls_back_when_the_host_fails(client, installed_shop, store,
                                                                              tiny_gguf, tmp_path):
    model = ModelVersion(shop_id=installed_shop.id, version=1, gguf_path=str(tiny_gguf), quantization="q8_0",
                         size_bytes=1, sha256="0" * 64, base_model="tiny", status="deployed")
    db.session.add(model)
    db.session.commit()
    viewing = store.products[10]
    body = client.get(proxy_url(installed_shop.domain, product_id=viewing.id, limit=4)).json
    assert body["source"] == "model" and len(body["products"]) == 4
    for item in body["products"]:  # an untrained model still cannot name anything but real candidates
        assert sellable(db.session.get(Product, (installed_shop.id, item["id"]))) and item["id"] != viewing.id

    assert client.get(proxy_url(installed_shop.domain, product_id=viewing.id, limit=4)).json["source"] == "cache"
    model.gguf_path = str(tmp_path / "gone.gguf")  # the model host is down: uncached requests still get products
    db.session.commit()
    body = client.get(proxy_url(installed_shop.domain, product_id=store.products[11].id, limit=4)).json
    assert body["source"] == "fallback" and len(body["products"]) == 4


def test_second_request_is_served_from_cache_until_the_catalog_changes(client, installed_shop, shopify, store):
    from shopify_app.sample_store.server import product_webhook_payload

    url = proxy_url(installed_shop.domain, product_id=store.products[3].id, limit=3)
    first, second = client.get(url).json, client.get(url).json
    assert first["source"] == "fallback" and second["source"] == "cache"
    assert second["products"] == first["products"]

    payload = product_webhook_payload(store.products[5])
    payload["updated_at"] = "2030-01-01T00:00:00Z"
    body, headers = shopify.signed_webhook("products/update", payload)
    client.post("/webhooks", data=body, headers=headers)
    assert client.get(proxy_url(installed_shop.domain, product_id=store.products[3].id, limit=3)).json["source"] \
        == "fallback"


def test_rate_limit_answers_429_with_retry_after(app, client, installed_shop, store):
    app.config["PROXY_LIMIT_PER_IP"] = 3
    codes = [client.get(proxy_url(installed_shop.domain, product_id=store.products[0].id)).status_code
             for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = client.get(proxy_url(installed_shop.domain, product_id=store.products[0].id))
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    other_ip = client.get(proxy_url(installed_shop.domain, product_id=store.products[0].id),
                          environ_base={"REMOTE_ADDR": "10.9.8.7"})
    assert other_ip.status_code == 200


def test_deploy_makes_a_verified_model_live_and_refuses_a_rejected_one(installed_shop, tiny_gguf):
    from shopify_app.models import TrainingRun
    from worker.pipeline import stage_deploy

    runs, models = [], []
    for version, status in ((1, "verified"), (2, "rejected"), (3, "verified")):
        run = TrainingRun(shop_id=installed_shop.id, status="succeeded")
        db.session.add(run)
        db.session.flush()
        models.append(ModelVersion(shop_id=installed_shop.id, training_run_id=run.id, version=version,
                                   gguf_path=str(tiny_gguf), quantization="q8_0", size_bytes=1, sha256="0" * 64,
                                   base_model="b", status=status))
        runs.append(run)
    db.session.add_all(models)
    db.session.commit()
    stage_deploy(runs[0])
    assert models[0].status == "deployed"
    stage_deploy(runs[1])
    assert models[1].status == "rejected" and runs[1].stage == "deploy refused" and models[0].status == "deployed"
    assert "refused" in models[1].metrics["deploy"]
    stage_deploy(runs[2])
    assert [m.status for m in models] == ["retired", "rejected", "deployed"]


def test_model_names_are_matched_exactly_then_fuzzily_and_misses_dropped(app, installed_shop, store, monkeypatch):
    from shopify_app import recommendations

    products = db.session.scalars(db.select(Product).where(Product.status == "ACTIVE").limit(4)).all()
    reply = "\n".join([
        f'{{"title": "{products[0].title}", "reason": "Exact"}}',
        f'{{"title": "{products[1].title.upper()}!", "reason": "Case and punctuation"}}',
        '{"title": "A Tent That Does Not Exist", "reason": "Invented"}',
        f'{{"title": "{products[0].title}", "reason": "Duplicate"}}',
    ])
    monkeypatch.setattr(recommendations.host_for(app), "chat", lambda *a, **k: reply)
    model = ModelVersion(shop_id=installed_shop.id, version=1, gguf_path="x", quantization="q8_0", size_bytes=1,
                         sha256="0", base_model="b")
    picks, misses = recommendations.model_picks(installed_shop, model, products[3], [], products[:3], 4)
    assert [p.product.id for p in picks] == [products[0].id, products[1].id] and misses == 1


def test_deploy_gate_scores_held_out_orders_and_refuses_a_worse_version_unless_forced(installed_shop, tiny_gguf):
    from shopify_app.models import TrainingRun
    from worker.pipeline import stage_deploy, stage_evaluate

    run = TrainingRun(shop_id=installed_shop.id, status="succeeded")
    db.session.add(run)
    db.session.flush()
    model = ModelVersion(shop_id=installed_shop.id, training_run_id=run.id, version=1, gguf_path=str(tiny_gguf),
                         quantization="q8_0", size_bytes=1, sha256="0" * 64, base_model="b", status="verified",
                         metrics={})
    db.session.add(model)
    db.session.commit()
    gate = stage_evaluate(run)
    assert gate["cases"] > 20 and 0 <= gate["hr@4"] <= 1 and 0 < gate["co-purchase hr@4"] <= 1
    assert model.metrics["gate"] == gate and gate["reason"] and run.stage == "evaluated"
    # The verdict decides the deploy: a refused version stays verified until someone forces it.
    model.metrics = {**model.metrics, "gate": {**gate, "passed": False, "reason": "HR@4 0.100 is below co-purchase"}}
    db.session.commit()
    stage_deploy(run)
    assert model.status == "verified" and run.stage == "deploy refused"
    assert "evaluation gate: HR@4 0.100 is below co-purchase" in model.metrics["deploy"]
    stage_deploy(run, force=True)
    assert model.status == "deployed" and model.metrics["deploy"].startswith("forced past the evaluation gate")


def test_scores_below_needs_more_than_noise():
    import random

    from worker.evaluation import scores_below

    assert scores_below([0.0] * 50 + [1.0] * 10, [0.0] * 20 + [1.0] * 40, random.Random(0))
    assert not scores_below([1.0, 0.0] * 15, [0.0, 1.0] * 15, random.Random(0))  # equal rates
    assert not scores_below([0.0] * 29 + [1.0], [0.0] * 28 + [1.0] * 2, random.Random(0))  # one case apart
