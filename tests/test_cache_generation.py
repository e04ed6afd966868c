"""A cached storefront reply carries the reply generation it was built at and is refused once the shop's
generation has moved, whichever process moved it and whether or not Redis was reachable then. The generation
lives in the database; the cache only holds replies."""

from __future__ import annotations

import os

import pytest

from core.recommendations import serving
from core.shopify.signatures import signed_app_proxy_query
from shopify_app import create_app
from tests.conftest import API_SECRET

REDIS_URL = os.environ.get("TEST_REDIS_URL")
CLOSED_PORT = "redis://127.0.0.1:9/0"  # nothing listens: every Redis call fails at once


def block(client, shop, product_id, **params) -> dict:
    url = "/proxy/recommendations?" + signed_app_proxy_query(shop.domain, API_SECRET, product_id=product_id,
                                                             limit=3, **params)
    response = client.get(url)
    assert response.status_code == 200, response.json
    return response.json


@pytest.fixture(params=["separate in-process caches",
                        pytest.param("shared Redis, down for the invalidating process", marks=pytest.mark.skipif(
                            not REDIS_URL, reason="needs TEST_REDIS_URL (make test starts a Redis)"))])
def web_and_worker(request, app, monkeypatch):
    """The web process that serves (and caches) blocks, and another process (a worker handling a webhook)
    that invalidates them, sharing only the database, or also a Redis the worker cannot reach just then."""
    monkeypatch.setattr(serving, "GENERATION_TTL_SECONDS", 0.0)  # the bump is seen on the next request
    if request.param.startswith("shared"):
        web = create_app({**app.config, "REDIS_URL": REDIS_URL})
        worker = create_app({**app.config, "REDIS_URL": CLOSED_PORT})
    else:
        web, worker = app, create_app(dict(app.config))
    return web, worker


@pytest.mark.parametrize("who", [{}, {"logged_in_customer_id": "5550001"}])
@pytest.mark.parametrize("bump", ["rule", "catalog", "redaction"])
def test_a_reply_cached_before_another_process_moved_the_generation_is_refused(installed_shop, store, web_and_worker,
                                                                               who, bump):
    web, worker = web_and_worker
    viewing = next(p for p in store.products if p.status == "ACTIVE").id
    with web.app_context(), web.test_client() as client:
        first = block(client, installed_shop, viewing, **who)
        assert block(client, installed_shop, viewing, **who)["cached"] is True
    with worker.app_context():  # what a products/update webhook, a merchant's rule or customers/redact does
        if bump == "catalog":
            serving.invalidate(installed_shop.id)
        else:
            serving.forget_replies(installed_shop.id)
    with web.app_context(), web.test_client() as client:
        again = block(client, installed_shop, viewing, **who)
        assert again["cached"] is False
        assert [p["id"] for p in again["products"]] == [p["id"] for p in first["products"]]
        assert block(client, installed_shop, viewing, **who)["cached"] is True  # and is cached anew


def test_the_generation_moves_atomically_when_bumped_at_once(app, installed_shop):
    """Two invalidations at once move it twice: neither is lost (one UPDATE each, no read-modify-write)."""
    from concurrent.futures import ThreadPoolExecutor

    from core.storage.models import Shop, db

    before = db.session.get(Shop, installed_shop.id).reply_generation

    def bump(_):
        with app.app_context():
            serving.forget_replies(installed_shop.id)
            db.session.remove()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(bump, range(8)))
    db.session.expire_all()
    assert db.session.get(Shop, installed_shop.id).reply_generation == before + 8
