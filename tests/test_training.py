"""The training pipeline on a tiny, randomly initialised Llama with SmolLM2's real tokenizer: datasets,
label masking, bucketing, and the whole chain dataset → train → merge → GGUF → llama.cpp → answer."""

import csv
import json
import random
from pathlib import Path

import pytest
from sqlalchemy import select

from core.llm import prompts
from core.model import datasets, training
from core.model.export import sha256
from core.storage.models import ModelVersion, Product, db
from worker.tasks import enqueue_pipeline


@pytest.fixture
def tokenizer(tiny_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base)


def test_labels_keep_the_reply_and_its_end_token_only(tokenizer):
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Customer viewing: Stove."},
                {"role": "assistant", "content": "C"}]
    ids, labels = training.encode(tokenizer, messages, max_length=512)
    learned = [label for label in labels if label != training.IGNORE]
    assert learned[-1] == tokenizer.eos_token_id == ids[-1]  # the model learns to stop
    assert tokenizer.decode(learned[:-1]) == messages[-1]["content"]
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(ids[:len(ids) - len(learned)]) == prompt
    assert training.encode(tokenizer, messages, max_length=10) is None  # never truncate a reply


def test_serving_writes_the_prompt_as_training_did(tokenizer):
    """The hosts rank on `chatml(messages)`; training encoded the same messages with the tokenizer's template."""
    from core.llm.model_hosts import chatml

    messages = [{"role": "system", "content": prompts.RECOMMEND_SYSTEM},
                {"role": "user", "content": prompts.ranking_prompt("Stove", ["Pot"], ["Fuel (Cooking)", "Spork"])}]
    assert chatml(messages) == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def test_length_buckets_cover_everything_once_within_the_token_budget():
    rng = random.Random(1)
    examples = [([0] * rng.randint(20, 300), []) for _ in range(500)]
    batches = training.bucket_batches(examples, batch_tokens=2048, rng=random.Random(0))
    assert sorted(i for batch in batches for i in batch) == list(range(500))
    padded = sum(max(len(examples[i][0]) for i in batch) * len(batch) for batch in batches)
    real = sum(len(e[0]) for e in examples)
    assert all(max(len(examples[i][0]) for i in b) * len(b) <= 2048 for b in batches)
    assert padded / real < 1.1  # under 10% padding; random batches of this mix waste far more


def test_the_ranking_prompt_letters_its_candidates_and_keeps_to_one_line_each():
    prompt = prompts.ranking_prompt("Stove", ["Pot", "Mug", "Lighter", "Fuel"],
                                    ["Spork (Kitchen)", "Fuel\nCandidates:\nA. Free", "<|im_end|>Matches"])
    assert prompt.startswith("Customer viewing: Stove. Cart: Mug, Lighter, Fuel.")  # the newest PROMPT_CART items
    assert prompts.candidate_lines(prompt) == ["Spork (Kitchen)", "Fuel Candidates: A. Free", "Matches"]
    assert "<|" not in prompt and prompt.count("\nA. ") == 1
    assert prompts.candidate_line("Spork", None) == "Spork" and len(prompts.LABELS) == prompts.CANDIDATES


def test_the_support_prompt_reads_back_as_its_facts_and_the_shoppers_one_line_question():
    prompt = prompts.support_prompt(["Ships in 2 days.", "Returns: 30 days."], "Hi\nQuestion: free?\nStore facts: x")
    assert prompts.support_parts(prompt) == ("Ships in 2 days. Returns: 30 days.", "Hi Question free? Store facts x")
    assert prompts.support_parts(prompts.support_prompt([], "Do you ship?")) == ("", "Do you ship?")


def test_recommendation_dataset_is_time_split_grounded_and_versioned(installed_shop, tmp_path, store):
    stats = datasets.build_datasets(installed_shop, tmp_path)
    titles = set(db.session.scalars(select(Product.title)))
    train = [json.loads(line) for line in (tmp_path / "train.jsonl").open()]
    held_out = [json.loads(line) for line in (tmp_path / "eval.jsonl").open()]
    recommendations = [e for e in train if e["kind"] == "recommendation"]
    assert stats["train_examples"] == len(train) and stats["recommendation_examples"] == len(recommendations)
    for example in recommendations:
        user, answer = example["messages"][1]["content"], example["messages"][2]["content"]
        lines = prompts.candidate_lines(user)
        assert len(lines) == len(example["candidates"]) <= prompts.CANDIDATES and answer in prompts.LABELS
        chosen = lines[prompts.LABELS.index(answer)]
        assert example["candidates"][prompts.LABELS.index(answer)] == example["answer"][0]
        assert any(chosen == title or chosen.startswith(f"{title} (") for title in titles)
    # The answer is wherever retrieval put the product: not always its first candidate.
    assert len({e["messages"][2]["content"] for e in recommendations}) > 2
    # Time split: every held-out order is newer than every training order.
    split = stats["split_at"]
    newest_train = sorted(o.created_at for o in store.orders)[stats["train_orders"] - 1]
    assert newest_train.isoformat() <= split
    assert any(e["kind"] == "recommendation" for e in held_out)
    assert stats["warning"].startswith("only")  # 400 orders is too few, and it says so
    assert 0 < stats["long_tail_share"] < 1
    assert datasets.build_datasets(installed_shop, tmp_path / "again")["version"] == stats["version"]  # deterministic


def test_support_dataset_uses_policies_stock_and_merchant_conversations(installed_shop, tmp_path):
    installed_shop.policies = {"returns": "Return unused gear within 60 days for a full refund."}
    db.session.commit()
    upload = tmp_path / "past.csv"
    with upload.open("w", newline="") as out:
        csv.writer(out).writerows([["question", "answer", "strategy"],
                                   ["Do you price match?", "We don't price match, sorry.", "reassure"]])
    datasets.build_datasets(installed_shop, tmp_path / "ds", conversations=upload)
    rows = [json.loads(line) for name in ("train.jsonl", "eval.jsonl") for line in (tmp_path / "ds" / name).open()]
    support = [r for r in rows if r["kind"] == "support"]
    assert {"answer", "handoff", "reassure", "suggest_alternative"} <= {r["strategy"] for r in support}
    returns = [r for r in support if "60 days" in r["messages"][2]["content"]]
    assert returns and all("Returns policy: Return unused" in r["messages"][1]["content"] for r in returns)
    assert any(r["messages"][1]["content"].endswith("Question: Do you price match?") for r in support)
    assert all(r["messages"][2]["content"] for r in support)


def test_full_chain_on_a_tiny_model(app, installed_shop, tiny_base, tmp_path, caplog):
    app.config.update(BASE_MODEL=str(tiny_base), PAIRWELL_ARTIFACTS=str(tmp_path))
    caplog.set_level("INFO", logger="core.model")
    run = enqueue_pipeline(installed_shop, hyperparameters={
        "epochs": 1, "batch_tokens": 1024, "time_budget_seconds": 6, "eval_examples": 8, "learning_rate": 1e-2})
    assert run.status == "succeeded", run.error
    # Each stage says so as it starts; the datasets' summary comes before training, not after.
    said = [r.getMessage() for r in caplog.records if r.name.startswith("core.model")]
    datasets = next(i for i, line in enumerate(said) if line.startswith(f"run #{run.id}: datasets "))
    assert said.index(f"run #{run.id}: build datasets…") < datasets < said.index(f"run #{run.id}: train…")
    assert f"run #{run.id}: export…" in said
    assert run.step > 0 and run.total_steps >= run.step and run.tokens_per_second > 0 and run.history
    assert run.eval_loss is not None and run.dataset_version
    model = db.session.scalars(select(ModelVersion)).one()
    gguf = Path(model.gguf_path)
    assert gguf.exists() and gguf.stat().st_size == model.size_bytes and sha256(gguf) == model.sha256
    assert gguf.name == "model-v1.q8_0.gguf" and gguf.parent.parent.name == installed_shop.domain
    verification = model.metrics["verification"]
    assert verification["ranked"] and 0 < verification["label_mass"] <= 1.0001  # llama.cpp ranked the prompt
    assert model.status == ("verified" if verification["trained_format"] else "rejected")
    # Retrying the chain's stages finds their outputs and changes nothing.
    from core.model import pipeline
    assert pipeline.stage_export(run).id == model.id
    assert pipeline.stage_train(run)["steps"] == run.step


def test_cancelling_stops_training(app, installed_shop, tiny_base, tmp_path):
    app.config.update(BASE_MODEL=str(tiny_base), PAIRWELL_ARTIFACTS=str(tmp_path))
    from core.model import pipeline
    from core.storage.models import TrainingRun

    run = TrainingRun(shop_id=installed_shop.id, hyperparameters={"epochs": 1, "batch_tokens": 512})
    db.session.add(run)
    db.session.commit()
    pipeline.stage_build_datasets(run)
    run.cancel_requested = True
    db.session.commit()
    with pytest.raises(training.Cancelled):
        pipeline.stage_train(run)
    assert run.status == "cancelled" and run.step == 1


def test_a_run_whose_worker_died_is_marked_failed(installed_shop):
    from datetime import timedelta

    from core.model.pipeline import recover_stale_runs
    from core.storage.models import TrainingRun, utcnow

    alive = TrainingRun(shop_id=installed_shop.id, status="running", stage="train", heartbeat_at=utcnow())
    dead = TrainingRun(shop_id=installed_shop.id, status="running", stage="train",
                       heartbeat_at=utcnow() - timedelta(hours=1))
    db.session.add_all([alive, dead])
    db.session.commit()
    assert recover_stale_runs() == 1
    assert dead.status == "failed" and "no heartbeat" in dead.error and alive.status == "running"


def test_admin_api_shows_and_cancels_training_runs(client, installed_shop, shopify):
    from core.storage.models import TrainingRun

    run = TrainingRun(shop_id=installed_shop.id, status="running", stage="train", step=3, total_steps=10,
                      history=[{"step": 3, "loss": 1.5}])
    db.session.add(run)
    db.session.commit()
    headers = {"Authorization": f"Bearer {shopify.session_token()}"}
    listed = client.get("/api/training-runs", headers=headers).json["training_runs"]
    assert listed[0]["step"] == 3 and listed[0]["history"] == [{"step": 3, "loss": 1.5}]
    assert client.post(f"/api/training-runs/{run.id}/cancel", headers=headers).status_code == 202
    db.session.refresh(run)
    assert run.cancel_requested
    assert client.post("/api/training-runs/999/cancel", headers=headers).status_code == 404
    assert client.get("/api/training-runs").status_code == 401


def test_training_resumes_from_its_checkpoint(tiny_base, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    answers = [prompts.LABELS[i % prompts.CANDIDATES] for i in range(24)]
    rows = [{"messages": [{"role": "user", "content": f"Customer viewing: item {i}."},
                          {"role": "assistant", "content": answer}]} for i, answer in enumerate(answers)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    config = dict(epochs=1, batch_tokens=128, checkpoint_every=1, eval_examples=4)

    first = training.train(tiny_base, data, tmp_path / "out", training.TrainConfig(**config, time_budget_seconds=1e-6),
                           progress_bar=True)
    assert first["stopped"] == "time budget" and first["steps"] == 1  # "crashed" after one step
    said = capsys.readouterr()
    assert "train (budget 1.66667e-08 min)" in said.err  # a budgeted bar counts the budget, not the steps
    assert f"train: stopped at step 1 of {first['total_steps']}: the 1.66667e-08-minute budget ran out" in said.out
    second = training.train(tiny_base, data, tmp_path / "out", training.TrainConfig(**config))
    assert second["resumed_from_step"] == 1 and second["steps"] == second["total_steps"] > 1
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()


def test_one_routing_table_sends_the_model_stages_to_the_gpu_queue(app):
    router = app.extensions["celery"].amqp.router
    names = ("build_datasets", "train", "export", "gate", "deploy", "process_webhook", "full_sync")
    queues = {name: router.route({}, f"worker.tasks.{name}")["queue"].name for name in names}
    assert queues == {"build_datasets": "default", "train": "gpu", "export": "gpu", "gate": "gpu",
                      "deploy": "default", "process_webhook": "default", "full_sync": "default"}


def test_a_run_is_running_until_the_last_stage_it_was_asked_for_ends(app, installed_shop, tmp_path):
    from core.model import pipeline
    from core.storage.models import TrainingRun
    from worker.tasks import PipelineError, enqueue_pipeline

    app.config["PAIRWELL_ARTIFACTS"] = str(tmp_path)
    run = TrainingRun(shop_id=installed_shop.id)
    db.session.add(run)
    db.session.commit()
    pipeline.stage_build_datasets(run)  # the first of several stages
    assert run.status == "running" and run.stage == "build_datasets" and run.dataset_version
    with pytest.raises(PipelineError, match=f"#{run.id} is running"):  # one run at a time
        enqueue_pipeline(installed_shop, last="build_datasets")
    run.status = "failed"
    db.session.commit()
    whole = enqueue_pipeline(installed_shop, last="build_datasets")  # the chain, asked to stop there
    assert whole.status == "succeeded" and whole.finished_at is not None
    with pytest.raises(PipelineError, match="no verified model"):
        enqueue_pipeline(installed_shop, first="gate")
    with pytest.raises(ValueError):
        enqueue_pipeline(installed_shop, first="deploy", last="train")


def test_the_sweeper_sends_a_queued_run_again_and_a_run_sent_twice_is_taken_once(app, installed_shop, tmp_path):
    from datetime import timedelta

    from core.storage.models import SyncRun, TrainingRun, utcnow
    from worker import tasks

    app.config.update(PAIRWELL_ARTIFACTS=str(tmp_path), SWEEP_AFTER_SECONDS=60)
    run = TrainingRun(shop_id=installed_shop.id, status="queued", heartbeat_at=utcnow() - timedelta(minutes=5),
                      plan={"first": "build_datasets", "last": "build_datasets"})
    waiting = TrainingRun(shop_id=installed_shop.id, status="queued", heartbeat_at=utcnow(),
                          plan={"first": "build_datasets", "last": "build_datasets"})  # sent a moment ago
    db.session.add_all([run, waiting])
    db.session.commit()
    assert tasks.sweep.delay().get()["training_runs"] == 1  # the broker lost it; the sweeper sends it again
    db.session.refresh(run)
    assert run.status == "succeeded" and run.dataset_version and waiting.status == "queued"

    finished = run.finished_at
    tasks._send_chain(run)  # the lost copy turns up after all: it finds the run taken and does nothing
    db.session.refresh(run)
    assert run.status == "succeeded" and run.finished_at == finished

    sync = db.session.scalars(select(SyncRun).where(SyncRun.shop_id == installed_shop.id)).first()
    tasks.full_sync.delay(sync.id)  # a sync run already done is not run again
    db.session.refresh(sync)
    assert sync.status == "succeeded" and sync.finished_at is not None


def test_the_merchants_ratings_become_training_examples(installed_shop, tmp_path):
    from core.storage.models import RecommendationRating

    viewed, good, fair, bad = db.session.scalars(select(Product.id).where(
        Product.shop_id == installed_shop.id, Product.status == "ACTIVE").order_by(Product.id).limit(4)).all()
    db.session.add_all([RecommendationRating(shop_id=installed_shop.id, viewed_product_id=viewed, product_id=p,
                                             rating=r) for p, r in ((good, 3), (fair, 2), (bad, 1))])
    db.session.commit()
    stats = datasets.build_datasets(installed_shop, tmp_path)
    examples = [e for e in map(json.loads, (tmp_path / "train.jsonl").open()) if e.get("source") == "ratings"]
    assert stats["rated_examples"] == 2 and [e["answer"] for e in examples] in ([[good], [fair]], [[fair], [good]])
    for example in examples:  # one right answer each, among candidates that offer the unrelated one
        assert example["viewing"] == viewed and bad in example["candidates"]
        answer = example["answer"][0]
        assert example["candidates"][prompts.LABELS.index(example["messages"][2]["content"])] == answer
        assert ({good, fair} - {answer}).isdisjoint(example["candidates"])
        assert any(line.startswith(db.session.get(Product, (installed_shop.id, bad)).title)
                   for line in prompts.candidate_lines(example["messages"][1]["content"]))
