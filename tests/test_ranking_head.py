"""The ranking head: a learned ranker over the blend's top products, trained on the store's own validation
orders, serving only the slices of requests where it measured better than the blend alone."""

import math
import random
from datetime import datetime, timedelta

import numpy as np
import pytest

from core.embeddings import SemanticIndex
from core.recommendations.history import Basket, Item
from core.recommendations.neighbours import ServedFromLists
from core.recommendations.ranking_head import (
    FEATURES,
    MIN_SLICE_CASES,
    SLICES,
    CandidateFeatures,
    RankingHead,
    fit_ranking_head,
    serving_retrieval,
    slice_of,
)
from core.recommendations.recommenders import Semantic, fit_blend, top_k

ACTIVITIES = [["Gas Stove", "Fuel Canister", "Cook Pot"], ["Sleeping Bag", "Sleeping Pad", "Camp Pillow"],
              ["Chalk Bag", "Climbing Shoes", "Harness"]]
BRANDS = ["Alder", "Birch", "Cedar", "Dune", "Ember", "Fjord", "Glen", "Heath", "Isle", "Juniper"]
NEW_BRANDS = ["Kestrel", "Lynx"]  # launched late (Kestrel) or not sold yet (Lynx)


def product(brand: str, kind: str) -> str:
    return f"{brand}-{kind}".lower().replace(" ", "-")


CATALOG = {product(brand, kind): Item(product(brand, kind), f"{brand} {kind}", kind, "")
           for kinds in ACTIVITIES for kind in kinds for brand in BRANDS + NEW_BRANDS}


def orders(count: int, seed: int = 0, launch: float = 1.0) -> list[Basket]:
    """An activity's kinds of product bought together (a stove with fuel and a pot), each of a brand drawn by
    popularity: any two products seldom meet in an order, their kinds always do. The blend reads products,
    not kinds; the head reads both. From `launch` (a share of the orders) on, every other order holds one
    Kestrel product, a brand nobody bought before."""
    rng = random.Random(seed)
    start = datetime(2025, 1, 1)
    out = []
    for n in range(count):
        kinds = rng.sample(rng.choice(ACTIVITIES), rng.choice([2, 3]))
        brands = rng.choices(BRANDS, weights=[1.6 ** -b for b in range(len(BRANDS))], k=len(kinds))
        if n >= launch * count and n % 2:
            brands[0] = "Kestrel"
        out.append(Basket(str(n), start + timedelta(hours=n),
                          [product(brand, kind) for brand, kind in zip(brands, kinds)]))
    return out


@pytest.fixture(scope="module")
def trained():
    return serving_retrieval(orders(1600), CATALOG)


def ndcg(recommender, cases) -> float:
    total = 0.0
    for basket, target in cases:
        top = recommender(basket, 10)
        total += 1 / math.log2(top.index(target) + 2) if target in top else 0.0
    return total / len(cases)


def test_a_cart_served_from_the_neighbour_lists_gets_the_heads_order(trained):
    """The storefront answers a cart from the stored lists (`ServedFromLists` runs that path offline): the head
    re-orders it there from the lists' values (orders holding both, similarity, type-level co-purchase from
    each type's best-sellers), so its block is the full index's; without the head it would not be."""
    assert trained.head.admitted["2-4 products"]
    carts = [o.products for o in orders(300, seed=1) if len(o.products) >= 2][:100]

    def agreement(recommender) -> float:
        return sum(len(set(recommender(cart, 4)) & set(top_k(trained.ids, trained.scores(cart), cart, 4)))
                   for cart in carts) / (4 * len(carts))

    without_head = ServedFromLists(trained)
    without_head.head = None
    assert agreement(ServedFromLists(trained)) >= 0.95
    assert agreement(without_head) < 0.8


def test_the_head_learns_which_kinds_go_together_and_serves_where_it_measured_better(trained):
    blend = trained
    head = blend.head
    assert head is not None and head.validation["cases"] >= 200
    assert blend.trial is None  # the head trained over fit_blend's trial blend, and the index does not keep it
    for kind, judged in head.validation["slices"].items():  # the decision is the measurement's
        assert judged["serves"] == (judged["cases"] >= MIN_SLICE_CASES and
                                    judged["ndcg@10_gain"] > 1.96 * judged["standard_error"] > 0)
        assert head.admitted[kind] == judged["serves"]
    assert head.card()["serves"] and set(head.card()["serves"]) <= set(SLICES)
    # Orders the head never saw, from the same store: it ranks them better than the blend alone.
    rng = random.Random(7)
    cases = [(o.products[:i] + o.products[i + 1:], o.products[i]) for o in orders(400, seed=9)
             for i in [rng.randrange(len(o.products))]]
    assert ndcg(blend, cases) > ndcg(blend.alone(), cases) + 0.05


def test_the_head_only_reorders_the_blends_pool_and_never_a_refused_slice(trained):
    blend = trained
    alone = blend.alone()

    class Reversing:  # a booster that ranks the pool upside down
        def predict(self, rows, num_threads=1):
            return np.arange(len(rows), dtype=float)

    upside_down = blend.alone()
    upside_down.head = RankingHead(blend.head.features, Reversing(), {SLICES[2]: True}, {})
    kit = ["alder-gas-stove", "alder-fuel-canister"]
    assert slice_of(blend, kit) == SLICES[2] and slice_of(blend, kit[:1]) == SLICES[1]
    features = blend.head.features
    pool = [blend.ids[p] for p in features.pool(alone.scores(kit), kit, features.kind_scores(kit))]
    assert pool[:10] == alone(kit, 10)  # the blend's best, in its order, and type-level co-purchase's
    assert upside_down(kit, len(pool)) == pool[::-1]  # the same products, the head's order
    assert upside_down(kit[:1], 10) == alone(kit[:1], 10)  # a slice the head does not serve


def test_a_store_with_too_few_orders_gets_no_head():
    few = orders(120)
    assert serving_retrieval(few, CATALOG).head is None
    index = SemanticIndex({p: item.title for p, item in CATALOG.items()})
    baskets = [o.products for o in few]
    assert fit_ranking_head(baskets, index, fit_blend(baskets, index)) is None


def test_the_features_read_the_products_types(trained):
    blend = trained
    features = CandidateFeatures(blend, {p: item.product_type for p, item in CATALOG.items()},
                                 [o.products for o in orders(1600)])
    basket = ["alder-gas-stove"]
    signals = blend.signals(basket)
    scores = blend.weights.as_array() @ signals
    kinds = features.kind_scores(basket)
    pool = features.pool(scores, basket, kinds)
    rows = features(basket, None, signals, scores, pool, kinds)
    stoves = [blend.ids[p].endswith("-gas-stove") for p in pool]
    assert rows.shape == (len(pool), len(FEATURES)) and any(stoves) and "alder-gas-stove" not in \
        [blend.ids[p] for p in pool]
    same_type = rows[:, FEATURES.index("same type as basket")]
    assert (same_type[stoves] == 1).all() and (same_type[[not s for s in stoves]] == 0).all()
    goes_with = rows[:, FEATURES.index("type goes with basket")]
    fuel = [blend.ids[p].endswith("-fuel-canister") for p in pool]
    harness = [blend.ids[p].endswith("-harness") for p in pool]
    assert goes_with[fuel].min() > goes_with[harness].max()


def test_a_new_products_block_holds_the_kinds_its_kind_is_bought_with():
    """A brand launched in the newest orders teaches the head what a request of new products only needs: the
    kinds its kind goes with. A stove nobody has bought yet then gets fuel and pots, not the stoves plain text
    similarity offers: the blend's complements, learned from the products' text, already know it."""
    blend = serving_retrieval(orders(2400, launch=0.85), CATALOG)
    assert blend.head.admitted[SLICES[0]], blend.head.validation
    new_stove = product("Lynx", "Gas Stove")
    assert slice_of(blend, [new_stove]) == SLICES[0]
    served = [CATALOG[p].product_type for p in blend([new_stove], 4)]
    alone = [CATALOG[p].product_type for p in blend.alone()([new_stove], 4)]
    similar = [CATALOG[p].product_type for p in Semantic(blend.index)([new_stove], 4)]
    assert set(served) <= {"Fuel Canister", "Cook Pot"}, served
    assert blend.weights.complement > 0 and "Gas Stove" not in alone, alone
    shown = blend.alone()([new_stove], 4)
    assert "complement" in blend.origins([new_stove], shown).values()  # what the admin's preview says put it there
    assert similar.count("Gas Stove") >= 3, similar


@pytest.mark.parametrize("count", [0, 1, 30])
def test_a_store_with_no_orders_or_a_few_still_ranks_its_catalog(count):
    served = serving_retrieval(orders(count), CATALOG)
    assert served.head is None
    shown = served([product("Alder", "Gas Stove")], 5)
    assert len(shown) == 5 and set(shown) <= set(CATALOG) and product("Alder", "Gas Stove") not in shown
