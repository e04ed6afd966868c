"""The training pipeline's stages as they touch the database: each takes a TrainingRun, does one thing,
records what happened on the row, and is safe to run twice (a retried task finds its output and moves on)."""

from __future__ import annotations

import json
import logging
import random
import shutil
from datetime import timedelta
from pathlib import Path

from flask import current_app
from sqlalchemy import func, select, update
from tqdm import tqdm

from core.assistant import replies
from core.llm.model_hosts import embedded_host, host_for, model_ref, rank_with_gguf
from core.llm.prompts import RECOMMEND_SYSTEM
from core.model import assistant_evaluation, export, training
from core.model.base_model import prepare_base_model, smollm2_gguf
from core.model.datasets import build_datasets
from core.model.evaluation import ModelReRank, hits_at, leave_one_out, scores_below
from core.recommendations import serving
from core.recommendations.history import load_baskets, load_catalog, split_by_time
from core.recommendations.ranking_head import SLICES, beyond_noise, slice_of
from core.recommendations.recommenders import CustomerHistories, History
from core.recommendations.serving import load_shelf, ranking
from core.shopify.ingest import embed_products
from core.storage.artifacts import artifacts_root
from core.storage.models import ModelVersion, Shop, TrainingRun, db, utcnow

log = logging.getLogger(__name__)

STALE_AFTER = timedelta(minutes=15)
GATE_CASES = 240  # held-out orders the deploy gate scores (a third of a second each for the model on a CPU)
GATE_MIN_SLICE_CASES = 10  # of them, in a slice of requests (ranking_head.SLICES) the model may serve
GATE_QUESTIONS = 120  # held-out shopper questions (assistant_evaluation.py) the assistant's gate asks


def run_dir(run: TrainingRun) -> Path:
    shop = db.session.get(Shop, run.shop_id)
    # The creation time keeps a recreated database's run #1 from finding an older run #1's files.
    return artifacts_root() / shop.domain / f"run-{run.id}-{run.created_at:%Y%m%d%H%M%S}"


STAGES = ("build_datasets", "train", "export", "gate", "deploy")


def _begin(run: TrainingRun, stage: str) -> None:
    log.info("run #%d: %s…", run.id, stage.replace("_", " "))  # a line that moves, in the CLI and worker logs
    run.status, run.stage, run.error, run.heartbeat_at, run.finished_at = "running", stage, None, utcnow(), None
    run.artifact_dir = str(run_dir(run))
    db.session.commit()


def _end(run: TrainingRun, stage: str, final: bool) -> None:
    """A stage is done; the run is done only when the last stage it was asked for is."""
    run.stage, run.heartbeat_at = stage, utcnow()
    if final:
        run.status, run.finished_at = "succeeded", utcnow()
    db.session.commit()


def _fail(run: TrainingRun, exc: BaseException) -> None:
    db.session.rollback()
    run.status, run.error, run.finished_at = "failed", f"{type(exc).__name__}: {exc}", utcnow()
    db.session.commit()


def stage_build_datasets(run: TrainingRun, conversations: str | None = None, final: bool = False) -> dict:
    out = run_dir(run) / "dataset"
    _begin(run, "build_datasets")
    try:
        if (out / "stats.json").exists():  # a retried task: the datasets are already written
            stats = json.loads((out / "stats.json").read_text())
        else:
            stats = build_datasets(db.session.get(Shop, run.shop_id), out, conversations=conversations)
    except Exception as exc:
        _fail(run, exc)
        raise
    run.dataset_version, run.dataset_stats = stats["version"], stats
    log.info("run #%d: datasets %s: %s training examples (%s recommendations, %s support), %s held out from "
             "orders after %s", run.id, stats["version"], stats["train_examples"], stats["recommendation_examples"],
             stats["support_examples"], stats["eval_examples"], stats["split_at"])
    _end(run, "build_datasets", final)
    return stats


def stage_train(run: TrainingRun, progress_bar: bool = False, final: bool = False) -> dict:
    out = run_dir(run) / "train"
    if (out / "training.json").exists() and (out / "adapter").exists():  # a retried task: already trained
        return json.loads((out / "training.json").read_text())
    _begin(run, "train")
    config = training.TrainConfig.from_dict(run.hyperparameters)
    try:
        base = prepare_base_model(artifacts_root(), current_app.config["BASE_MODEL"])
        run.base_model = str(base)
        db.session.commit()

        def record(progress: dict) -> None:
            for key in ("step", "total_steps", "loss", "eval_loss", "tokens_per_second", "eta_seconds"):
                if progress.get(key) is not None:
                    setattr(run, key, progress[key])
            run.history = list(progress["history"])
            run.heartbeat_at = utcnow()
            db.session.commit()
            db.session.refresh(run, ["cancel_requested"])
            if run.cancel_requested:
                raise training.Cancelled("cancelled by the merchant")

        summary = training.train(base, run_dir(run) / "dataset", out, config, on_progress=record,
                                 progress_bar=progress_bar)
    except training.Cancelled as exc:
        run.status, run.error, run.finished_at = "cancelled", str(exc), utcnow()
        db.session.commit()
        raise
    except Exception as exc:
        _fail(run, exc)
        raise
    run.eval_loss = summary["best_eval_loss"]
    _end(run, "train", final)
    return summary


def held_out_prompt(run: TrainingRun) -> list[dict]:
    """The fixed verification prompt: the first held-out recommendation example, minus its answer."""
    with (run_dir(run) / "dataset" / "eval.jsonl").open() as lines:
        for line in lines:
            example = json.loads(line)
            if example["kind"] == "recommendation":
                return example["messages"][:-1]
    raise ValueError("the dataset has no held-out recommendation example")


def stage_export(run: TrainingRun, quantization: str = "q8_0", final: bool = False) -> ModelVersion:
    existing = db.session.scalar(select(ModelVersion).where(ModelVersion.training_run_id == run.id))
    if existing is not None:
        return existing
    _begin(run, "export")
    directory = run_dir(run)
    try:
        merged = directory / "merged"
        if merged.exists():
            shutil.rmtree(merged)
        export.merge_adapter(Path(run.base_model), directory / "train" / "adapter", merged)
        version = (db.session.scalar(select(func.max(ModelVersion.version))
                                     .where(ModelVersion.shop_id == run.shop_id)) or 0) + 1
        gguf = export.convert_to_gguf(merged, directory / f"model-v{version}.{quantization}.gguf", quantization)
        check = export.verify_gguf(gguf, held_out_prompt(run), base=smollm2_gguf())
        model = ModelVersion(
            status="verified" if check["trained_format"] else "rejected",  # a rejected model is never deployed
            shop_id=run.shop_id, training_run_id=run.id, version=version, gguf_path=str(gguf),
            quantization=quantization, size_bytes=gguf.stat().st_size, sha256=export.sha256(gguf),
            base_model=run.base_model, dataset_version=run.dataset_version,
            metrics={"eval_loss": run.eval_loss, "verification": check})
        db.session.add(model)
        shutil.rmtree(merged)  # the GGUF is the artifact; the merged copy is re-creatable
        _end(run, "export", final)
        return model
    except Exception as exc:
        _fail(run, exc)
        raise


def stage_gate(run: TrainingRun, progress_bar: bool = False, final: bool = False) -> dict | None:
    """The deploy gate's evidence: the new version, the retrieval it re-ranks, co-purchase and the live version
    on the same held-out orders (the newest, never trained on), the models through the storefront's own path
    (`rerank`)."""
    model = db.session.scalar(select(ModelVersion).where(ModelVersion.training_run_id == run.id))
    if model is None or model.status != "verified" or "gate" in (model.metrics or {}):
        return (model.metrics or {}).get("gate") if model else None
    _begin(run, "gate")
    try:
        gate = gate_report(model, progress_bar=progress_bar)
    except Exception as exc:
        _fail(run, exc)
        raise
    model.metrics = {**model.metrics, "gate": gate}
    _end(run, "gate", final)
    return gate


def gate_report(model: ModelVersion, cases_limit: int = GATE_CASES, k: int = 4,
                progress_bar: bool = False) -> dict:
    shop = db.session.get(Shop, model.shop_id)
    catalog = load_catalog(shop.id)
    orders = load_baskets(shop.id, catalog)
    train, held_out = split_by_time(orders)
    histories = CustomerHistories(orders)
    cases = leave_one_out(held_out, random.Random(0), cases_limit, histories)
    shelf = load_shelf(shop, train)  # retrieval that never saw the held-out orders
    rerank = ModelReRank(rank_with_gguf(model.gguf_path), shelf)

    def retrieval(basket: list, k: int, history: History | None = None) -> list:
        """What the storefront shows without a model: the sellable products as the blend ranks them."""
        return ranking(shelf, basket[-1], list(basket[:-1]), history=history)[:k]

    def copurchase(basket: list, k: int, history: History | None = None) -> list:
        """The baseline on the same shelf: a co-purchase block shows only sellable products too."""
        ranked = shelf.retrieval.copurchase(basket, len(shelf.catalog))
        return [p for p in ranked if p in shelf.sellable][:k]

    # The model scores each case in a fraction of a second on a CPU (a minute in all): a terminal run shows a bar.
    asked = tqdm(cases, desc=f"deploy gate: v{model.version} on held-out orders", unit="order") if progress_bar \
        else cases
    new = hits_at(rerank, asked, k)  # the bar moves as the model answers each case
    alone, baseline = hits_at(retrieval, cases, k), hits_at(copurchase, cases, k)
    kinds = [slice_of(shelf.retrieval, case.context) for case in cases]
    slices = {kind: [i for i, of in enumerate(kinds) if of == kind] for kind in SLICES}
    serves = admitted_slices(new, alone, kinds)
    served = [n if kind in serves else a for n, a, kind in zip(new, alone, kinds, strict=True)]
    report = {"cases": len(cases), "k": k, f"hr@{k}": _mean(new), f"retrieval hr@{k}": _mean(alone),
              f"co-purchase hr@{k}": _mean(baseline), f"served hr@{k}": _mean(served), "serves": serves,
              "slices": {kind: {"cases": len(rows), f"hr@{k}": _mean([new[i] for i in rows]),
                                f"retrieval hr@{k}": _mean([alone[i] for i in rows]), "serves": kind in serves}
                         for kind, rows in slices.items()},
              # How much of its next-token probability the model put on the candidates' letters.
              "label_mass": rerank.mean_label_mass}
    found = f"its list held the hidden product in the top {k} for {int(sum(new))} of {len(cases)} held-out orders " \
            f"(HR@{k} {_mean(new):.3f}), against {_mean(alone):.3f} for the retrieval alone and " \
            f"{_mean(baseline):.3f} for co-purchase"
    if serves:
        found += f"; it serves {', '.join(serves)} requests, the retrieval the rest (HR@{k} {_mean(served):.3f})"
    reasons = []
    if scores_below(served, baseline, random.Random(1)):
        reasons.append("it is below co-purchase beyond noise")
    live = db.session.scalar(select(ModelVersion).where(ModelVersion.shop_id == model.shop_id,
                                                        ModelVersion.status == "deployed"))
    live = live if live is not None and Path(live.gguf_path).exists() else None
    report["assistant"] = assistant_gate(shop, model, live, progress_bar)
    if not serves and not report["assistant"]["serves"]:  # it must do better somewhere, beyond noise
        reasons.append(("the model's re-rank is worse than the retrieval it starts from" if _mean(new) < _mean(alone)
                        else "the model's re-rank is better than the retrieval it starts from in no slice of "
                             "requests beyond noise")
                       + ", and " + report["assistant"]["verdict"])
    if live is not None:
        live_cases = tqdm(cases, desc=f"deploy gate: live v{live.version} on the same orders", unit="order") \
            if progress_bar else cases  # as long again: no stage is silent for a minute
        current = hits_at(ModelReRank(rank_with_gguf(live.gguf_path), shelf), live_cases, k)
        live_serves = serving.gate_slices(live)
        current = [c if live_serves is None or kind in live_serves else a
                   for c, a, kind in zip(current, alone, kinds, strict=True)]
        report["live"] = {"version": live.version, f"hr@{k}": _mean(current)}
        found += f", and {_mean(current):.3f} for live v{live.version} as it serves"
        if scores_below(served, current, random.Random(2)):
            reasons.append(f"it is below live v{live.version} beyond noise")
    if report["assistant"]["below_live"]:
        reasons.append(f"it words fewer of the assistant's replies than live v{live.version} beyond noise")
    found += f"; it words {report['assistant']['worded']:.0%} of the assistant's replies to " \
             f"{report['assistant']['questions']} held-out questions with every check passed" + (
                 f" (live v{live.version}: {report['assistant']['live_worded']:.0%})"
                 if report["assistant"]["live_worded"] is not None else "") + (
                 ", so it words them" if report["assistant"]["serves"] else "")
    report["passed"] = not reasons
    report["reason"] = (f"refused, {' and '.join(reasons)}: " if reasons else "passed: ") + found
    # The ranking head under the model's candidates: which slices of requests it re-orders, and why.
    report["ranking_head"] = shelf.retrieval.head.card() if shelf.retrieval.head else None
    # The complements learned from the products' text (complements.py), and how much the ranking uses them.
    learned = shelf.retrieval.complements
    report["complements"] = {**learned.trained, "weight": shelf.retrieval.weights.complement} if learned else None
    return report


def assistant_gate(shop: Shop, model: ModelVersion, live: ModelVersion | None, progress_bar: bool) -> dict:
    """Whether the new version words the assistant's replies: on held-out shopper questions built from the
    shop's own data (assistant_evaluation.py), the share of its drafts that pass every check and are
    served, against the live version's where it words them (else none: the facts alone answer). It serves
    when it words more beyond noise and its served replies are as factual, as safe and hand off as rightly as
    the facts alone; the checks keep every reply it words true either way."""
    cases = assistant_evaluation.question_set(shop, serving.catalog_shelf(shop), GATE_QUESTIONS)

    def worded(path: str | None, label: str) -> tuple[list[float], dict]:
        chat = assistant_evaluation.gguf_chat(path) if path else None
        answered = assistant_evaluation.answers(shop, chat, cases, label, progress_bar)
        return [float(r.reply.source == "model") for r in answered], assistant_evaluation.report(answered)

    _, facts = worded(None, "assistant gate: the facts alone")
    new, judged = worded(model.gguf_path, f"assistant gate: v{model.version}")
    speaks = live is not None and replies.admits_assistant(live)
    current, _ = worded(live.gguf_path, f"assistant gate: live v{live.version}") if speaks else ([0.0] * len(new), {})
    as_good = (judged["served"]["factual_accuracy"] >= facts["served"]["factual_accuracy"]
               and judged["served"]["forbidden_claim_rate"] <= facts["served"]["forbidden_claim_rate"]
               and judged["handoff_precision"] >= facts["handoff_precision"]
               and judged["handoff_recall"] >= facts["handoff_recall"])
    gains = [n - c for n, c in zip(new, current, strict=True)]
    more = beyond_noise(gains, GATE_MIN_SLICE_CASES)
    than = f"live v{live.version}" if speaks else "the facts alone"
    verdict = ("it words more of the assistant's replies than " + than if as_good and more else
               f"it words no more of the assistant's replies than {than} beyond noise" if as_good else
               "its replies to the held-out questions are less right than the facts alone (factual "
               f"{judged['served']['factual_accuracy']:.3f} against {facts['served']['factual_accuracy']:.3f}, "
               f"handoff precision {judged['handoff_precision']:.2f} against {facts['handoff_precision']:.2f}, "
               f"recall {judged['handoff_recall']:.2f} against {facts['handoff_recall']:.2f})")
    return {"questions": len(cases), "worded": _mean(new), "live_worded": _mean(current) if speaks else None,
            "factual_accuracy": judged["served"]["factual_accuracy"],
            "forbidden_claim_rate": judged["served"]["forbidden_claim_rate"],
            "handoff_precision": judged["handoff_precision"], "handoff_recall": judged["handoff_recall"],
            "latency_p50_s": judged["latency_p50_s"], "latency_p95_s": judged["latency_p95_s"],
            "serves": as_good and more, "verdict": verdict,
            "below_live": speaks and beyond_noise([-g for g in gains], GATE_MIN_SLICE_CASES)}


def admitted_slices(model: list[float], retrieval: list[float], kinds: list[str]) -> list[str]:
    """The slices of requests (`kinds`: each case's) where the model's per-case hits beat the retrieval's beyond
    noise (ranking_head.py `beyond_noise`, with GATE_MIN_SLICE_CASES): where the model may serve."""
    return [kind for kind in SLICES if beyond_noise([m - r for m, r, of in zip(model, retrieval, kinds, strict=True)
                                                     if of == kind], GATE_MIN_SLICE_CASES)]


def _mean(values: list[float]) -> float:
    return round(sum(values) / max(len(values), 1), 4)


def stage_deploy(run: TrainingRun, force: bool = False, final: bool = True) -> ModelVersion | None:
    """Make the run's verified model the shop's live one on the configured host. A rejected one never goes
    live; one the gate refused, or that has no gate result, only with `force`."""
    model = db.session.scalar(select(ModelVersion).where(ModelVersion.training_run_id == run.id))
    if model is None or model.status == "deployed":
        return model
    gate = (model.metrics or {}).get("gate")
    refusal = None
    if model.status != "verified":
        refusal = f"refused: model v{model.version} is {model.status}"
    elif gate is None and not force:
        refusal = (f"refused: model v{model.version} has no gate result "
                   "(run the chain's gate stage, or pairwell deploy --force)")
    elif gate is not None and not gate["passed"] and not force:
        refusal = f"{gate['reason']} (pairwell deploy --force to override)"
    if refusal:
        log.info("run #%d: v%d not deployed: %s", run.id, model.version, refusal)
        model.metrics = {**model.metrics, "deploy": refusal}
        _end(run, "deploy refused", final)
        return model
    if gate is None or not gate["passed"]:
        model.metrics = {**model.metrics, "deploy": "forced past the evaluation gate: "
                                                    + (gate["reason"] if gate else "no gate result")}
    log.info("run #%d: deploying v%d…", run.id, model.version)
    activate(model)
    _end(run, "deployed", final)
    return model


def activate(model: ModelVersion) -> None:
    """Put a model version on the configured host and make it the shop's live one (deploy or roll back); the
    version it replaces is retired and removed from the host."""
    shop = db.session.get(Shop, model.shop_id)
    embed_products(shop.id)  # serving reads stored vectors; catch up on any product text that changed
    host = host_for(current_app)
    name = host.deploy(model.gguf_path, shop.domain, model.version, RECOMMEND_SYSTEM)
    replaced = db.session.scalars(select(ModelVersion).where(
        ModelVersion.shop_id == model.shop_id, ModelVersion.status == "deployed")).all()
    for live in replaced:
        live.status = "retired"
    model.status, model.deployed_at = "deployed", utcnow()
    model.metrics = {**(model.metrics or {}), "deployment": {"host": host.name, "name": name}}
    db.session.commit()
    serving.invalidate(model.shop_id)
    for live in replaced:
        try:
            host.retire(model_ref(host, live))
        except Exception as exc:  # the new version serves already; a leftover copy only costs disk
            log.warning("could not remove v%s from %s: %s", live.version, host.name, exc)


def previous_version(shop: Shop) -> ModelVersion | None:
    """The most recently retired version: what a roll back brings back."""
    return db.session.scalars(select(ModelVersion).where(
        ModelVersion.shop_id == shop.id, ModelVersion.status == "retired").order_by(
        ModelVersion.deployed_at.desc().nulls_last(), ModelVersion.version.desc())).first()


def rollback(shop: Shop) -> ModelVersion | None:
    """Bring back the most recently retired version (the live one is retired in turn)."""
    previous = previous_version(shop)
    if previous is not None:
        activate(previous)
    return previous


def forget_artifacts(domain: str) -> dict:
    """Everything a shop's training left behind: its artifact directory (datasets, adapters, GGUF files) and its
    model versions on the model host (shop/redact)."""
    directory = artifacts_root() / domain  # a checked *.myshopify.com domain: no path tricks
    host = host_for(current_app)
    models, existed = [], directory.exists()
    if existed:
        for gguf in directory.rglob("*.gguf"):
            embedded_host.retire(str(gguf))
        shutil.rmtree(directory)
    result = {"artifacts_deleted": existed, "host_models_deleted": models}
    if host.name == "ollama":
        try:
            for name in host.versions(domain):
                host.retire(name)
                models.append(name)
        except Exception as exc:  # the rows and files go now whatever the host says; say what is left there
            log.error("shop/redact %s: model versions left on the host: %s", domain, exc)
            result["host_error"] = f"{type(exc).__name__}: {exc}"
    return result


def latest_trained_run(shop: Shop) -> TrainingRun | None:
    """The newest run whose training finished (its export may have failed or not run yet)."""
    runs = db.session.scalars(select(TrainingRun).where(TrainingRun.shop_id == shop.id).order_by(TrainingRun.id.desc()))
    return next((run for run in runs if (run_dir(run) / "train" / "training.json").exists()), None)


def newest_verified_run(shop: Shop) -> TrainingRun | None:
    """The run of the newest verified model version waiting to go live."""
    model = db.session.scalars(select(ModelVersion).where(
        ModelVersion.shop_id == shop.id, ModelVersion.status == "verified",
        ModelVersion.training_run_id.is_not(None)).order_by(ModelVersion.version.desc())).first()
    return db.session.get(TrainingRun, model.training_run_id) if model else None


def run_in_progress(shop: Shop) -> TrainingRun | None:
    """The shop's queued or running training run: one at a time (they share the GPU and the artifacts)."""
    recover_stale_runs()
    return db.session.scalars(select(TrainingRun).where(
        TrainingRun.shop_id == shop.id, TrainingRun.status.in_(("queued", "running")))
        .order_by(TrainingRun.id.desc())).first()


def recover_stale_runs() -> int:
    """Runs whose worker died mid-stage (no heartbeat for a while) are marked failed, never left running."""
    cutoff = utcnow() - STALE_AFTER
    stale = db.session.execute(select(TrainingRun.id, TrainingRun.stage, TrainingRun.heartbeat_at).where(
        TrainingRun.status == "running", TrainingRun.heartbeat_at < cutoff)).all()
    failed = 0
    for run_id, stage, heartbeat_at in stale:  # compare and set: a worker that beat meanwhile keeps its run
        failed += db.session.execute(update(TrainingRun).where(
            TrainingRun.id == run_id, TrainingRun.status == "running", TrainingRun.heartbeat_at == heartbeat_at)
            .values(status="failed", finished_at=utcnow(), error=f"worker stopped during {stage} (no heartbeat "
                                                                 f"since {heartbeat_at:%Y-%m-%d %H:%M} UTC)")
        ).rowcount
    if stale:  # otherwise a caller's transaction (and the shop lock it holds) goes on
        db.session.commit()
    return failed
