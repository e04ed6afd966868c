"""The shared retrieval (co-purchase, EASE, semantic, the served blend), the name matcher, and the model as a
recommender: alone it may invent products and is counted; re-ranking the blend's candidates it serves only
real ones."""

import random
from datetime import datetime, timedelta

import numpy as np
import pytest

from core.embeddings import SemanticIndex
from core.llm.model_hosts import rank_with_gguf
from core.llm.prompts import LABELS, candidate_lines
from core.model import evaluation
from core.recommendations.history import Basket
from core.recommendations.recommenders import (
    COSINE,
    DEFAULT_WEIGHTS,
    Blend,
    CoPurchase,
    CustomerHistories,
    ItemKNN,
    Neighbours,
    Semantic,
    TypeCoPurchase,
    fit_blend,
    fit_item_knn,
    validation_split,
)
from core.recommendations.serving import Shelf, ranking

TITLES = {
    "tent": "Two-Person Backpacking Tent", "stakes": "Aluminium Tent Stakes", "footprint": "Tent Footprint Groundsheet",
    "stove": "Backpacking Gas Stove", "fuel": "Butane Fuel Canister", "pot": "Titanium Cook Pot",
    "red-bag": "Red Retrospot Lunch Bag", "pink-bag": "Pink Retrospot Lunch Bag", "mug": "Enamel Camping Mug",
    "chalk": "Ultralight Climbing Chalk Bag", "shoes": "Climbing Shoes", "rope": "Dynamic Climbing Rope",
}


def baskets(orders: int = 300, seed: int = 0) -> list[evaluation.Basket]:
    """Tents with stakes, stoves with fuel and pots, climbing kit together; the red lunch bag never sold."""
    rng = random.Random(seed)
    groups = [["tent", "stakes", "footprint"], ["stove", "fuel", "pot", "mug"], ["chalk", "shoes", "rope"]]
    start = datetime(2025, 1, 1)
    out = []
    for n in range(orders):
        group = rng.choice(groups)
        products = rng.sample(group, rng.randint(2, len(group)))
        if "stove" in group and n % 3 == 0:
            products.append("pink-bag")  # a lunch bag now and then with the cooking kit
        out.append(evaluation.Basket(str(n), start + timedelta(hours=n), products))
    return out


@pytest.fixture(scope="module")
def index() -> SemanticIndex:
    return SemanticIndex(TITLES)


def test_co_purchase_knows_companions_semantic_knows_the_never_sold(index):
    copurchase = CoPurchase(b.products for b in baskets())
    assert set(copurchase(["stove"], 3)) == {"fuel", "pot", "mug"}
    assert copurchase.co_purchases("red-bag") == 0 and "red-bag" not in copurchase(["pink-bag"], 5)
    assert Semantic(index)(["pink-bag"], 1) == ["red-bag"]  # the same bag in another colour
    blend = Blend([b.products for b in baskets()], index)
    assert set(blend(["stove"], 3)) == {"fuel", "pot", "mug"}  # what was bought together still leads
    # Four cooking products share the pink bag's orders; semantics puts the never-sold red bag beside them.
    assert "red-bag" in blend(["pink-bag"], 5) and "red-bag" not in copurchase(["pink-bag"], 5)


def test_co_purchase_counts_pairs_once_an_order_for_lift_reasons_and_ranking():
    orders = [["stove", "fuel", "fuel"], ["stove", "fuel", "pot"], ["stove", "pot"], ["boots"]]
    copurchase = CoPurchase(orders)
    assert copurchase.together("stove", "fuel") == 2 and copurchase.together("fuel", "boots") == 0
    assert copurchase.together("stove", "stove") == 0 and copurchase.together("stove", "kayak") == 0
    assert copurchase.bought_with("stove") == {"fuel": 2, "pot": 2} and copurchase.bought_with("kayak") == {}
    assert copurchase.lift("fuel", "pot") == 1 * 4 / (2 * 2) and copurchase.co_purchases("stove") == 4
    assert copurchase(["stove"], 3) == ["fuel", "pot", "boots"]  # popularity fills what pairs cannot


def test_the_blends_weights_are_chosen_on_the_newest_orders_of_the_training_period(index):
    # A new product launches late: the newest orders pair the never-before-sold red bag with the pink one. Only
    # the validation split (the newest 15%) shows that semantics should count for products with no history.
    history = [b.products for b in baskets(850)]
    late = [["pink-bag", "red-bag"] if n % 2 else ["stove", "fuel"] for n in range(150)]
    chosen = fit_blend(history + late, index)
    def semantic_share(w):  # scores only rank, so what matters is semantics' share of the weights
        return (w.semantic + w.cold_start) / (w.ease + w.copurchase + w.semantic + w.cold_start)

    assert chosen.weights != DEFAULT_WEIGHTS and semantic_share(chosen.weights) > semantic_share(DEFAULT_WEIGHTS)
    assert chosen.validation["cases"] >= 100 and chosen.validation["cold_start_hr@10"] >= 0.15
    assert chosen(["pink-bag"], 1) == ["red-bag"]
    few = fit_blend(history[:400], index)  # 60 newest orders are too few to choose from: the defaults
    assert few.weights == DEFAULT_WEIGHTS


def test_a_customer_history_is_their_earlier_orders_newest_counting_most():
    day = datetime(2025, 3, 1)
    orders = [("ann", day - timedelta(days=60), ["stove", "fuel"]), ("ann", day, ["pot"]),
              ("bob", day - timedelta(days=1), ["tent"]), (None, day, ["mug"]),
              ("ann", day - timedelta(days=1), ["fuel"])]
    histories = CustomerHistories(Basket(str(n), when, products, customer)
                                  for n, (customer, when, products) in enumerate(orders))
    before = histories.before("ann", day)  # the order placed at `day` itself is not yet history
    assert set(before) == {"stove", "fuel"} and before["stove"] == pytest.approx(0.5)
    assert before["fuel"] == pytest.approx(0.5 + 0.5 ** (1 / 60))
    assert histories.before("ann", day - timedelta(days=60)) == {} and histories.before(None, day) == {}
    assert histories.before("cat", day) == {}


def test_a_store_whose_customers_reorder_learns_to_weigh_their_history(index):
    """Each customer always adds their own usual product to whatever kit they buy: the basket cannot tell which,
    their earlier orders can. Validation finds that, and a customer's usual product leads their list."""
    rng = random.Random(3)
    customers = {f"c{n}": rng.choice(["mug", "chalk", "pink-bag", "pot", "rope"]) for n in range(40)}
    groups = [["tent", "stakes", "footprint"], ["stove", "fuel", "pot"], ["chalk", "shoes", "rope"]]
    start = datetime(2025, 1, 1)
    orders = []
    for n in range(1000):
        customer = rng.choice(sorted(customers))
        group = rng.choice(groups)
        products = list(dict.fromkeys(rng.sample(group, 2) + [customers[customer]]))
        orders.append(Basket(str(n), start + timedelta(hours=n), products, customer))
    histories = CustomerHistories(orders)
    chosen = fit_blend([o.products for o in orders], index,
                       history=lambda i: histories.before(orders[i].customer, orders[i].created_at))
    assert chosen.weights.history > 0 and chosen.validation["cases_with_history"] > 100
    regular = next(c for c, usual in customers.items() if usual == "mug")
    later = start + timedelta(hours=1000)
    assert chosen(["tent", "stakes"], 1, histories.before(regular, later)) == ["mug"]
    assert chosen(["tent", "stakes"], 1) == ["footprint"]  # a guest: the basket alone


def scripted_ranker(scores_for):
    """A stand-in model: scores the candidates from the prompt (the real llama.cpp path is the last test)."""
    calls = []

    def rank(messages, labels):
        calls.append((messages, labels))
        return scores_for(candidate_lines(messages[-1]["content"]))
    rank.calls = calls
    return rank


def test_model_re_rank_puts_the_candidate_it_likes_best_first(index):
    shelf = Shelf.everything(TITLES, Blend([b.products for b in baskets()], index))
    candidates = ranking(shelf, "stove", [])[:8]
    chosen = candidates[2]
    rank = scripted_ranker(lambda lines: [0.0 if line == TITLES[chosen] else -5.0 for line in lines])
    rerank = evaluation.ModelReRank(rank, shelf)
    ranked = rerank(["stove"], 10)
    assert ranked[0] == chosen and ranked[1:4] == [c for c in candidates if c != chosen][:3]
    assert len(ranked) == len(set(ranked)) and set(ranked) <= set(TITLES)
    messages, labels = rank.calls[0]
    assert candidate_lines(messages[-1]["content"]) == [TITLES[c] for c in candidates] and labels == LABELS
    assert rerank.label_mass == pytest.approx(1 + 7 * np.exp(-5.0))


def test_evaluate_reports_the_blend_the_model_re_ranks_on_the_same_cases(index):
    def last_first(lines):  # a model that reverses retrieval's order
        return [float(i) - len(lines) for i in range(len(lines))]

    report = evaluation.compare_recommenders(baskets(), TITLES, rank=scripted_ranker(last_first),
                                             model_cases=20)["recommenders"]
    assert {"popularity", "co-purchase", "EASE", "semantic", "blend (served)", "blend (model cases)",
            "blend + model re-rank"} <= set(report)
    blend, rerank = report["blend (model cases)"], report["blend + model re-rank"]
    assert blend["cases"] == rerank["cases"] == 20 and rerank["out_of_catalog_rate"] == 0
    assert rerank["hr@4"] < blend["hr@4"] and rerank["hr@10"] == blend["hr@10"]  # the same ten, worse placed
    assert 0 < rerank["label_mass"] <= 1


def test_the_real_model_in_llama_cpp_re_ranks_only_catalog_products(index, tiny_gguf):
    report = evaluation.compare_recommenders(baskets(120), TITLES, rank=rank_with_gguf(tiny_gguf), model_cases=4)
    rerank = report["recommenders"]["blend + model re-rank"]
    assert rerank["cases"] == 4 and rerank["out_of_catalog_rate"] == 0 and rerank["duplicate_rate"] == 0
    assert 0 < rerank["label_mass"] <= 1.0001  # real log-probabilities of the candidates' letters


def test_ease_learns_what_is_bought_together_and_falls_back_to_popularity():
    from core.recommendations.recommenders import EASE

    baskets = [["stove", "fuel"]] * 10 + [["boots", "socks"]] * 8 + [["stove", "fuel", "spork"]] * 3 + [["map"]] * 2
    ease = EASE(baskets, lam=5.0, max_items=5)  # "map" is the sixth item: outside the model
    assert ease(["stove"], 2) == ["fuel", "spork"]
    assert ease(["boots"], 1) == ["socks"]
    assert ease(["map"], 2) == ["stove", "fuel"]  # unknown to the model: the most bought
    assert "map" not in ease.position and len(ease.ids) == 5


def chance_pairs(seed: int, orders: int, first_noise: int = 0) -> list[list[str]]:
    """Each A_i goes with B_(i mod 4) (bought in about half of A_i's orders, 20 times over the period), but the Bs
    sell mostly with fillers (C), and every A order also holds a product bought only that once (N): cosine ranks
    those one-off products above the real partner, which shrinkage (or another normalisation) does not."""
    rng, noise, out = random.Random(seed), first_noise, []
    for _ in range(orders):
        if rng.random() < 0.21:
            a = rng.randrange(20)
            noise += 1
            out.append([f"A{a}", f"B{a % 4}", f"N{noise}"] if rng.random() < 0.5 else [f"A{a}", f"N{noise}"])
        else:
            out.append([f"B{rng.randrange(4)}", f"C{rng.randrange(20)}"])
    return out


def test_item_knn_tuned_on_validation_beats_cosine_where_one_off_pairs_mislead_it():
    train = chance_pairs(0, 3800)
    knn = fit_item_knn(train)
    assert knn.setting != COSINE and knn.validation["hr@10"] > knn.validation["cosine_hr@10"]
    assert max(knn.tried.values()) == knn.tried[knn.setting] >= knn.tried[COSINE]
    later = [o for o in chance_pairs(1, 1000, first_noise=10**6) if len(o) == 3]  # a new period, new one-offs
    cosine = CoPurchase(train)
    found = {name: sum(o[1] in recommend([o[0], o[2]], 10) for o in later)
             for name, recommend in (("knn", knn), ("cosine", cosine))}
    assert found["knn"] > 2 * found["cosine"] and found["knn"] >= 0.9 * len(later)
    assert ItemKNN(train)(["A1", "N1"], 10) == cosine(["A1", "N1"], 10)  # untuned item-kNN is the cosine row


def test_item_knn_validation_scores_what_the_recommender_itself_returns():
    """The settings are judged by a vectorised ranking; it must agree with asking the recommender, history and
    popularity fill included."""
    rng = random.Random(4)
    products = [f"p{i}" for i in range(120)]
    orders = [list(dict.fromkeys(rng.choices(products, weights=[1 / (i + 1) for i in range(120)], k=rng.randint(2, 6))))
              for _ in range(900)]
    histories = {i: {rng.choice(products): rng.random()} for i in range(len(orders)) if i % 3}
    grid = [Neighbours(0.0, 10.0, 5), Neighbours(1.0, 2.0, None)]
    knn = fit_item_knn(orders, history=lambda i: histories.get(i, {}), grid=grid)
    cut, cases = validation_split(orders)
    for setting in [COSINE, *grid]:
        trial = ItemKNN(orders[:cut], setting)
        asked = sum(target in trial([p for p in orders[i] if p != target], 10) for i, target in cases)
        assert knn.tried[setting][0] == asked
    trial = ItemKNN(orders[:cut], knn.setting).with_history(knn.validation["history_weight"])
    asked = sum(t in trial([p for p in orders[i] if p != t], 10, histories.get(i)) for i, t in cases)
    assert round(asked / len(cases), 4) == knn.validation["hr@10_with_history"]


def test_type_level_co_purchase_knows_a_new_product_by_its_type():
    """A new sleeping bag gets the pads and stoves shoppers buy with sleeping bags, the more bought first, not
    other sleeping bags; a pad's list names the new bag after the bags that have sold."""
    types = {"bag-a": "sleeping bag", "bag-b": "sleeping bag", "bag-new": "sleeping bag", "pad-a": "pad",
             "pad-b": "pad", "stove": "stove", "fuel": "fuel"}
    orders = [["bag-a", "pad-a"]] * 6 + [["bag-b", "pad-b"]] * 3 + [["bag-a", "stove"]] * 2 + [["stove", "fuel"]] * 5
    kinds = TypeCoPurchase(orders, types)
    assert kinds(["bag-new"], 3) == ["pad-a", "pad-b", "stove"]
    assert kinds(["pad-a"], 3) == ["bag-a", "bag-b", "bag-new"]
    assert CoPurchase(orders)(["bag-new"], 3) == ["bag-a", "stove", "pad-a"]  # co-purchase: popularity only


def test_a_block_shows_one_product_of_a_kind_unless_shoppers_buy_several(index):
    """A tent and a stove share a type here and nobody buys both: the block shows one and fills with other
    kinds, and takes the second back only when the list runs out of kinds. Shoppers do buy two lunch bags at
    once, so two may share a block."""
    from core.recommendations.serving import one_of_a_kind

    orders = [b.products for b in baskets()] + [["red-bag", "pink-bag"]] * 20
    types = {p: "Gear" if p in ("tent", "stove") else "Lunch Bag" if p.endswith("-bag") else p.title()
             for p in TITLES}
    shelf = Shelf.everything(TITLES, Blend(orders, index), types)
    assert shelf.bought_several == {"lunch bag"}
    assert one_of_a_kind(shelf, ["tent", "stove", "fuel", "chalk"], 3) == ["tent", "fuel", "chalk"]
    assert one_of_a_kind(shelf, ["tent", "stove", "fuel"], 3) == ["tent", "fuel", "stove"]
    assert one_of_a_kind(shelf, ["pink-bag", "red-bag", "tent"], 2) == ["pink-bag", "red-bag"]


def test_a_process_remembers_at_most_its_bound_of_vectors_the_least_recently_used_out(monkeypatch):
    """Many stores' texts pass through one web process: past the bound the oldest vectors go, not all at once, and a
    batch larger than the bound still gets every vector."""
    from cachetools import LRUCache

    from core import embeddings

    monkeypatch.setattr(embeddings, "_remembered", LRUCache(maxsize=3))
    texts = ["a tent", "a stove", "fuel", "matches", "a pot"]
    vectors = embeddings.embed(texts)
    assert vectors.shape == (5, 384) and list(embeddings._remembered) == ["fuel", "matches", "a pot"]
    encoded = []
    real = embeddings.encoder()
    monkeypatch.setattr(embeddings, "encoder", lambda: encoded.append(1) or real)
    again = embeddings.embed(["a pot", "a tent"])
    assert len(encoded) == 1 and np.allclose(again, vectors[[4, 0]], atol=1e-6)  # only "a tent" encoded again
    assert list(embeddings._remembered) == ["matches", "a pot", "a tent"]


CAMP_TYPES = {"Sleeping Bag": ["Alpine Down Sleeping Bag", "Synthetic Mummy Sleeping Bag", "Summer Sleeping Bag"],
              "Sleeping Pad": ["Inflatable Sleeping Pad", "Closed-Cell Foam Sleeping Pad", "Self-Inflating Mat"],
              "Camp Stove": ["Canister Camp Stove", "Compact Backpacking Stove", "Two-Burner Camp Stove"],
              "Fuel Canister": ["Isobutane Fuel Canister", "Propane Gas Cylinder", "Butane Gas Cartridge"]}


def test_a_new_product_gets_the_kinds_its_kind_is_bought_with_learned_from_text():
    """Sleeping bags sell with pads, stoves with fuel. A sleeping bag nobody has bought yet is known by its text
    alone: plain text similarity offers more sleeping bags, the complements learned from the orders offer pads.
    A store with too few orders gets no model."""
    from core.embeddings import product_text
    from core.recommendations.complements import fit_complements

    texts = {f"{kind}-{n}": product_text(title, kind) for kind, titles in CAMP_TYPES.items()
             for n, title in enumerate(titles)}
    texts["new-bag"] = product_text("Ultralight Goose Down Quilt Sleeping Bag", "Sleeping Bag")
    index = SemanticIndex(texts)
    rng = random.Random(0)
    orders = [[f"{first}-{rng.randrange(3)}", f"{second}-{rng.randrange(3)}"]
              for first, second in [("Sleeping Bag", "Sleeping Pad"), ("Camp Stove", "Fuel Canister")] * 150]
    complements = fit_complements(orders, index)
    assert complements is not None and complements.trained["steps"] > 0

    def kinds(scores: np.ndarray, k: int = 3) -> set[str]:
        best = [index.ids[i] for i in np.argsort(-scores) if index.ids[i] != "new-bag"][:k]
        return {product.rsplit("-", 1)[0] for product in best}

    assert kinds(index.similarities(["new-bag"])) == {"Sleeping Bag"}  # more of the same
    assert kinds(complements.matches(["new-bag"])[0]) == {"Sleeping Pad"}  # what completes it
    assert kinds(complements.matches(["Fuel Canister-0"])[1]) == {"Camp Stove"}  # the whole basket's need
    assert fit_complements(orders[:99], index) is None


def test_llama_cpp_scores_a_prompt_alike_whatever_its_context_held_before(tiny_gguf):
    """The embedded host reuses the part of the context a new prompt shares with the last one (the system
    prompt, the viewed product): the scores are those of the prompt computed from scratch."""
    from core.llm.model_hosts import EmbeddedHost

    def prompt(viewing: str, cart: str) -> list[dict]:
        return [{"role": "system", "content": "Pick one."},
                {"role": "user", "content": f"Customer viewing: {viewing}. Cart: {cart}.\nCandidates:\nA. Pot\nB. Mug"}]

    host, model, carts = EmbeddedHost(), str(tiny_gguf), ("Fuel", "Spork", "Fuel", "Fuel and spork")
    try:
        alone = []
        for cart in carts:
            host.retire(model)  # a fresh context: nothing held
            alone.append(host.rank(model, prompt("Stove", cart), "AB"))
        host.retire(model)
        assert host.rank(model, prompt("Tent", "Pegs"), "AB") != alone[0]  # another prompt first
        for cart, expected in zip(carts, alone, strict=True):  # then each shares more or less with the last
            assert host.rank(model, prompt("Stove", cart), "AB") == pytest.approx(expected, abs=1e-4)
    finally:
        host.close()
