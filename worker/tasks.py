"""Celery tasks: each only orchestrates named stages from the modules beside it.

Training pipeline: build_datasets → train → export → evaluate → deploy, chained per run. Training and
export run on the `gpu` queue, the rest on `default`; without REDIS_URL the chain runs in-process.
"""

from __future__ import annotations

import logging

from celery import chain, shared_task

from shopify_app.models import Shop, SyncRun, TrainingRun, db

from . import pipeline, sync, webhooks

log = logging.getLogger(__name__)


@shared_task(name="worker.tasks.process_webhook", autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def process_webhook(delivery_id: int) -> str:
    return webhooks.handle_delivery(delivery_id).status


@shared_task(name="worker.tasks.full_sync")
def full_sync(sync_run_id: int) -> dict:
    run = sync.run_full_sync(db.session.get(SyncRun, sync_run_id))
    return run.counts


@shared_task(name="worker.tasks.build_datasets")
def build_datasets(run_id: int, conversations: str | None = None) -> int:
    pipeline.stage_build_datasets(db.session.get(TrainingRun, run_id), conversations)
    return run_id


@shared_task(name="worker.tasks.train", queue="gpu", acks_late=True, bind=True)
def train(self, run_id: int) -> int:
    # In-process runs belong to a terminal (CLI, demo): show a progress bar there.
    pipeline.stage_train(db.session.get(TrainingRun, run_id), progress_bar=self.app.conf.task_always_eager)
    return run_id


@shared_task(name="worker.tasks.export", queue="gpu", acks_late=True)
def export(run_id: int) -> int:
    pipeline.stage_export(db.session.get(TrainingRun, run_id))
    return run_id


@shared_task(name="worker.tasks.evaluate", queue="gpu", acks_late=True)
def evaluate(run_id: int) -> int:
    pipeline.stage_evaluate(db.session.get(TrainingRun, run_id))
    return run_id


@shared_task(name="worker.tasks.deploy")
def deploy(run_id: int) -> int:
    model = pipeline.stage_deploy(db.session.get(TrainingRun, run_id))
    if model is not None and model.status == "deployed":
        precompute_recommendations.delay(model.shop_id)
    return run_id


@shared_task(name="worker.tasks.precompute_recommendations", bind=True)
def precompute_recommendations(self, shop_id: int) -> dict:
    from shopify_app import recommendations

    # In-process (the demo) keeps it to a minute: the rest fills in on first request.
    budget = 60.0 if self.app.conf.task_always_eager else None
    return recommendations.precompute(db.session.get(Shop, shop_id), budget_seconds=budget)


def enqueue_full_sync(shop: Shop) -> SyncRun:
    """Record a queued sync run and hand it to the worker (or run it now, in-process mode)."""
    run = SyncRun(shop_id=shop.id, kind="full", status="queued")
    db.session.add(run)
    db.session.commit()
    try:
        full_sync.delay(run.id)
    except Exception:  # in-process mode raises here; the run row already holds the error
        log.exception("full sync %s failed", run.id)
    db.session.refresh(run)
    return run


def enqueue_training(shop: Shop, *, hyperparameters: dict | None = None, conversations: str | None = None,
                     until: str = "deploy") -> TrainingRun:
    """Start a training run: the whole chain, or up to the named stage (the CLI's `dataset`/`train`)."""
    run = TrainingRun(shop_id=shop.id, status="queued", hyperparameters=hyperparameters or {})
    db.session.add(run)
    db.session.commit()
    stages = [build_datasets.s(run.id, conversations), train.s(), export.s(), evaluate.s(), deploy.s()]
    names = ["build_datasets", "train", "export", "evaluate", "deploy"]
    try:
        chain(*stages[:names.index(until) + 1]).delay()
    except Exception:  # in-process mode raises here; the run row already holds the error
        log.exception("training run %s failed", run.id)
    db.session.refresh(run)
    return run
