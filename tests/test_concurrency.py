"""Every read-modify-write of a shop's shared rows, sent at once from several threads, on the database the suite
runs on (make test runs SQLite and Postgres): nothing is lost, nothing is doubled, nobody gets a 5xx. SQLite
ignores FOR UPDATE, so these are what proves `core.storage.models.locked_shop` there. Each test runs several rounds
to catch a race; `scripts/repeat-concurrency-tests` runs the whole file many times on both databases."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core.recommendations import merchandising
from core.shopify import shops
from core.shopify.signatures import signed_app_proxy_query
from core.storage.models import (
    Conversation,
    MerchandisingRule,
    Product,
    RecommendationRating,
    Shop,
    SyncRun,
    TrainingRun,
    db,
    utcnow,
)
from tests.conftest import API_SECRET
from worker import tasks

ROUNDS = 3
AT_ONCE = 6


def at_once(work, count: int = AT_ONCE) -> list:
    """`work(i)` on `count` threads released together, so their reads and writes overlap."""
    start = threading.Barrier(count)

    def run(number):
        start.wait()
        return work(number)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def api(app, shopify, method: str, path: str, json=None) -> int:
    with app.test_client() as client:
        return client.open(path, method=method, json=json,
                           headers={"Authorization": f"Bearer {shopify.session_token()}"}).status_code


def in_app(app, work):
    """`work()` with an app context (and so a database session) of its own, as a worker thread has."""
    with app.app_context():
        try:
            return work()
        finally:
            db.session.remove()


def two_products(shop: Shop) -> tuple[int, int]:
    first, second = db.session.scalars(select(Product.id).where(Product.shop_id == shop.id)
                                       .order_by(Product.id).limit(2)).all()
    return first, second


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_chat_turns_sent_at_once_to_one_session_are_all_kept(app, installed_shop, round_):
    session = f"session-at-once-{round_}"  # a new session each round: the first turn's insert races too

    def send(number):
        with app.test_client() as client:
            url = "/proxy/chat?" + signed_app_proxy_query(installed_shop.domain, API_SECRET)
            return client.post(url, json={"session_id": session, "message": f"hello {number}"}).status_code

    codes = at_once(send)
    db.session.expire_all()
    talks = db.session.scalars(select(Conversation).where(Conversation.session_id == session)).all()
    assert codes == [200] * AT_ONCE
    assert len(talks) == 1
    assert sorted(m["content"] for m in talks[0].messages if m["role"] == "user") == \
        sorted(f"hello {n}" for n in range(AT_ONCE))


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_policies_saved_at_once_are_all_kept(app, installed_shop, shopify, round_):
    kinds = ("shipping", "returns", "invoices", "payment", "discounts")
    codes = at_once(lambda n: api(app, shopify, "PUT", "/api/policies", {kinds[n]: f"policy {n} round {round_}"}),
                    len(kinds))
    db.session.expire_all()
    policies = db.session.get(Shop, installed_shop.id).policies
    assert codes == [200] * len(kinds)
    assert {kind: policies[kind] for kind in kinds} == {kind: f"policy {n} round {round_}"
                                                        for n, kind in enumerate(kinds)}


@pytest.mark.parametrize("column,bodies", [
    ("assistant", [{"tone": "friendly"}, {"handoff_contact": "help@example.com"}, {"enabled": False},
                   {"discount_codes": [{"code": "WELCOME10", "summary": "10% off"}]}]),
    ("experiment", [{"enabled": False}, {"holdout_percent": 25}]),
])
def test_settings_saved_at_once_are_all_kept(app, installed_shop, shopify, column, bodies):
    for _ in range(ROUNDS):
        codes = at_once(lambda n: api(app, shopify, "PUT", f"/api/{column}", bodies[n]), len(bodies))
        db.session.expire_all()
        stored = getattr(db.session.get(Shop, installed_shop.id), column)
        assert codes == [200] * len(bodies)
        for body in bodies:
            assert {key: stored[key] for key in body} == body
        setattr(db.session.get(Shop, installed_shop.id), column, {})  # the next round proves its own writes
        db.session.commit()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_the_same_rule_sent_at_once_is_kept_once(app, installed_shop, shopify, round_):
    product, other = two_products(installed_shop)
    rule = {"kind": "pin", "product_id": product, "other_id": other} if round_ % 2 else \
        {"kind": "exclude", "product_id": other}
    codes = at_once(lambda n: api(app, shopify, "POST", "/api/rules", rule))
    db.session.expire_all()
    count = db.session.scalar(select(func.count()).select_from(MerchandisingRule)
                              .where(MerchandisingRule.shop_id == installed_shop.id))
    assert all(code in (200, 201) for code in codes), codes
    assert count == 1
    db.session.execute(MerchandisingRule.__table__.delete())
    db.session.commit()


def test_rules_at_once_never_pass_the_cap(app, installed_shop, monkeypatch):
    monkeypatch.setattr(merchandising, "MAX_RULES", 3)
    ids = db.session.scalars(select(Product.id).where(Product.shop_id == installed_shop.id)
                             .order_by(Product.id).limit(AT_ONCE)).all()

    def add(number):
        def work():
            try:
                merchandising.add_rule(db.session.get(Shop, installed_shop.id),
                                       {"kind": "exclude", "product_id": ids[number]})
                return "added"
            except merchandising.BadInput:
                return "refused"
        return in_app(app, work)

    for _ in range(ROUNDS):
        outcomes = at_once(add)
        db.session.expire_all()
        count = db.session.scalar(select(func.count()).select_from(MerchandisingRule))
        assert sorted(outcomes) == ["added"] * 3 + ["refused"] * (AT_ONCE - 3)
        assert count == 3
        db.session.execute(MerchandisingRule.__table__.delete())
        db.session.commit()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_one_pair_rated_at_once_is_one_row(app, installed_shop, shopify, round_):
    viewed, product = two_products(installed_shop)
    codes = at_once(lambda n: api(app, shopify, "POST", "/api/ratings",
                                  {"viewed_product_id": viewed, "product_id": product, "rating": 1 + n % 3}))
    db.session.expire_all()
    rows = db.session.scalars(select(RecommendationRating)).all()
    assert all(code in (200, 201) for code in codes), codes
    assert len(rows) == 1
    db.session.execute(RecommendationRating.__table__.delete())
    db.session.commit()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_sync_now_clicked_at_once_starts_one_sync(app, installed_shop, shopify, monkeypatch, round_):
    monkeypatch.setattr(tasks, "_later", lambda work, *args: None)  # the runs stay queued: only the start races
    before = db.session.scalar(select(func.count()).select_from(SyncRun))
    codes = at_once(lambda n: api(app, shopify, "POST", "/api/sync-runs"))
    db.session.expire_all()
    queued = db.session.scalar(select(func.count()).select_from(SyncRun).where(SyncRun.status == "queued"))
    assert sorted(codes) == [202] + [409] * (AT_ONCE - 1)
    assert queued == 1
    assert db.session.scalar(select(func.count()).select_from(SyncRun)) == before + 1
    db.session.execute(SyncRun.__table__.delete().where(SyncRun.status == "queued"))
    db.session.commit()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_training_started_at_once_starts_one_run(app, installed_shop, shopify, monkeypatch, round_):
    """Train now from two tabs and the hourly schedule at the same moment: one run."""
    monkeypatch.setattr(tasks, "_later", lambda work, *args: None)

    def start(number):
        if number % 2:
            return api(app, shopify, "POST", "/api/training-runs")
        return in_app(app, lambda: _enqueue(installed_shop.id))

    outcomes = at_once(start)
    db.session.expire_all()
    runs = db.session.scalars(select(TrainingRun).where(TrainingRun.status == "queued")).all()
    assert sum(o in (202, "started") for o in outcomes) == 1, outcomes
    assert all(o in (202, 409, "started", "busy") for o in outcomes), outcomes
    assert len(runs) == 1
    db.session.execute(TrainingRun.__table__.delete())
    db.session.commit()


def _enqueue(shop_id: int) -> str:
    try:
        tasks.enqueue_pipeline(db.session.get(Shop, shop_id), background=True, scheduled=True)
        return "started"
    except tasks.PipelineError:
        return "busy"


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_evaluate_now_clicked_at_once_starts_one_report(app, installed_shop, shopify, monkeypatch, round_):
    monkeypatch.setattr(tasks, "_later", lambda work, *args: None)
    codes = at_once(lambda n: api(app, shopify, "POST", "/api/evaluations/recommenders"))
    assert sorted(codes) == [202] + [409] * (AT_ONCE - 1)
    tasks.reports.write(installed_shop, "recommenders", {"status": "failed", "started_at": utcnow().isoformat()})


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_an_expiring_token_needed_at_once_is_refreshed_once(app, installed_shop, shopify, round_):
    """Shopify retires a refresh token when it is used: two processes refreshing at once must not both try."""
    shopify.expire_access_tokens()
    shop = db.session.get(Shop, installed_shop.id)
    shop.access_token_expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()

    tokens = at_once(lambda n: in_app(app, lambda: shops.access_token(db.session.get(Shop, installed_shop.id))))
    db.session.expire_all()
    assert len(set(tokens)) == 1
    assert shops.decrypt(db.session.get(Shop, installed_shop.id).access_token_encrypted) == tokens[0]
    assert db.session.get(Shop, installed_shop.id).access_token_expires_at > utcnow()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_product_updates_delivered_at_once_leave_the_newest(app, installed_shop, shopify, store, round_):
    """Shopify may deliver two updates of one product together, out of order: the newer one's product and
    variants stay, whichever is processed last."""
    from sample_store.server import product_webhook_payload

    product = next(p for p in store.products if len(p.variants) > 1)
    versions = []
    for number in range(AT_ONCE):
        payload = product_webhook_payload(product)
        payload["updated_at"] = f"{2031 + round_}-01-01T00:00:{number:02d}Z"
        payload["title"] = f"Version {number}"
        payload["variants"] = payload["variants"][: 1 + number % len(payload["variants"])]
        versions.append(shopify.signed_webhook("products/update", payload))

    def deliver(number):
        body, headers = versions[number]
        with app.test_client() as client:
            return client.post("/webhooks", data=body, headers=headers).status_code

    codes = at_once(deliver)
    db.session.expire_all()
    stored = db.session.get(Product, (installed_shop.id, product.id))
    newest = AT_ONCE - 1
    assert codes == [200] * AT_ONCE
    assert stored.title == f"Version {newest}"
    assert len(stored.variants) == 1 + newest % len(product.variants)
