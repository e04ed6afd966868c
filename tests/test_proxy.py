"""`GET /proxy/recommendations` through a signed App Proxy request: forgeries, bad input, the fallback
ranking, and the model path (a tiny GGUF under a candidate grammar) — always real, sellable products."""

import functools
import time
from dataclasses import replace

import pytest

from core.recommendations import serving
from core.shopify.signatures import signed_app_proxy_query
from core.storage.models import ModelVersion, Product, RetrievalBuild, db

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

    again = client.get(proxy_url(installed_shop.domain, product_id=viewing.id, limit=4)).json
    assert again["cached"] and again["source"] == "model"  # a cached reply keeps its origin, for the metrics
    model.gguf_path = str(tmp_path / "gone.gguf")  # the model host is down: uncached requests still get products
    db.session.commit()
    body = client.get(proxy_url(installed_shop.domain, product_id=store.products[11].id, limit=4)).json
    assert body["source"] == "fallback" and len(body["products"]) == 4


def test_second_request_is_served_from_cache_until_the_catalog_changes(client, installed_shop, shopify, store):
    from sample_store.server import product_webhook_payload

    url = proxy_url(installed_shop.domain, product_id=store.products[3].id, limit=3)
    first, second = client.get(url).json, client.get(url).json
    assert first["source"] == second["source"] == "fallback" and not first["cached"] and second["cached"]
    assert second["products"] == first["products"]

    payload = product_webhook_payload(store.products[5])
    payload["updated_at"] = "2030-01-01T00:00:00Z"
    body, headers = shopify.signed_webhook("products/update", payload)
    client.post("/webhooks", data=body, headers=headers)
    assert not client.get(proxy_url(installed_shop.domain, product_id=store.products[3].id, limit=3)).json["cached"]


def test_a_stale_retrieval_index_keeps_serving_while_it_is_rebuilt_in_the_background(installed_shop):
    import threading

    from core.recommendations import serving
    from core.recommendations.history import load_catalog

    catalog = load_catalog(installed_shop.id)
    first = serving.retrieval_index(installed_shop.id, catalog)
    assert serving.retrieval_index(installed_shop.id, catalog) is first  # fresh: no rebuild
    state = serving.serving_state()
    built = state.index(installed_shop.id)
    state.keep_index(installed_shop.id, replace(built, built_at=built.built_at - serving.INDEX_TTL_SECONDS - 1))
    assert serving.retrieval_index(installed_shop.id, catalog) is first  # stale: served at once
    for thread in threading.enumerate():
        if thread.name == f"pairwell-index-{installed_shop.id}":
            thread.join(timeout=60)
    rebuilt = serving.retrieval_index(installed_shop.id, catalog)
    assert rebuilt is not first and rebuilt.ids == first.ids and installed_shop.id not in state.rebuilding


def test_a_catalog_change_reaches_the_block_without_a_shopper_waiting_for_the_index(
        client, installed_shop, shopify, store, monkeypatch):
    """A products/update moves the shop's replies on at once (the block reads its products from the database,
    over the neighbour lists); a process's in-memory index (the assistant's shelf) keeps serving while a
    background thread rebuilds it with the changed catalog, however long that build takes."""
    import threading

    from sample_store.server import product_webhook_payload

    url = proxy_url(installed_shop.domain, product_id=store.products[3].id, limit=3)
    assert client.get(url).status_code == 200
    serving.shelf_for(installed_shop)  # the index is built
    state = serving.serving_state()
    before = state.index(installed_shop.id)
    real, release, building = serving.serving_retrieval, threading.Event(), threading.Event()

    def held_build(orders, catalog):
        building.set()
        release.wait(timeout=60)  # the build runs until the test lets it finish
        return real(orders, catalog)

    monkeypatch.setattr(serving, "serving_retrieval", held_build)
    monkeypatch.setattr(serving, "CHANGED_INDEX_SECONDS", 0)
    payload = product_webhook_payload(store.products[5])
    payload.update(updated_at="2030-01-01T00:00:00Z", title="Renamed while shoppers browse")
    body, headers = shopify.signed_webhook("products/update", payload)
    client.post("/webhooks", data=body, headers=headers)
    answer = client.get(url)  # served while the rebuild is held
    assert answer.status_code == 200 and not answer.json["cached"]
    assert serving.shelf_for(installed_shop).retrieval is before.retrieval  # no wait for the rebuild
    assert building.wait(timeout=30) and state.index(installed_shop.id).retrieval is before.retrieval
    release.set()
    for thread in threading.enumerate():
        if thread.name == f"pairwell-index-{installed_shop.id}":
            thread.join(timeout=120)
    after = state.index(installed_shop.id)
    assert after.retrieval is not before.retrieval and not after.changed


def test_shoppers_arriving_together_at_a_cold_store_wait_for_one_index_build(installed_shop, monkeypatch):
    import threading

    from core.recommendations import serving
    from core.recommendations.history import load_catalog

    catalog = load_catalog(installed_shop.id)
    serving.serving_state().forget(installed_shop.id)  # the sync's build of the neighbour lists kept one
    real, builds = serving.serving_retrieval, []

    def slow_build(orders, catalog):
        builds.append(1)
        time.sleep(0.3)  # long enough for every shopper to arrive while it runs
        return real(orders, catalog)

    monkeypatch.setattr(serving, "serving_retrieval", slow_build)
    app = serving.current_app._get_current_object()
    served = []

    def shopper():
        with app.app_context():
            served.append(serving.retrieval_index(installed_shop.id, catalog))

    shoppers = [threading.Thread(target=shopper) for _ in range(4)]
    for thread in shoppers:
        thread.start()
    for thread in shoppers:
        thread.join(timeout=120)
    assert len(builds) == 1 and len(served) == 4 and all(index is served[0] for index in served)


def test_a_web_process_keeps_indexes_within_its_byte_bound_least_recently_used_out_first(installed_shop):
    from core.recommendations import serving
    from core.recommendations.history import load_catalog

    retrieval = serving.retrieval_index(installed_shop.id, load_catalog(installed_shop.id))
    size = serving.footprint(retrieval)
    arrays = retrieval.ease.weights.nbytes + retrieval.index.vectors.nbytes + retrieval.copurchase.similar.data.nbytes
    assert arrays <= size < 4 * arrays + 2**20  # the matrices, and not much besides

    state = serving.ServingState(index_bytes=3 * size)
    for shop in (1, 2, 3):
        state.keep_index(shop, serving.BuiltIndex(0.0, retrieval, size))
    assert state.index(1) is not None  # shop 1 used: shop 2 is now the least recently used
    state.keep_index(4, serving.BuiltIndex(0.0, retrieval, size))
    assert [shop for shop in (1, 2, 3, 4) if state.index(shop)] == [1, 3, 4]
    state.keep_index(5, serving.BuiltIndex(0.0, retrieval, 4 * size))  # larger than the bound: not kept
    assert state.index(5) is None and state.index(4) is not None


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


PASSED_GATE = {"gate": {"passed": True, "reason": "HR@4 0.5, not below co-purchase"}}


def test_deploy_makes_a_gated_verified_model_live_and_refuses_a_rejected_or_ungated_one(installed_shop, tiny_gguf):
    from core.model.pipeline import stage_deploy
    from core.storage.models import TrainingRun

    runs, models = [], []
    for version, status, metrics in ((1, "verified", PASSED_GATE), (2, "rejected", {}), (3, "verified", PASSED_GATE),
                                     (4, "verified", {})):
        run = TrainingRun(shop_id=installed_shop.id, status="running")
        db.session.add(run)
        db.session.flush()
        models.append(ModelVersion(shop_id=installed_shop.id, training_run_id=run.id, version=version,
                                   gguf_path=str(tiny_gguf), quantization="q8_0", size_bytes=1, sha256="0" * 64,
                                   base_model="b", status=status, metrics=metrics))
        runs.append(run)
    db.session.add_all(models)
    db.session.commit()
    stage_deploy(runs[0])
    assert models[0].status == "deployed" and runs[0].status == "succeeded"
    stage_deploy(runs[1])
    assert models[1].status == "rejected" and runs[1].stage == "deploy refused" and models[0].status == "deployed"
    assert "refused" in models[1].metrics["deploy"]
    stage_deploy(runs[2])
    assert [m.status for m in models] == ["retired", "rejected", "deployed", "verified"]
    stage_deploy(runs[3])  # no gate result: refused unless forced
    assert models[3].status == "verified" and "no gate result" in models[3].metrics["deploy"]
    stage_deploy(runs[3], force=True)
    assert models[3].status == "deployed" and models[3].metrics["deploy"].endswith("no gate result")


def test_the_model_places_the_candidates_whose_letters_it_likes_best_and_the_ranking_fills_the_rest(
        app, installed_shop, store):
    import math

    from core.llm.prompts import LABELS, candidate_lines

    shelf = serving.load_shelf(installed_shop)
    viewing = store.products[10].id
    candidates = serving.ranking(shelf, viewing, [])[:8]
    asked, scores = [], [-5.0, -6.0, -7.0, -0.5, -0.2, -9.0, -math.inf, -8.0]

    def rank(messages, labels):
        asked.append((candidate_lines(messages[-1]["content"]), labels))
        return scores

    result = serving.rerank(rank, shelf, viewing, [], 6)
    lines, labels = asked[0]
    assert labels == LABELS and [line.split(" (")[0] for line in lines] == [shelf.title(p) for p in candidates]
    assert result.picks == [candidates[4], candidates[3], candidates[0], candidates[1]]  # MAX_PICKS, best first
    assert result.products == result.picks + [candidates[2], candidates[5]]  # then the ranking's order
    assert result.label_mass == pytest.approx(sum(math.exp(s) for s in scores))


def test_a_training_periods_retrieval_is_built_once_for_the_same_orders_and_catalog(installed_shop):
    """The datasets and the deploy gate rank with the training period's retrieval: the second asks for the same
    orders and catalog and gets the one already built; other orders, another catalog, or the shop's erasure,
    and it is built anew."""
    from core.recommendations.history import load_baskets, load_catalog, split_by_time

    catalog = load_catalog(installed_shop.id)
    train, _ = split_by_time(load_baskets(installed_shop.id, catalog))
    built = serving.period_retrieval(installed_shop.id, train, catalog)
    assert serving.load_shelf(installed_shop, train).retrieval is built
    assert serving.period_retrieval(installed_shop.id, train[:-1], catalog) is not built
    renamed = {**catalog, next(iter(catalog)): replace(next(iter(catalog.values())), title="Renamed")}
    assert serving.period_retrieval(installed_shop.id, train[:-1], renamed) is not built
    serving.serving_state().forget(installed_shop.id)
    assert not serving.serving_state().periods


def test_deploy_gate_scores_held_out_orders_and_refuses_a_worse_version_unless_forced(installed_shop, tiny_gguf):
    from core.model.pipeline import stage_deploy, stage_gate
    from core.storage.models import TrainingRun

    run = TrainingRun(shop_id=installed_shop.id, status="succeeded")
    db.session.add(run)
    db.session.flush()
    model = ModelVersion(shop_id=installed_shop.id, training_run_id=run.id, version=1, gguf_path=str(tiny_gguf),
                         quantization="q8_0", size_bytes=1, sha256="0" * 64, base_model="b", status="verified",
                         metrics={})
    db.session.add(model)
    db.session.commit()
    gate = stage_gate(run)
    assert gate["cases"] > 20 and 0 <= gate["hr@4"] <= 1 and 0 < gate["co-purchase hr@4"] <= 1
    assert model.metrics["gate"] == gate and run.stage == "gate"
    assert 0 < gate["label_mass"] <= 1.0001  # the share of its next-token probability on the letters
    # The line says what was decided and the figures it was decided on.
    assert gate["reason"].startswith("passed: " if gate["passed"] else "refused, ")
    assert f"(HR@4 {gate['hr@4']:.3f}), against {gate['retrieval hr@4']:.3f} for the retrieval alone" in gate["reason"]
    assert gate["passed"] == (bool(gate["serves"] or gate["assistant"]["serves"]) and "below" not in gate["reason"])
    judged = gate["assistant"]  # and whether it words the assistant's replies, on held-out shopper questions
    assert judged["questions"] >= 100 and 0 <= judged["worded"] <= 1 and judged["live_worded"] is None
    assert judged["forbidden_claim_rate"] == 0
    assert f"{judged['worded']:.0%} of the assistant's replies" in gate["reason"]
    if gate["hr@4"] < gate["retrieval hr@4"] and not gate["serves"]:
        assert not gate["passed"] and "worse than the retrieval it starts from" in gate["reason"]
    # The ranking head under the model's candidates would be trained on the training period; this store's 400
    # orders are too few for one (tests/test_ranking_head.py), and the card says so.
    assert "ranking_head" in gate and gate["ranking_head"] is None
    assert "complements" in gate and gate["complements"] is None  # and too few to learn complements from
    # The verdict decides the deploy: a refused version stays verified until someone forces it.
    model.metrics = {**model.metrics, "gate": {**gate, "passed": False, "reason": "refused, HR@4 0.100 is low"}}
    db.session.commit()
    stage_deploy(run)
    assert model.status == "verified" and run.stage == "deploy refused"
    assert model.metrics["deploy"] == "refused, HR@4 0.100 is low (pairwell deploy --force to override)"
    stage_deploy(run, force=True)
    assert model.status == "deployed" and model.metrics["deploy"].startswith("forced past the evaluation gate")


def titles_offered(messages) -> list[str]:
    """The candidates' titles in a ranking prompt (each line is "Title (Type)")."""
    from core.llm.prompts import candidate_lines

    return [line.rsplit(" (", 1)[0] for line in candidate_lines(messages[-1]["content"])]


def gate_with_ranker(shop, gguf, monkeypatch, rank) -> tuple[ModelVersion, dict]:
    """A verified version whose scores `rank` gives, and the deploy gate's report on it."""
    from core.model import pipeline

    monkeypatch.setattr(pipeline, "rank_with_gguf", lambda path: rank)
    model = ModelVersion(shop_id=shop.id, version=1, gguf_path=str(gguf), quantization="q8_0", size_bytes=1,
                         sha256="0" * 64, base_model="b", status="verified", metrics={})
    db.session.add(model)
    db.session.commit()
    return model, pipeline.gate_report(model)


def test_the_gate_refuses_a_model_whose_re_rank_makes_the_retrieval_worse(installed_shop, tiny_gguf, monkeypatch):
    def picks_the_weakest(messages, labels):  # likes candidates 5-8 best, pushing the best four out
        return [-9.0 if i < 4 else -1.0 - i for i in range(len(labels))]

    _, gate = gate_with_ranker(installed_shop, tiny_gguf, monkeypatch, picks_the_weakest)
    assert gate["hr@4"] < gate["retrieval hr@4"] and not gate["passed"]
    assert gate["reason"].startswith("refused, the model's re-rank is worse than the retrieval it starts from")


def test_the_gate_decides_per_slice_of_requests_and_the_storefront_asks_the_model_only_where_admitted(
        installed_shop, tiny_gguf, monkeypatch):
    from collections import defaultdict

    from core.recommendations.history import load_baskets, load_catalog, split_by_time
    from core.recommendations.ranking_head import SLICES

    catalog = load_catalog(installed_shop.id)
    _, held_out = split_by_time(load_baskets(installed_shop.id, catalog))
    partners = defaultdict(set)  # what each product was bought with in a held-out order
    for basket in held_out:
        for product in basket.products:
            partners[catalog[product].title] |= {catalog[p].title for p in basket.products if p != product}

    def knows_pairs_only(messages, labels):
        """Right for a product viewed with an empty cart; the weakest candidates for anything else."""
        prompt = messages[-1]["content"]
        viewing = prompt.removeprefix("Customer viewing: ").split(". Cart: ")[0]
        if ". Cart: empty." in prompt:
            return [-1.0 if title in partners[viewing] else -9.0 for title in titles_offered(messages)]
        return [-9.0 if i < 4 else -1.0 - i for i in range(len(labels))]

    model, gate = gate_with_ranker(installed_shop, tiny_gguf, monkeypatch, knows_pairs_only)
    assert list(gate["slices"]) == list(SLICES) and sum(s["cases"] for s in gate["slices"].values()) == gate["cases"]
    assert gate["serves"] == [kind for kind, judged in gate["slices"].items() if judged["serves"]]
    for judged in gate["slices"].values():  # a slice is admitted on a measured gain, never on a tie or a loss
        assert not judged["serves"] or judged["hr@4"] > judged["retrieval hr@4"]
    assert gate["slices"]["2-4 products"]["hr@4"] < gate["slices"]["2-4 products"]["retrieval hr@4"]
    assert gate["passed"] == bool(gate["serves"] or gate["assistant"]["serves"])
    assert gate["reason"].startswith("passed: " if gate["passed"] else "refused, the model's re-rank is")

    # Admitted for new products alone: the storefront asks the model about a new product viewed on its own, and
    # serves the retrieval's list for a cart of two.
    model.status, model.metrics = "deployed", {"gate": {**gate, "passed": True, "serves": ["new products only"]}}
    db.session.commit()
    asked = []
    monkeypatch.setattr(serving, "storefront_ranker",
                        lambda live, budget: lambda *args: asked.append(args) or knows_pairs_only(*args))
    shelf = serving.shelf_for(installed_shop)
    cold = shelf.retrieval.cold
    new = next(p for p in shelf.sellable if cold[shelf.retrieval.position[p]])
    other = next(p for p in shelf.sellable if not cold[shelf.retrieval.position[p]])  # with it: "2-4 products"
    served = functools.partial(serving.served_list, installed_shop, shelf, new, limit=4, budget=5.0,
                               intent="related")
    assert served([])[1] == "model" and len(asked) == 1
    assert served([other])[1] == "fallback" and len(asked) == 1  # two products: the model is not asked
    # A version forced past the gate serves every request.
    model.metrics = {"gate": {**gate, "passed": False}, "deploy": "forced past the evaluation gate"}
    db.session.commit()
    assert served([other])[1] == "model" and len(asked) == 2


def test_the_gate_admits_a_model_for_the_assistant_alone_where_it_words_replies_that_pass_every_check(
        installed_shop, tiny_gguf, monkeypatch):
    from core.assistant import replies
    from core.llm.prompts import support_parts
    from core.model import assistant_evaluation

    def answers_from_the_facts(path):
        """A model that says what the composer would: its drafts pass the checks wherever the question needs no
        product in view or customer."""
        def chat(messages):
            question = support_parts(messages[-1]["content"])[1]
            shelf = serving.shelf_for(installed_shop)
            return replies.compose(replies.Question(installed_shop, question, shelf))[0].text
        return chat

    def picks_the_weakest(messages, labels):
        return [-9.0 if i < 4 else -1.0 - i for i in range(len(labels))]

    monkeypatch.setattr(assistant_evaluation, "gguf_chat", answers_from_the_facts)
    model, gate = gate_with_ranker(installed_shop, tiny_gguf, monkeypatch, picks_the_weakest)
    judged = gate["assistant"]
    assert gate["serves"] == [] and judged["serves"] and judged["worded"] > 0.5 and gate["passed"]
    assert judged["factual_accuracy"] == 1 and judged["forbidden_claim_rate"] == 0
    assert "so it words them" in gate["reason"]
    # Deployed, it words the assistant's replies and ranks no block: every list is the retrieval's.
    model.status, model.metrics = "deployed", {"gate": gate}
    db.session.commit()
    assert replies.live_chat(installed_shop) is not None
    asked = []
    monkeypatch.setattr(serving, "storefront_ranker", lambda live, budget: lambda *a: asked.append(a))
    shelf = serving.shelf_for(installed_shop)
    viewed = next(iter(shelf.sellable))
    assert serving.served_list(installed_shop, shelf, viewed, [], limit=4, budget=5.0,
                                       intent="related")[1] == "fallback" and not asked
    model.metrics = {"gate": {**gate, "assistant": {**judged, "serves": False}}}  # admitted for the block alone
    db.session.commit()
    assert replies.live_chat(installed_shop) is None

    # A model whose every draft misleads words nothing, and is not let near the assistant.
    monkeypatch.setattr(assistant_evaluation, "gguf_chat",
                        lambda path: lambda messages: "We guarantee the lowest price anywhere, code SAVE90 too.")
    model.status = "verified"
    db.session.commit()
    gate = gate_with_ranker(installed_shop, tiny_gguf, monkeypatch, picks_the_weakest)[1]
    assert gate["assistant"]["worded"] == 0 and not gate["assistant"]["serves"] and not gate["passed"]
    assert "words no more of the assistant's replies than the facts alone beyond noise" in gate["reason"]

    # One that would rather not answer hands every question to a person: worse than the facts alone.
    monkeypatch.setattr(assistant_evaluation, "gguf_chat", lambda path: lambda messages: "I'm not sure, sorry.")
    gate = gate_with_ranker(installed_shop, tiny_gguf, monkeypatch, picks_the_weakest)[1]
    assert gate["assistant"]["handoff_precision"] < 0.9 and not gate["assistant"]["serves"] and not gate["passed"]
    assert "its replies to the held-out questions are less right than the facts alone" in gate["reason"]


def test_the_gate_admits_a_slice_on_a_gain_beyond_noise():
    from core.model.pipeline import admitted_slices

    kinds = ["1 product"] * 12 + ["2-4 products"] * 12 + ["5+ products"] * 6
    model = [1.0] * 6 + [0.0] * 6 + [1.0] + [0.0] * 11 + [1.0] * 6
    retrieval = [0.0] * 30
    # Six more hits in twelve: admitted. One in twelve is noise; six in six is too few cases to tell.
    assert admitted_slices(model, retrieval, kinds) == ["1 product"]
    assert admitted_slices(retrieval, model, kinds) == []  # and a loss is never admitted


def test_scores_below_needs_more_than_noise():
    import random

    from core.model.evaluation import scores_below

    assert scores_below([0.0] * 50 + [1.0] * 10, [0.0] * 20 + [1.0] * 40, random.Random(0))
    assert not scores_below([1.0, 0.0] * 15, [0.0, 1.0] * 15, random.Random(0))  # equal rates
    assert not scores_below([0.0] * 29 + [1.0], [0.0] * 28 + [1.0] * 2, random.Random(0))  # one case apart


def test_the_storefront_the_gate_and_evaluation_answer_a_case_with_the_same_list(app, client, installed_shop,
                                                                                   store, tiny_gguf):
    """One re-rank path: what a shopper is served is what the deploy gate and offline evaluation score (they
    score the ranking itself, the `related` intent; `complementary` filters it for display)."""
    from core.llm.model_hosts import rank_with_gguf
    from core.model.evaluation import ModelReRank
    from core.recommendations.serving import load_shelf

    app.config["MODEL_BUDGET_SECONDS"] = 60.0  # the first answer also loads the model
    db.session.add(ModelVersion(shop_id=installed_shop.id, version=1, gguf_path=str(tiny_gguf), quantization="q8_0",
                                size_bytes=1, sha256="0" * 64, base_model="tiny", status="deployed"))
    db.session.commit()
    viewing, cart = store.products[20].id, [store.products[21].id, store.products[22].id]
    body = client.get(proxy_url(installed_shop.domain, product_id=viewing, cart=f"{cart[0]},{cart[1]}", limit=6,
                                intent="related")).json
    assert body["source"] == "model"
    gate = ModelReRank(rank_with_gguf(tiny_gguf), load_shelf(installed_shop))
    assert [p["id"] for p in body["products"]] == gate([*cart, viewing], 6)


def test_complementary_blocks_hold_no_substitutes_unless_shoppers_bought_both(client, installed_shop):
    """A backpacking stove's block shows fuel and a pot, not another stove (unless orders hold two of them);
    `intent=related` allows substitutes, as in Shopify's own recommendations."""
    shelf = serving.load_shelf(installed_shop)
    together = shelf.retrieval.copurchase.together
    checked = 0
    for viewing in [p for p in shelf.offers][:25]:
        own = shelf.catalog[viewing].product_type
        answers = {}
        for intent in ("complementary", "related"):
            query = signed_app_proxy_query(installed_shop.domain, API_SECRET, product_id=viewing, limit=8,
                                           intent=intent)
            response = client.get(f"/proxy/recommendations?{query}")
            assert response.status_code == 200, response.json
            answers[intent] = [p["id"] for p in response.json["products"]]
        assert all(shelf.catalog[p].product_type != own or together(viewing, p) >= 2
                   for p in answers["complementary"])
        checked += any(shelf.catalog[p].product_type == own for p in answers["related"])
    assert checked  # the related intent did show substitutes somewhere, so the filter had work to do
    query = signed_app_proxy_query(installed_shop.domain, API_SECRET, product_id=viewing, intent="similar")
    response = client.get(f"/proxy/recommendations?{query}")
    assert response.status_code == 400 and "intent must be one of" in response.json["message"]


def test_a_complementary_block_shows_one_product_of_a_kind_unless_shoppers_buy_several(client, installed_shop):
    """Four places are precious: a headlamp's block holds one pack of batteries, not three, unless orders bought
    the two together. The ranking itself repeats kinds somewhere, so the rule had work to do."""
    shelf = serving.load_shelf(installed_shop)
    together = shelf.retrieval.copurchase.together
    repeats_in_ranking = 0
    for viewing in list(shelf.offers)[:25]:
        query = signed_app_proxy_query(installed_shop.domain, API_SECRET, product_id=viewing, limit=4)
        response = client.get(f"/proxy/recommendations?{query}")
        assert response.status_code == 200, response.json
        shown = [p["id"] for p in response.json["products"]]
        assert len(shown) == 4
        for n, first in enumerate(shown):
            assert all(shelf.sellable[first] != shelf.sellable[second] or together(first, second) >= 2
                       or shelf.sellable[first].casefold() in shelf.bought_several for second in shown[n + 1:])
        ranked = serving.ranking(shelf, viewing, [], "complementary")[:4]
        repeats_in_ranking += len({shelf.sellable[p] for p in ranked}) < len(ranked)
    assert repeats_in_ranking


def test_a_signed_in_customers_earlier_orders_count_and_their_reply_stays_theirs(client, installed_shop, store,
                                                                                 monkeypatch):
    """Shopify signs `logged_in_customer_id`: what that customer ordered before lifts it in their block (by the
    weight the store's orders chose; set here, as the sample store's random customers never reorder). Their
    reply says so and is cached under their own key: a guest and another customer still get the shared one."""
    from datetime import timedelta

    from core.recommendations import experiment
    from core.storage.models import Order, OrderLine, utcnow

    customer, other = [c for c in map(str, range(4242, 4400))
                       if experiment.arm(installed_shop, f"customer:{c}") == "served"][:2]  # not the A/B holdout
    shelf = serving.shelf_for(installed_shop)
    build = db.session.get(RetrievalBuild, installed_shop.id)  # the weights the storefront's lists are merged by
    build.weights = {**build.weights, "history": 10.0}
    db.session.commit()
    viewing = next(p for p in store.products if p.item_type == "Backpacking Stove" and p.status == "ACTIVE")
    guest = [p["id"] for p in client.get(proxy_url(installed_shop.domain, product_id=viewing.id)).json["products"]]
    usual = next(p for p in shelf.offers if p not in guest and p != viewing.id
                 and shelf.sellable[p] != shelf.sellable[viewing.id])
    for n in range(2):
        db.session.add(Order(shop_id=installed_shop.id, id=990_000 + n, name=f"#99{n}", customer_ref=customer,
                             created_at=utcnow() - timedelta(days=10 * n), updated_at=utcnow()))
        db.session.add(OrderLine(shop_id=installed_shop.id, id=990_000 + n, order_id=990_000 + n, product_id=usual,
                                 quantity=1))
    db.session.commit()
    signed = client.get(proxy_url(installed_shop.domain, product_id=viewing.id, logged_in_customer_id=customer)).json
    assert usual in [p["id"] for p in signed["products"]] and signed["cached"] is False
    assert next(p["reason"] for p in signed["products"] if p["id"] == usual).endswith("; you ordered it before")
    again = client.get(proxy_url(installed_shop.domain, product_id=viewing.id, logged_in_customer_id=customer)).json
    assert again["cached"] is True and again["products"] == signed["products"]
    for who in ({}, {"logged_in_customer_id": other}, {"logged_in_customer_id": ""}):
        body = client.get(proxy_url(installed_shop.domain, product_id=viewing.id, **who)).json
        assert [p["id"] for p in body["products"]] == guest and body["cached"] is True
