"""What the storefront and the admin do when a dependency fails or the input is hostile: Redis, the database
or the model host away, numbers out of range, non-ASCII signatures, spoofed forwarding headers, missing
secrets. Always a 2xx with real products, or a 4xx/503 with a sentence: never a 500 or a trace."""

import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from core.config import ROOT, from_env, production_problems
from core.shopify import shops
from core.shopify.signatures import signed_app_proxy_query
from core.storage import cache
from core.storage.models import ModelVersion, StorefrontEvent, TrainingRun, db
from sample_store.ollama import OllamaDouble
from shopify_app import analytics, create_app

from .conftest import API_SECRET
from .test_proxy import proxy_url

CLOSED_PORT = "redis://127.0.0.1:9/0"


def events_url(shop: str) -> str:
    return "/proxy/events?" + signed_app_proxy_query(shop, API_SECRET)


def database_away(*args, **kwargs):
    raise OperationalError("SELECT", {}, Exception("could not connect to server"))


# --- Redis -------------------------------------------------------------------------------------------------

def test_redis_down_still_answers_limits_and_caches_in_process(app, installed_shop, store):
    down = create_app({**app.config, "REDIS_URL": CLOSED_PORT})
    app.extensions["celery"].set_current()
    client = down.test_client()
    url = proxy_url(installed_shop.domain, product_id=store.products[0].id, limit=4)
    with down.app_context():
        first = client.get(url)
        second = client.get(url)
    assert first.status_code == second.status_code == 200
    assert first.json["source"] == "fallback" and len(first.json["products"]) == 4
    assert second.json["cached"]  # the in-process cache stood in for Redis
    down.config["PROXY_LIMIT_PER_IP"] = 3
    with down.app_context():
        codes = [client.get(url).status_code for _ in range(3)]
    assert codes[-1] == 429  # and so did the in-process limits


def test_the_in_process_cache_honours_each_entrys_lifetime():
    now = [0.0]
    store = cache.LocalStore(timer=lambda: now[0])
    store.set("fallback", "x", ttl=60)
    store.set("model", "y", ttl=86400)
    now[0] = 61.0
    assert store.get("fallback") is None and store.get("model") == "y"


# --- The database ------------------------------------------------------------------------------------------

def test_database_away_serves_the_cache_or_an_empty_block_never_a_500(client, installed_shop, store, monkeypatch):
    cached = proxy_url(installed_shop.domain, product_id=store.products[0].id, limit=4)
    assert client.get(cached).status_code == 200  # remembered: the shop id and this reply
    monkeypatch.setattr(db.session, "get", database_away)
    monkeypatch.setattr(db.session, "scalars", database_away)
    monkeypatch.setattr(shops, "get_shop", database_away)
    again = client.get(cached)
    assert again.status_code == 200 and again.json["cached"] and len(again.json["products"]) == 4
    fresh = client.get(proxy_url(installed_shop.domain, product_id=store.products[1].id, limit=4))
    assert fresh.status_code == 503 and fresh.json["products"] == [] and fresh.headers["Retry-After"]
    assert "Traceback" not in fresh.get_data(as_text=True)
    client.application.extensions["pairwell_installed_shops"].clear()  # a process that never saw the shop
    unknown = client.get(cached)
    assert unknown.status_code == 503 and "retry" in unknown.json["message"]


def test_database_away_the_chat_is_503_never_a_500(client, installed_shop, monkeypatch):
    chat = "/proxy/chat?" + signed_app_proxy_query(installed_shop.domain, API_SECRET)
    assert client.post(chat, json={"session_id": "session-0123456789", "message": "hi"}).status_code == 200
    monkeypatch.setattr(db.session, "get", database_away)
    response = client.post(chat, json={"session_id": "session-0123456789", "message": "hi"})
    assert response.status_code == 503 and response.headers["Retry-After"] and response.json["message"]
    assert "Traceback" not in response.get_data(as_text=True)


def test_event_beacons_do_not_wait_for_the_database(app, client, installed_shop, monkeypatch):
    events = {"events": [{"kind": "impression", "viewed_product_id": "11", "shown": 4, "source": "model"}]}
    writer = analytics.writer()
    monkeypatch.setattr(analytics.db.session, "execute", database_away)
    started = time.monotonic()
    responses = [client.post(events_url(installed_shop.domain), json=events) for _ in range(10)]
    assert all(r.status_code == 202 for r in responses) and time.monotonic() - started < 2.0
    assert not writer.flush(timeout=0.5)  # waiting in memory while the database is away
    monkeypatch.undo()
    assert writer.flush(timeout=10)
    assert db.session.scalar(select(func.count()).select_from(StorefrontEvent)) == 10  # none lost


# --- The model host ----------------------------------------------------------------------------------------

def deployed_on_ollama(app, shop, tmp_path) -> OllamaDouble:
    from core.model.pipeline import stage_deploy

    double = OllamaDouble()
    app.config["OLLAMA_HOST"] = double.url
    gguf = tmp_path / "v1.gguf"
    gguf.write_bytes(b"GGUF" + b"\1" * 64)
    run = TrainingRun(shop_id=shop.id)
    db.session.add(run)
    db.session.flush()
    db.session.add(ModelVersion(shop_id=shop.id, training_run_id=run.id, version=1, gguf_path=str(gguf),
                                quantization="q8_0", size_bytes=68, sha256="0" * 64, base_model="b",
                                status="verified", metrics={"gate": {"passed": True, "reason": "ok"}}))
    db.session.commit()
    stage_deploy(run)
    return double


def test_a_trickling_model_host_is_cut_off_at_the_budget(app, client, installed_shop, store, tmp_path):
    ollama = deployed_on_ollama(app, installed_shop, tmp_path)
    try:
        app.config["MODEL_BUDGET_SECONDS"] = 1.0
        body = client.get(proxy_url(installed_shop.domain, product_id=store.products[2].id, limit=4)).json
        assert body["source"] == "model"  # a prompt host answers through the model
        ollama.trickle = 0.5  # headers at once, then a byte every half second
        started = time.monotonic()
        response = client.get(proxy_url(installed_shop.domain, product_id=store.products[3].id, limit=4))
        assert time.monotonic() - started < 2.0
        assert response.status_code == 200 and response.json["source"] == "fallback"
    finally:
        ollama.stop()


def test_a_malformed_ollama_host_means_the_fallback(app, client, installed_shop, store, tmp_path):
    ollama = deployed_on_ollama(app, installed_shop, tmp_path)
    ollama.stop()
    app.config["OLLAMA_HOST"] = "http://[::1"
    app.extensions.pop("pairwell_ollama", None)
    response = client.get(proxy_url(installed_shop.domain, product_id=store.products[4].id, limit=4))
    assert response.status_code == 200 and response.json["source"] == "fallback"


# --- Readiness and stored embeddings -----------------------------------------------------------------------

def test_ready_only_once_the_encoder_and_the_live_model_are_loaded(app, client, installed_shop, tiny_gguf):
    from core.llm.model_hosts import embedded_host
    from core.readiness import warm_up

    embedded_host.retire(str(tiny_gguf))
    db.session.add(ModelVersion(shop_id=installed_shop.id, version=1, gguf_path=str(tiny_gguf), quantization="q8_0",
                                size_bytes=1, sha256="0" * 64, base_model="tiny", status="deployed"))
    db.session.commit()
    before = client.get("/ready")
    assert before.status_code == 503 and not any(before.json["models"].values())
    warm_up(app).join(timeout=120)
    after = client.get("/ready")
    assert after.status_code == 200 and after.json["encoder"] and all(after.json["models"].values())


def test_a_serving_process_reads_stored_product_embeddings(installed_shop, monkeypatch):
    from core import embeddings
    from core.recommendations.serving import load_shelf
    from core.storage.models import Product

    products = db.session.scalars(select(Product).where(Product.shop_id == installed_shop.id)).all()
    assert all(p.embedding and len(p.embedding) == 384 * 4 for p in products)  # computed at sync
    monkeypatch.setattr(embeddings, "_remembered", {})  # a fresh process: nothing in memory
    monkeypatch.setattr(embeddings, "encoder", lambda: pytest.fail("the encoder ran"))
    shelf = load_shelf(installed_shop)
    assert len(shelf.retrieval.ids) == len(shelf.catalog)


# --- Hostile input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("params", [
    {"product_id": "²"}, {"product_id": str(2**63)}, {"product_id": "9" * 5000}, {"product_id": "-1"},
    {"cart": "1,²"}, {"cart": str(2**64)}, {"limit": "²"}, {"limit": "9" * 50},
])
def test_shopper_numbers_are_checked_to_a_400(client, installed_shop, store, params):
    query = {"product_id": str(store.products[0].id), **params}
    response = client.get(proxy_url(installed_shop.domain, **query))
    assert response.status_code == 400 and response.json["message"]


def test_a_deeply_nested_events_body_is_400(client, installed_shop):
    response = client.post(events_url(installed_shop.domain), data=b"[" * 100_000)
    assert response.status_code in (400, 413)
    response = client.post(events_url(installed_shop.domain), data=b'{"events":' + b"[" * 500 + b"]" * 500 + b"}")
    assert response.status_code == 400 and "deeper" in response.json["message"]


def test_non_ascii_signatures_are_refused_not_crashed(client, installed_shop, store):
    url = proxy_url(installed_shop.domain, product_id=store.products[0].id)
    forged = url.split("&signature=")[0] + "&signature=%C3%A9%C3%A9"
    assert client.get(forged).status_code == 401
    callback = "/auth/callback?code=x&shop=a.myshopify.com&timestamp=1&state=s&hmac=%C3%A9"
    assert client.get(callback).status_code == 401


def test_a_shop_label_longer_than_dns_allows_is_400(client):
    assert client.get(f"/auth/install?shop={'a' * 64}.myshopify.com").status_code == 400
    assert client.get(f"/auth/install?shop={'a' * 63}.myshopify.com").status_code == 302


def test_admin_numbers_and_bodies_are_checked(client, installed_shop, shopify):
    token = {"Authorization": f"Bearer {shopify.session_token()}"}
    assert client.get("/api/storefront-metrics?days=²", headers=token).status_code == 400
    assert client.post("/api/training-runs/18446744073709551616/cancel", headers=token).status_code == 404
    nested = client.put("/api/policies", data=b'{"returns": ' + b"[" * 100_000 + b"}", headers=token)
    assert nested.status_code == 400
    assert client.put("/api/policies", json={"returns": "x" * 30_000}, headers=token).status_code == 400


# --- Limits, secrets, headers ------------------------------------------------------------------------------

def test_spoofed_forwarded_for_does_not_escape_the_shopper_limit(app, client, installed_shop, store):
    app.config["PROXY_LIMIT_PER_IP"] = 3
    url = proxy_url(installed_shop.domain, product_id=store.products[0].id)
    codes = [client.get(url, headers={"X-Forwarded-For": f"10.0.0.{n}, 203.0.113.7"}).status_code
             for n in range(5)]
    assert codes == [200, 200, 200, 429, 429]  # the left entries are the client's; the right one is vouched for
    other = client.get(url, headers={"X-Forwarded-For": "203.0.113.8"})
    assert other.status_code == 200


def test_a_signed_in_shopper_is_limited_as_that_customer(app, client, installed_shop, store):
    app.config["PROXY_LIMIT_PER_IP"] = 2
    signed_in = "/proxy/recommendations?" + signed_app_proxy_query(
        installed_shop.domain, API_SECRET, product_id=store.products[0].id, logged_in_customer_id="77")
    codes = [client.get(signed_in, headers={"X-Forwarded-For": f"198.51.100.{n}"}).status_code for n in range(3)]
    assert codes == [200, 200, 429]


def test_proxy_replies_are_not_sniffed(client, installed_shop, store):
    response = client.get(proxy_url(installed_shop.domain, product_id=store.products[0].id))
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_production_refuses_to_start_without_real_secrets(tmp_path):
    assert len(production_problems(from_env({}))) == 3
    real = {"SHOPIFY_API_KEY": "k", "SHOPIFY_API_SECRET": "s" * 32,
            "PAIRWELL_ENCRYPTION_KEY": "0" * 43 + "="}
    assert production_problems(from_env(real)) == []
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    started = subprocess.run([sys.executable, "-c", "import shopify_app.wsgi"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert started.returncode != 0 and "SHOPIFY_API_SECRET is not set" in started.stderr


def test_huge_timestamps_are_refused_not_overflowed(client, installed_shop, store):
    from urllib.parse import urlencode

    from core.shopify.signatures import app_proxy_signature, oauth_hmac

    params = [("code", "x"), ("shop", installed_shop.domain), ("state", "s"), ("timestamp", "9" * 5000)]
    with client.session_transaction() as session:
        session["oauth_state"] = "s"
    callback = client.get("/auth/callback?" + urlencode(params + [("hmac", oauth_hmac(params, API_SECRET))]))
    assert callback.status_code == 400 and "timestamp" in callback.json["message"]
    query = [("shop", installed_shop.domain), ("logged_in_customer_id", ""), ("path_prefix", "/apps/pairwell"),
             ("timestamp", "9" * 400), ("product_id", str(store.products[0].id))]
    signed = urlencode(query + [("signature", app_proxy_signature(query, API_SECRET))])
    assert client.get(f"/proxy/recommendations?{signed}").status_code == 401
