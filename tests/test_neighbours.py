"""The storefront serves from neighbour lists a worker built (neighbours.py): the same blocks as the index
it was built from, no index in the web process, and a changed catalog or order marked for the sweeper."""

from datetime import timedelta

from sqlalchemy import select

from core.recommendations import neighbours, ranking_head, serving
from core.recommendations.serving import ServingState
from core.shopify.signatures import signed_app_proxy_query
from core.storage.models import NeighbourList, Product, RetrievalBuild, db, utcnow

from .conftest import API_SECRET


def blocks(shop, shelf_of, baskets, limit=4, intent="complementary"):
    """Each basket's block, from the shelf `shelf_of(viewing, cart)` gives."""
    answers = []
    for viewing, *cart in baskets:
        picks, _ = serving.recommend(shop, db.session.get(Product, (shop.id, viewing)),
                                             [db.session.get(Product, (shop.id, c)) for c in cart], limit,
                                             shelf=shelf_of(viewing, cart), intent=intent)
        answers.append([pick.offer.id for pick in picks])
    return answers


def test_blocks_from_the_lists_are_the_blocks_of_the_index_they_were_built_from(installed_shop):
    """The sync built the lists. A product page's block (no cart) is the served order exactly; a cart's block
    merges the lists as the blend weighs its signals (a product off a list estimated; the ranking head re-orders
    it where one serves, tests/test_ranking_head.py: the sample store's orders train none), so nearly all of it
    agrees."""
    build = db.session.get(RetrievalBuild, installed_shop.id)
    assert build.built_at is not None and build.products > 100 and build.changed_at is None
    full = serving.load_shelf(installed_shop)
    products = sorted(full.offers)[:60]
    alone = [[p] for p in products]

    def listed(viewing, cart):
        return serving.listed_shelf(installed_shop, viewing, cart, {})

    for intent in ("complementary", "related"):
        assert blocks(installed_shop, listed, alone, intent=intent) == \
            blocks(installed_shop, lambda *_: full, alone, intent=intent)

    def holdout(shelf_of):  # the A/B holdout's plain co-purchase, from the lists too
        return [[pick.offer.id for pick in serving.recommend(
            installed_shop, db.session.get(Product, (installed_shop.id, p)), [], 4, shelf=shelf_of(p),
            arm="holdout")[0]] for p in products[:20]]

    listed_holdout = holdout(lambda p: serving.listed_shelf(installed_shop, p, [], {}, "holdout"))
    # Full blocks, the same co-purchase partners; the best-sellers that fill a short one may tie differently.
    assert all(len(block) == 4 for block in listed_holdout)
    assert sum(len(set(a) & set(b)) for a, b in zip(listed_holdout, holdout(lambda p: full), strict=True)) >= 0.9 * 80
    carts = [[a, b, c] for a, b, c in zip(products, products[20:], products[40:], strict=False)]
    merged = blocks(installed_shop, listed, carts, intent="related")
    exact = blocks(installed_shop, lambda *_: full, carts, intent="related")
    overlap = sum(len(set(m) & set(e)) for m, e in zip(merged, exact, strict=True)) / (4 * len(carts))
    assert overlap >= 0.85, overlap  # 0.925 here


def test_a_stored_ranking_head_orders_a_carts_block_as_the_index_does(installed_shop, monkeypatch):
    """A build stores the blend's ranking head with the lists; a cart's block from the lists is then re-ordered
    by it as the full index's is (product types read from the rows, type-level co-purchase's best-sellers
    joining the pool). The sample store's orders are too few to train a head, so one is trained on fewer cases
    and serves every slice."""
    monkeypatch.setattr(ranking_head, "MIN_TRAINING_CASES", 20)
    monkeypatch.setattr(ranking_head, "beyond_noise", lambda gains, at_least=0: True)
    serving.build_neighbour_lists(installed_shop)
    build = db.session.get(RetrievalBuild, installed_shop.id, populate_existing=True)
    full = serving.load_shelf(installed_shop)  # the index that build kept in this process
    assert build.head is not None and full.retrieval.head is not None
    assert serving.listed_head(build).kinds  # the sample store's products have types
    products = sorted(full.offers)
    carts = [[a, b, c] for a, b, c in zip(products[:30], products[40:], products[80:], strict=False)]

    def listed(viewing, cart):
        return serving.listed_shelf(installed_shop, viewing, cart, {})

    merged = blocks(installed_shop, listed, carts, intent="related")
    exact = blocks(installed_shop, lambda *_: full, carts, intent="related")
    assert sum(len(set(m) & set(e)) for m, e in zip(merged, exact, strict=True)) >= 0.95 * 4 * len(carts)


def test_neither_a_block_nor_a_chat_builds_an_index(app, client, installed_shop):
    """A web process that never built the shop's index (a restart, another worker) answers a block from the
    lists, and a shopper's question about what goes with a product from the lists and the catalog's stored
    text vectors."""
    app.extensions["pairwell_serving"] = ServingState(2**30)
    viewing = db.session.scalars(select(NeighbourList.product_id).where(
        NeighbourList.shop_id == installed_shop.id).order_by(NeighbourList.popularity.desc())).first()
    query = signed_app_proxy_query(installed_shop.domain, API_SECRET, product_id=viewing, limit=4)
    response = client.get(f"/proxy/recommendations?{query}")
    assert response.status_code == 200 and len(response.json["products"]) == 4
    chat = client.post("/proxy/chat?" + signed_app_proxy_query(installed_shop.domain, API_SECRET),
                       json={"session_id": "restarted-1", "message": "What goes well with this?",
                             "product_id": str(viewing)})
    assert chat.status_code == 200 and chat.json["strategy"] == "pair" and chat.json["products"]
    assert serving.serving_state().index(installed_shop.id) is None


def test_changes_mark_the_lists_and_the_sweeper_builds_them_once(installed_shop, shopify, client, store):
    from sample_store.server import product_webhook_payload

    payload = product_webhook_payload(store.products[5])
    payload.update(updated_at="2030-01-01T00:00:00Z", title="Renamed")
    body, headers = shopify.signed_webhook("products/update", payload)
    assert client.post("/webhooks", data=body, headers=headers).status_code == 200
    changed = db.session.get(RetrievalBuild, installed_shop.id, populate_existing=True).changed_at
    assert changed is not None
    assert neighbours.due(changed + timedelta(seconds=1)) == []  # still settling: a sync sends many at once
    later = changed + neighbours.SETTLE + timedelta(seconds=1)
    assert neighbours.due(later) == [installed_shop.id]
    assert neighbours.due(later + timedelta(minutes=1)) == []  # sent once, not every minute while it builds
    assert neighbours.due(later + neighbours.REQUEUE_AFTER + timedelta(seconds=1)) == [installed_shop.id]
    build = serving.build_neighbour_lists(installed_shop)
    assert build.changed_at is None and build.queued_at is None and build.built_at > changed
    assert neighbours.due(utcnow() + timedelta(hours=1)) == []


def test_a_sync_whose_build_fails_leaves_the_shop_to_the_sweeper(installed_shop, monkeypatch):
    """The sync succeeds whatever the build does; a build not sent or failed is marked for the sweeper."""
    from worker.tasks import enqueue_full_sync

    def broken(*_args, **_kwargs):
        raise RuntimeError("no worker")

    monkeypatch.setattr(serving, "build_neighbour_lists", broken)
    assert enqueue_full_sync(installed_shop).status == "succeeded"
    build = db.session.get(RetrievalBuild, installed_shop.id, populate_existing=True)
    assert build.changed_at is not None and build.built_at is not None  # the old lists serve meanwhile
    assert neighbours.due(build.changed_at + neighbours.SETTLE + timedelta(seconds=1)) == [installed_shop.id]
