"""The training pipeline's stages as they touch the database: each takes a TrainingRun, does one thing,
records what happened on the row, and is safe to run twice (a retried task finds its output and moves on)."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

from flask import current_app
from sqlalchemy import func, select

from shopify_app.models import ModelVersion, Product, Shop, TrainingRun, db, utcnow

from . import export, training
from .base_model import prepare_base_model, smollm2_gguf
from .datasets import CANDIDATES, RECOMMEND_SYSTEM, build_datasets

STALE_AFTER = timedelta(minutes=15)
GATE_CASES = 60  # held-out orders the deploy gate scores (about a second each for the model on a CPU)


def artifacts_root() -> Path:
    return Path(current_app.config["PAIRWELL_ARTIFACTS"])


def run_dir(run: TrainingRun) -> Path:
    shop = db.session.get(Shop, run.shop_id)
    # The creation time keeps a recreated database's run #1 from finding an older run #1's files.
    return artifacts_root() / shop.domain / f"run-{run.id}-{run.created_at:%Y%m%d%H%M%S}"


def _begin(run: TrainingRun, stage: str) -> None:
    run.status, run.stage, run.error, run.heartbeat_at = "running", stage, None, utcnow()
    run.artifact_dir = str(run_dir(run))
    db.session.commit()


def _fail(run: TrainingRun, exc: BaseException) -> None:
    db.session.rollback()
    run.status, run.error, run.finished_at = "failed", f"{type(exc).__name__}: {exc}", utcnow()
    db.session.commit()


def stage_build_datasets(run: TrainingRun, conversations: str | None = None) -> dict:
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
    run.dataset_version, run.dataset_stats, run.status = stats["version"], stats, "succeeded"
    db.session.commit()
    return stats


def stage_train(run: TrainingRun, progress_bar: bool = False) -> dict:
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
    run.eval_loss, run.status = summary["best_eval_loss"], "succeeded"
    db.session.commit()
    return summary


def held_out_prompt(run: TrainingRun) -> list[dict]:
    """The fixed verification prompt: the first held-out recommendation example, minus its answer."""
    with (run_dir(run) / "dataset" / "eval.jsonl").open() as lines:
        for line in lines:
            example = json.loads(line)
            if example["kind"] == "recommendation":
                return example["messages"][:-1]
    raise ValueError("the dataset has no held-out recommendation example")


def catalog_titles(shop_id: int) -> set[str]:
    return set(db.session.scalars(select(Product.title).where(Product.shop_id == shop_id)))


def stage_export(run: TrainingRun, quantization: str = "q8_0") -> ModelVersion:
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
        check = export.verify_gguf(gguf, held_out_prompt(run), catalog_titles(run.shop_id))
        model = ModelVersion(
            status="verified" if check["trained_format"] else "rejected",  # a rejected model is never deployed
            shop_id=run.shop_id, training_run_id=run.id, version=version, gguf_path=str(gguf),
            quantization=quantization, size_bytes=gguf.stat().st_size, sha256=export.sha256(gguf),
            base_model=run.base_model, dataset_version=run.dataset_version,
            metrics={"eval_loss": run.eval_loss, "verification": check})
        db.session.add(model)
        shutil.rmtree(merged)  # the GGUF is the artifact; the merged copy is re-creatable
        run.status, run.stage, run.finished_at = "succeeded", "exported", utcnow()
        db.session.commit()
        return model
    except Exception as exc:
        _fail(run, exc)
        raise


def stage_evaluate(run: TrainingRun) -> dict | None:
    """The deploy gate's evidence: the new version, the live one and co-purchase on the same held-out orders
    (the newest, never trained on), scored as the storefront serves: hybrid candidates, the model picks four."""
    model = db.session.scalar(select(ModelVersion).where(ModelVersion.training_run_id == run.id))
    if model is None or model.status != "verified" or "gate" in (model.metrics or {}):
        return (model.metrics or {}).get("gate") if model else None
    _begin(run, "evaluate")
    try:
        gate = gate_report(model)
    except Exception as exc:
        _fail(run, exc)
        raise
    model.metrics = {**model.metrics, "gate": gate}
    run.status, run.stage = "succeeded", "evaluated"
    db.session.commit()
    return gate


def gate_report(model: ModelVersion, cases_limit: int = GATE_CASES, k: int = 4) -> dict:
    import random

    from .datasets import load_baskets, load_catalog, split_by_time
    from .embeddings import catalog_index
    from .evaluation import Basket, ModelReRank, hits_at, leave_one_out, llama_chat, scores_below
    from .recommenders import CoPurchase, Hybrid, TitleMatcher

    catalog = load_catalog(model.shop_id)
    train, held_out = split_by_time(load_baskets(model.shop_id, catalog))
    cases = leave_one_out([Basket(str(i), created, products) for i, (created, products) in enumerate(held_out)],
                          random.Random(0), cases_limit)
    copurchase = CoPurchase(products for _, products in train)
    index = catalog_index(catalog)
    hybrid = Hybrid(copurchase, index)
    titles = {p: item.title for p, item in catalog.items()}
    system = RECOMMEND_SYSTEM.format(shop=db.session.get(Shop, model.shop_id).domain)

    def reranker(version: ModelVersion) -> ModelReRank:
        return ModelReRank(llama_chat(Path(version.gguf_path)), hybrid, titles, TitleMatcher(titles, index), system,
                           candidates=CANDIDATES, picks=k)

    rerank = reranker(model)
    new, baseline = hits_at(rerank, cases, k), hits_at(copurchase, cases, k)
    report = {"cases": len(cases), "k": k, f"hr@{k}": _mean(new), f"co-purchase hr@{k}": _mean(baseline),
              # The raw miss rate: names the model wrote that matched none of its candidates (never served).
              "model_names": rerank.names, "unmatched_names": rerank.invented}
    reasons = []
    if scores_below(new, baseline, random.Random(1)):
        reasons.append(f"HR@{k} {_mean(new):.3f} is below co-purchase's {_mean(baseline):.3f}")
    live = db.session.scalar(select(ModelVersion).where(ModelVersion.shop_id == model.shop_id,
                                                        ModelVersion.status == "deployed"))
    if live is not None and Path(live.gguf_path).exists():
        current = hits_at(reranker(live), cases, k)
        report["live"] = {"version": live.version, f"hr@{k}": _mean(current)}
        if scores_below(new, current, random.Random(2)):
            reasons.append(f"HR@{k} {_mean(new):.3f} is below live v{live.version}'s {_mean(current):.3f}")
    report["passed"] = not reasons
    report["reason"] = "; ".join(reasons) or (f"HR@{k} {_mean(new):.3f} on {len(cases)} held-out orders, "
                                              f"not below co-purchase ({_mean(baseline):.3f})"
                                              + (" or the live version" if live is not None else ""))
    return report


def _mean(values: list[float]) -> float:
    return round(sum(values) / max(len(values), 1), 4)


def stage_deploy(run: TrainingRun, force: bool = False) -> ModelVersion | None:
    """Make the run's verified model the shop's live one on the configured host; a rejected one never goes live,
    and one that failed the evaluation gate only with `force`."""
    model = db.session.scalar(select(ModelVersion).where(ModelVersion.training_run_id == run.id))
    if model is None or model.status == "deployed":
        return model
    if model.status != "verified":
        run.stage = "deploy refused"
        model.metrics = {**model.metrics, "deploy": f"refused: model v{model.version} is {model.status}"}
        db.session.commit()
        return model
    gate = (model.metrics or {}).get("gate")
    if gate and not gate["passed"] and not force:
        run.stage = "deploy refused"
        model.metrics = {**model.metrics, "deploy": f"refused by the evaluation gate: {gate['reason']} "
                                                    "(pairwell deploy --force to override)"}
        db.session.commit()
        return model
    if gate and not gate["passed"]:
        model.metrics = {**model.metrics, "deploy": f"forced past the evaluation gate: {gate['reason']}"}
    activate(model)
    run.stage = "deployed"
    db.session.commit()
    return model


def activate(model: ModelVersion) -> None:
    """Put a model version on the configured host and make it the shop's live one (deploy or roll back)."""
    from shopify_app import recommendations
    from shopify_app.model_host import host_for

    shop = db.session.get(Shop, model.shop_id)
    host = host_for(current_app)
    name = host.deploy(model.gguf_path, shop.domain, model.version, RECOMMEND_SYSTEM.format(shop=shop.domain))
    for live in db.session.scalars(select(ModelVersion).where(
            ModelVersion.shop_id == model.shop_id, ModelVersion.status == "deployed")):
        live.status = "retired"
    model.status, model.deployed_at = "deployed", utcnow()
    model.metrics = {**(model.metrics or {}), "deployment": {"host": host.name, "name": name}}
    db.session.commit()
    recommendations.invalidate(model.shop_id)


def rollback(shop: Shop) -> ModelVersion | None:
    """Bring back the most recently retired version (the live one is retired in turn)."""
    previous = db.session.scalars(select(ModelVersion).where(
        ModelVersion.shop_id == shop.id, ModelVersion.status == "retired").order_by(ModelVersion.deployed_at.desc(),
                                                                                     ModelVersion.version.desc())).first()
    if previous is not None:
        activate(previous)
    return previous


def base_model_answer(messages: list[dict]) -> str:
    """What the untrained base (the packaged GGUF) says to the same prompt, for before/after comparisons."""
    from .runtime import chat, load_gguf

    return chat(load_gguf(smollm2_gguf(), n_ctx=1024), messages, max_tokens=160)


def latest_trained_run(shop: Shop) -> TrainingRun | None:
    """The newest run whose training finished (its export may have failed or not run yet)."""
    runs = db.session.scalars(select(TrainingRun).where(TrainingRun.shop_id == shop.id).order_by(TrainingRun.id.desc()))
    return next((run for run in runs if (run_dir(run) / "train" / "training.json").exists()), None)


def recover_stale_runs() -> int:
    """Runs whose worker died mid-stage (no heartbeat for a while) are marked failed, never left running."""
    cutoff = utcnow() - STALE_AFTER
    stale = db.session.scalars(select(TrainingRun).where(
        TrainingRun.status == "running", TrainingRun.heartbeat_at < cutoff)).all()
    for run in stale:
        run.status, run.finished_at = "failed", utcnow()
        run.error = f"worker stopped during {run.stage} (no heartbeat since {run.heartbeat_at:%Y-%m-%d %H:%M} UTC)"
    db.session.commit()
    return len(stale)
