"""A product shoppers cannot see is never offered. A merchant takes a product off the Online Store sales channel
(its status stays ACTIVE), drafts or archives it, or sells the last one: from then on the block (served, cached,
precomputed, the holdout's list, quick add's variant), the chat's suggestions and product facts, the admin's
preview, the training examples' targets and the deploy gate's and the evaluation's cases leave it out, whether
Shopify told us by a products/update webhook (REST body, `published_at: null`) or a full sync found it (bulk
JSONL, `onlineStoreUrl: null`). Put back, it is offered again."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from sqlalchemy import create_engine, select, text

from core.llm.prompts import candidate_lines
from core.model import datasets, evaluation, pipeline
from core.recommendations import serving
from core.recommendations.experiment import HOLDOUT
from core.recommendations.history import EVAL_FRACTION
from core.shopify.ingest import product_row, product_rows_from_webhook
from core.shopify.signatures import signed_app_proxy_query
from core.storage.models import ModelVersion, Product, db
from sample_store.catalog import generate_store
from sample_store.server import product_jsonl, product_webhook_payload
from shopify_app import migrations
from worker.tasks import enqueue_full_sync

from .conftest import API_SECRET, scratch_database

SESSION = "publication-session-01"


@pytest.fixture
def store():
    """A store of this test's own (the same as everyone's): these tests unpublish, archive and sell out its
    products, and nothing of that may reach another test."""
    return generate_store(seed=11, orders=400)


# --- The surfaces ------------------------------------------------------------------------------------------

def block(client, shop, product_id: int, limit: int = 4) -> dict:
    """The storefront block through Shopify's signed App Proxy request (a guest, no visitor: the served arm)."""
    query = signed_app_proxy_query(shop.domain, API_SECRET, product_id=product_id, limit=limit)
    response = client.get(f"/proxy/recommendations?{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def chat(client, shop, message: str, **extra) -> dict:
    query = signed_app_proxy_query(shop.domain, API_SECRET, None, logged_in_customer_id="")
    response = client.post(f"/proxy/chat?{query}", json={"session_id": SESSION, "message": message, **extra})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def preview(client, shopify, product_id: int) -> dict:
    """The admin's Recommendations page asks this for a product's block."""
    response = client.get(f"/api/recommendations/{product_id}?limit=10",
                          headers={"Authorization": f"Bearer {shopify.session_token()}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def deliver(client, shopify, payload: dict) -> None:
    """Shopify's products/update delivery, signed; processed before the response in this configuration."""
    body, headers = shopify.signed_webhook("products/update", payload)
    response = client.post("/webhooks", data=body, headers=headers)
    assert response.status_code == 200 and response.json["status"] == "accepted", response.get_data(as_text=True)
    db.session.expire_all()


def assert_sellable(shop, items: list[dict]) -> None:
    """Every product a reply offers can be bought now, and quick add's variant is one of its own, in stock."""
    for item in items:
        product = db.session.get(Product, (shop.id, item["id"]))
        assert product is not None and product.on_storefront, item
        variant = next(v for v in product.variants if v.id == item["variant_id"])
        assert variant.available_for_sale and variant.inventory_quantity > 0, item


def offered(client, shopify, shop, hidden: Product, viewed: Product) -> dict[str, bool]:
    """Where the storefront and the admin offer `hidden` now (True: it is offered there)."""
    ids = lambda items: [item["id"] for item in items]  # noqa: E731
    served = block(client, shop, viewed.id)
    wide = block(client, shop, viewed.id, limit=10)
    for reply in (served, wide):
        assert_sellable(shop, reply["products"])
    holdout = serving.serve(shop, viewed, [], 10, arm=HOLDOUT)
    assert_sellable(shop, holdout["products"])
    named = chat(client, shop, f"Is the {hidden.title} in stock?")
    viewing = chat(client, shop, "How much is this?", product_id=hidden.id)
    pair = chat(client, shop, f"What goes well with the {viewed.title}?")
    for reply in (named, viewing, pair):
        assert_sellable(shop, reply["products"])
    shown = preview(client, shopify, viewed.id)["products"]
    assert_sellable(shop, shown)
    hidden_variants = {v.id for v in hidden.variants}
    return {
        "block": hidden.id in ids(served["products"]),
        "block (10)": hidden.id in ids(wide["products"]),
        "quick add": bool(hidden_variants & {item["variant_id"] for item in wide["products"]}),
        "holdout": hidden.id in ids(holdout["products"]),
        "chat: named": hidden.id in ids(named["products"]),
        "chat: in view": hidden.id in ids(viewing["products"]),
        "chat: pairs with": hidden.id in ids(pair["products"]),
        "chat: named in a reply": any(hidden.title in r["reply"] for r in (named, viewing, pair)),
        "admin preview": hidden.id in ids(shown),
    }


EVERYWHERE = {"block": True, "block (10)": True, "quick add": True, "holdout": True, "chat: named": True,
              "chat: in view": True, "chat: pairs with": True, "chat: named in a reply": True, "admin preview": True}
NOWHERE = dict.fromkeys(EVERYWHERE, False)


@pytest.fixture
def pair(client, installed_shop, store) -> tuple[Product, Product]:
    """`hidden`: a best-seller, in stock, bought in the newest orders too (so a training target and one of the
    gate's held-out cases); `viewed`: a product whose block shows it among its first three."""
    newest = sorted(store.orders, key=lambda o: o.created_at)[-int(len(store.orders) * EVAL_FRACTION):]
    recent = Counter(line.product_id for order in newest if len(order.lines) >= 2 for line in order.lines)
    overall = Counter(line.product_id for order in store.orders for line in order.lines)
    shop_id = installed_shop.id

    def in_stock(product_id: int) -> bool:
        product = db.session.get(Product, (shop_id, product_id))
        return product.on_storefront and any(v.inventory_quantity > 0 for v in product.variants)

    hidden_id = max((p for p in recent if in_stock(p)), key=lambda p: (recent[p], overall[p], -p))
    together = Counter(line.product_id for order in store.orders
                       if hidden_id in {line.product_id for line in order.lines} for line in order.lines)
    for viewed_id, _ in together.most_common(12):
        if viewed_id != hidden_id and in_stock(viewed_id) and \
                hidden_id in [p["id"] for p in block(client, installed_shop, viewed_id, limit=3)["products"]]:
            return db.session.get(Product, (shop_id, hidden_id)), db.session.get(Product, (shop_id, viewed_id))
    pytest.fail("no product's block shows the best-seller")


# --- The shapes Shopify sends ------------------------------------------------------------------------------

def test_bulk_jsonl_and_webhook_bodies_say_whether_the_online_store_shows_a_product(shopify, store):
    product = next(p for p in store.products if p.status == "ACTIVE")
    shown, published = product_jsonl(product, shopify.shop)[0], product_webhook_payload(product)
    assert shown["status"] == "ACTIVE" and shown["onlineStoreUrl"] == f"https://{shopify.shop}/products/{product.handle}"
    assert published["published_at"] is not None and product_row(shown, 1)["published"] is True
    assert product_rows_from_webhook(published, 1)[0]["published"] is True

    payload = shopify.unpublish(product.id)  # taken off the Online Store sales channel: still ACTIVE
    hidden = product_jsonl(product, shopify.shop)[0]
    assert hidden["status"] == "ACTIVE" and hidden["onlineStoreUrl"] is None
    assert payload["status"] == "active" and payload["published_at"] is None and payload["published_scope"] == "web"
    assert payload["updated_at"] > published["updated_at"]  # newer: the webhook is not taken for a stale one
    assert product_row(hidden, 1)["published"] is False and product_row(hidden, 1)["status"] == "ACTIVE"
    row, _ = product_rows_from_webhook(payload, 1)
    assert row["published"] is False and row["status"] == "ACTIVE"

    assert shopify.publish(product.id)["published_at"] is not None
    without = {k: v for k, v in product_webhook_payload(product).items() if k != "published_at"}
    assert "published" not in product_rows_from_webhook(without, 1)[0]  # nothing said: the stored value stays

    draft = next(p for p in store.products if p.status != "ACTIVE")
    assert product_jsonl(draft, shopify.shop)[0]["onlineStoreUrl"] is None  # a draft is on no storefront


def test_a_sync_stores_publication_and_rows_from_before_it_start_published(installed_shop, store, database_url):
    stored = db.session.scalars(select(Product).where(Product.shop_id == installed_shop.id)).all()
    assert {p.id for p in stored if p.on_storefront} == {p.id for p in store.products if p.status == "ACTIVE"}
    assert set(db.session.scalars(select(Product.id).where(Product.shop_id == installed_shop.id,
                                                           Product.on_storefront))) == \
        {p.id for p in stored if p.on_storefront}  # the SQL expression and the Python one agree

    url = scratch_database(database_url, "pairwell_publication")
    engine = create_engine(url)
    try:
        migrations.upgrade("0006", database_url=url)
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO shops (id, domain, scopes, policies, assistant, schedule, "
                                    "experiment, created_at) VALUES (1, 'a.myshopify.com', '', '{}', '{}', '{}', "
                                    "'{}', CURRENT_TIMESTAMP)"))
            connection.execute(text("INSERT INTO products (shop_id, id, handle, title, description, product_type, "
                                    "vendor, tags, status, total_inventory, updated_at) VALUES (1, 7, 'tent', "
                                    "'Tent', '', '', '', '[]', 'ACTIVE', 0, CURRENT_TIMESTAMP)"))
        migrations.upgrade(database_url=url)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT published FROM products")).scalar_one() in (True, 1)
    finally:
        engine.dispose()


# --- The storefront and the admin ----------------------------------------------------------------------------

CHANGES = {  # how the product leaves the storefront, and how it comes back
    "unpublished": ({"published": False}, {"published": True}),
    "draft": ({"status": "DRAFT"}, {"status": "ACTIVE"}),
    "archived": ({"status": "ARCHIVED"}, {"status": "ACTIVE"}),
    "sold out": ({"inventory": 0}, {"inventory": 5}),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_products_update_webhook_takes_it_off_every_surface_and_back(client, installed_shop, shopify, pair,
                                                                       change):
    hidden, viewed = pair
    serving.precompute(installed_shop)
    first = block(client, installed_shop, viewed.id)
    assert first["cached"] and hidden.id in [p["id"] for p in first["products"]]  # precomputed, and offered
    assert offered(client, shopify, installed_shop, hidden, viewed) == EVERYWHERE

    leave, come_back = CHANGES[change]
    deliver(client, shopify, shopify.update_product(hidden.id, **leave))
    stored = db.session.get(Product, (installed_shop.id, hidden.id))
    if change == "unpublished":
        assert stored.status == "ACTIVE" and stored.published is False and not stored.on_storefront
    after = block(client, installed_shop, viewed.id)
    assert not after["cached"] and hidden.id not in [p["id"] for p in after["products"]]  # no stale block
    expected = dict(NOWHERE)
    if change == "sold out":  # still on the storefront: the chat may say it is sold out, and offers the others
        expected["chat: named in a reply"] = True
    assert offered(client, shopify, installed_shop, hidden, viewed) == expected

    deliver(client, shopify, shopify.update_product(hidden.id, **come_back))
    assert db.session.get(Product, (installed_shop.id, hidden.id)).on_storefront
    assert offered(client, shopify, installed_shop, hidden, viewed) == EVERYWHERE
    assert [p["id"] for p in block(client, installed_shop, viewed.id)["products"]] == \
        [p["id"] for p in first["products"]]


def test_a_full_sync_finds_an_unpublished_product_and_drops_the_cached_blocks(client, installed_shop, shopify,
                                                                              pair):
    hidden, viewed = pair
    first = block(client, installed_shop, viewed.id)
    assert hidden.id in [p["id"] for p in first["products"]]

    shopify.unpublish(hidden.id)  # no webhook reached us: the next sync finds it
    assert enqueue_full_sync(installed_shop).status == "succeeded"
    db.session.expire_all()
    stored = db.session.get(Product, (installed_shop.id, hidden.id))
    assert stored.status == "ACTIVE" and stored.published is False and stored.online_store_url is None
    after = block(client, installed_shop, viewed.id)
    assert not after["cached"] and hidden.id not in [p["id"] for p in after["products"]]
    assert offered(client, shopify, installed_shop, hidden, viewed) == NOWHERE

    shopify.publish(hidden.id)
    assert enqueue_full_sync(installed_shop).status == "succeeded"
    db.session.expire_all()
    assert db.session.get(Product, (installed_shop.id, hidden.id)).online_store_url is not None
    assert offered(client, shopify, installed_shop, hidden, viewed) == EVERYWHERE
    assert [p["id"] for p in block(client, installed_shop, viewed.id)["products"]] == \
        [p["id"] for p in first["products"]]


def test_a_resync_that_changes_nothing_keeps_the_cached_blocks(client, installed_shop, pair):
    hidden, viewed = pair
    block(client, installed_shop, viewed.id)
    assert enqueue_full_sync(installed_shop).status == "succeeded"
    assert block(client, installed_shop, viewed.id)["cached"]


# --- What learns from and scores the storefront ------------------------------------------------------------

def training_examples(shop, folder) -> list[dict]:
    datasets.build_datasets(shop, folder)
    return [json.loads(line) for name in ("train.jsonl", "eval.jsonl") for line in (folder / name).open()]


def gate_run(shop, monkeypatch) -> dict:
    """The deploy gate on a stand-in model (it likes the first candidate it is shown): the cases it scored,
    the candidates the model read and every list the gate scored."""
    seen = {"cases": [], "candidates": [], "lists": []}

    def rank(messages, labels):
        seen["candidates"].extend(candidate_lines(messages[-1]["content"]))
        return [0.0] + [-9.0] * (len(labels) - 1)

    def hits_at(recommender, cases, k):
        seen["cases"].extend(cases)

        def recorded(basket, k, history=None):
            shown = recommender(basket, k, history)
            seen["lists"].append(list(shown))
            return shown
        return real_hits_at(recorded, cases, k)

    real_hits_at = pipeline.hits_at
    monkeypatch.setattr(pipeline, "rank_with_gguf", lambda path: rank)
    monkeypatch.setattr(pipeline, "hits_at", hits_at)
    report = pipeline.gate_report(ModelVersion(shop_id=shop.id, version=1, gguf_path="stand-in.gguf"))
    monkeypatch.setattr(pipeline, "hits_at", real_hits_at)
    assert report["cases"] and seen["lists"]
    return seen


def evaluation_input(shop, monkeypatch) -> dict:
    """What `pairwell evaluate SHOP` (and the admin's Evaluate now) scores: the shop's baskets and titles."""
    seen = {}

    class Captured(Exception):
        pass

    def compare(baskets, titles=None, **options):
        seen.update(baskets=baskets, titles=titles)
        raise Captured

    monkeypatch.setattr(evaluation, "compare_recommenders", compare)
    with pytest.raises(Captured):
        evaluation.run(shop=shop)
    monkeypatch.undo()
    return seen


def offline_uses(shop, hidden: Product, folder, monkeypatch) -> dict[str, bool]:
    """Where training, the gate and evaluation use `hidden` (True: they do)."""
    examples = training_examples(shop, folder)
    gate = gate_run(shop, monkeypatch)
    scored = evaluation_input(shop, monkeypatch)
    recommendation = [e for e in examples if e["kind"] == "recommendation"]
    return {
        "training targets": any(hidden.id in e["answer"] for e in recommendation),
        "training prompts": any(hidden.title in m["content"] for e in examples for m in e["messages"]),
        "gate cases": any(hidden.id == c.target or hidden.id in c.context for c in gate["cases"]),
        "gate candidates": any(line == hidden.title or line.startswith(f"{hidden.title} (")
                               for line in gate["candidates"]),
        "gate lists": any(hidden.id in shown for shown in gate["lists"]),
        "evaluation cases": any(str(hidden.id) in b.products for b in scored["baskets"])
        or str(hidden.id) in scored["titles"],
    }


@pytest.mark.parametrize("change", ["unpublished by webhook", "unpublished by sync", "draft", "archived"])
def test_training_the_gate_and_evaluation_never_target_a_hidden_product(client, installed_shop, shopify, pair,
                                                                         change, tmp_path, monkeypatch):
    hidden, _ = pair
    before = offline_uses(installed_shop, hidden, tmp_path / "before", monkeypatch)
    assert before["training targets"] and before["gate cases"] and before["evaluation cases"]

    if change == "unpublished by sync":
        shopify.unpublish(hidden.id)
        assert enqueue_full_sync(installed_shop).status == "succeeded"
    else:
        leave = {"published": False} if change == "unpublished by webhook" else {"status": change.upper()}
        deliver(client, shopify, shopify.update_product(hidden.id, **leave))
    assert not db.session.get(Product, (installed_shop.id, hidden.id)).on_storefront
    assert offline_uses(installed_shop, hidden, tmp_path / "hidden", monkeypatch) == dict.fromkeys(before, False)

    deliver(client, shopify, shopify.update_product(hidden.id, published=True, status="ACTIVE"))
    assert offline_uses(installed_shop, hidden, tmp_path / "back", monkeypatch) == before
