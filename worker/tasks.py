"""Celery tasks, and the enqueue functions that are the web's only way into the jobs.

Each task only orchestrates named stages of the core's features (core/model, core/shopify,
core/recommendations). The training pipeline is one chain, build_datasets → train → export → gate → deploy,
whether the schedule, the admin or the CLI starts it, whole or a part of it; which queue a task goes to is set
once, in `celery_app.ROUTES`. Without REDIS_URL the tasks run in-process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import timedelta

from celery import chain, shared_task
from celery.exceptions import Ignore
from celery.signals import worker_ready
from flask import current_app
from sqlalchemy import func, select, update
from tqdm import tqdm

from core.model import assistant_evaluation, datasets, evaluation, pipeline, schedule
from core.recommendations import neighbours, serving
from core.shopify import sync
from core.storage import reports
from core.storage.models import ModelVersion, Shop, SyncRun, TrainingRun, WebhookDelivery, db, locked_shop, utcnow
from worker import webhooks

log = logging.getLogger(__name__)


class PipelineError(Exception):
    """The asked-for part of the chain cannot start (nothing trained to export, nothing verified to deploy)."""


STUCK_AFTER = timedelta(minutes=15)  # a delivery "processing" this long lost its worker
RETRY_FAILED_EVERY = timedelta(minutes=10)  # a failed delivery is tried again this often ...
RETRY_FAILED_FOR = timedelta(days=1)  # ... for a day after it arrived
KEEP_MALFORMED = timedelta(days=30)


@shared_task(name="worker.tasks.process_webhook", autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def process_webhook(delivery_id: int, swept: bool = False) -> str | None:
    delivery = webhooks.handle_delivery(delivery_id, stuck_before=utcnow() - STUCK_AFTER if swept else None)
    return delivery.status if delivery else None


def _claim(model, row_id: int) -> None:
    """Take a queued run, atomically; one sent twice (the sweeper re-sent it while it waited in the queue)
    is dropped the second time, and so is the rest of its chain."""
    taken = db.session.execute(update(model).where(model.id == row_id, model.status == "queued")
                               .values(status="running"))
    db.session.commit()
    if taken.rowcount != 1:
        raise Ignore()


@shared_task(name="worker.tasks.full_sync")
def full_sync(sync_run_id: int) -> dict:
    _claim(SyncRun, sync_run_id)
    run = sync.run_full_sync(db.session.get(SyncRun, sync_run_id))
    try:
        build_neighbours.delay(run.shop_id)
    except Exception:  # not sent (the broker is away) or failed in-process: the sweeper has it built
        log.exception("building the neighbour lists of shop %d after its sync", run.shop_id)
        db.session.rollback()
        neighbours.mark_changed(run.shop_id)
        db.session.commit()
    return run.counts


@shared_task(name="worker.tasks.claim_run")
def claim_run(run_id: int) -> int:
    """The head of every chain: a run's chain sent twice runs once."""
    _claim(TrainingRun, run_id)
    return run_id


@shared_task(name="worker.tasks.build_datasets")
def build_datasets(run_id: int, conversations: str | None = None, final: bool = False) -> int:
    pipeline.stage_build_datasets(db.session.get(TrainingRun, run_id), conversations, final=final)
    return run_id


@shared_task(name="worker.tasks.train", acks_late=True, bind=True)
def train(self, run_id: int, final: bool = False) -> int:
    # In-process runs belong to a terminal (CLI, demo): show a progress bar there.
    pipeline.stage_train(db.session.get(TrainingRun, run_id), progress_bar=self.app.conf.task_always_eager,
                         final=final)
    return run_id


@shared_task(name="worker.tasks.export", acks_late=True)
def export(run_id: int, final: bool = False, quantization: str = "q8_0") -> int:
    pipeline.stage_export(db.session.get(TrainingRun, run_id), quantization, final=final)
    return run_id


@shared_task(name="worker.tasks.gate", acks_late=True, bind=True)
def gate(self, run_id: int, final: bool = False) -> int:
    pipeline.stage_gate(db.session.get(TrainingRun, run_id), progress_bar=self.app.conf.task_always_eager,
                        final=final)
    return run_id


@shared_task(name="worker.tasks.deploy")
def deploy(run_id: int, final: bool = True, force: bool = False) -> int:
    model = pipeline.stage_deploy(db.session.get(TrainingRun, run_id), force=force, final=final)
    if model is not None and model.status == "deployed":
        precompute_recommendations.delay(model.shop_id)
    return run_id


@shared_task(name="worker.tasks.rollback")
def rollback(shop_id: int) -> int | None:
    model = pipeline.rollback(db.session.get(Shop, shop_id))
    if model is not None:
        precompute_recommendations.delay(shop_id)
    return model.id if model else None


@shared_task(name="worker.tasks.precompute_recommendations", bind=True)
def precompute_recommendations(self, shop_id: int) -> dict:
    # In-process (the demo) keeps it to a minute: the rest fills in on first request.
    budget = 60.0 if self.app.conf.task_always_eager else None
    log.info("precomputing the storefront blocks of shop %d%s…", shop_id, f" (at most {budget:g} s)" if budget else "")

    def progress(products: list[int]) -> Iterable[int]:  # in-process runs belong to a terminal: a bar there
        return tqdm(products, desc="storefront blocks", unit="product") if budget else products

    return serving.precompute(db.session.get(Shop, shop_id), budget_seconds=budget, progress=progress)


@shared_task(name="worker.tasks.build_neighbours")
def build_neighbours(shop_id: int) -> dict:
    """The shop's neighbour lists, which the storefront merges (neighbours.py): after each sync, and when
    the sweeper finds its catalog or orders changed."""
    shop = db.session.get(Shop, shop_id)
    if shop is None:  # redacted meanwhile
        return {}

    def progress(products: list) -> Iterable:  # a line at least every 10 s, in a terminal or a worker's log
        return tqdm(products, desc="neighbour lists", unit="product", mininterval=10)

    build = serving.build_neighbour_lists(shop, progress)
    return {"products": build.products, "seconds": round(build.seconds, 1)}


@shared_task(name="worker.tasks.sweep")
def sweep() -> dict:
    """Hand out again what was stored but never reached a worker (the broker was down when it was enqueued, or
    the worker died): webhook deliveries, sync runs and training runs; and have the neighbour lists of shops
    whose catalog or orders changed built again. Celery beat runs it every minute."""
    now = utcnow()
    waited = now - timedelta(seconds=current_app.config["SWEEP_AFTER_SECONDS"])
    deliveries = webhooks.waiting_deliveries(waited, now - STUCK_AFTER, now - RETRY_FAILED_EVERY,
                                             now - RETRY_FAILED_FOR)
    for delivery_id in deliveries:
        process_webhook.delay(delivery_id, swept=True)
    syncs = db.session.scalars(select(SyncRun).where(SyncRun.status == "queued",
                                                     SyncRun.created_at < waited)).all()
    for run in syncs:
        full_sync.delay(run.id)
    runs = db.session.scalars(select(TrainingRun).where(
        TrainingRun.status == "queued",
        func.coalesce(TrainingRun.heartbeat_at, TrainingRun.created_at) < waited)).all()
    for run in runs:
        _send_chain(run)
    dropped = webhooks.drop_old_malformed(now - KEEP_MALFORMED)
    db.session.commit()
    builds = neighbours.due(now)
    for shop_id in builds:
        build_neighbours.delay(shop_id)
    return {"deliveries": len(deliveries), "sync_runs": len(syncs), "training_runs": len(runs),
            "malformed_dropped": dropped, "neighbour_builds": len(builds)}


@shared_task(name="worker.tasks.retrain_on_schedule")
def retrain_on_schedule() -> list[int]:
    """Start the chain (datasets from the new orders and stored conversations → train → gate → deploy) for every
    shop whose retraining is due and that has no run in progress. Celery beat runs it hourly."""
    started = []
    for shop in schedule.due_shops(utcnow()):
        try:
            run = enqueue_pipeline(shop, background=True, scheduled=True)
        except PipelineError:  # a run is in progress: the next hourly check tries again
            continue
        started.append(run.id)
        log.info("scheduled retraining of %s: run #%d", shop.domain, run.id)
    return started


@worker_ready.connect
def _recover_stale_runs(sender, **_):
    """A worker that died mid-stage leaves its run running: the next worker to start marks it failed."""
    flask_app = getattr(sender.app, "flask_app", None)
    if flask_app is None:
        return
    with flask_app.app_context():
        log.info("marked %d stale training runs failed", pipeline.recover_stale_runs())


# --- The enqueue functions: the web's way in ------------------------------------------------------------

def _send_sync(run_id: int) -> None:
    try:
        full_sync.delay(run_id)
    except Exception:  # in-process: the run row holds the error; queued: the sweeper sends it again
        log.exception("full sync %s: not sent or failed", run_id)


def enqueue_full_sync(shop: Shop, background: bool = False) -> SyncRun:
    """Record a queued sync run and hand it to the worker (or run it now, in-process mode; with `background`,
    on a thread of its own, so an admin request returns at once)."""
    run = SyncRun(shop_id=shop.id, kind="full", status="queued")
    db.session.add(run)
    db.session.commit()
    (_later if background else _now)(_send_sync, run.id)
    db.session.refresh(run)
    return run


def _now(work, *args) -> None:
    work(*args)


JOB_THREAD = "pairwell-job-"  # the name every in-process background job's thread starts with


def _later(work, *args) -> None:
    """Queued mode returns at once anyway; in-process mode runs a job where it is sent, so run it on a thread
    of its own (with its own app context and session) for a web request that must not wait for it."""
    if not current_app.extensions["celery"].conf.task_always_eager:
        work(*args)
        return
    app = current_app._get_current_object()

    def run() -> None:
        with app.app_context():
            try:
                work(*args)
            finally:
                db.session.remove()

    threading.Thread(target=run, name=f"{JOB_THREAD}{work.__name__}", daemon=True).start()


def training_in_progress(shop: Shop) -> TrainingRun | None:
    """The shop's queued or running training run, if any (one at a time)."""
    return pipeline.run_in_progress(shop)


def enqueue_webhook(delivery: WebhookDelivery) -> None:
    """Hand a stored delivery to the worker (in-process mode: handle it now; the row keeps any error). If the
    broker is down the delivery stays `received`, and the sweeper hands it out once the broker is back."""
    try:
        process_webhook.delay(delivery.id)
    except Exception:
        log.exception("webhook delivery %s: not sent or failed", delivery.id)


def enqueue_pipeline(shop: Shop, *, first: str = "build_datasets", last: str = "deploy",
                     hyperparameters: dict | None = None, conversations: str | None = None, force: bool = False,
                     quantization: str = "q8_0", run: TrainingRun | None = None, background: bool = False,
                     scheduled: bool = False) -> TrainingRun:
    """Run the chain from `first` to `last`. From the start it is a new run; from a later stage it continues
    `run`, or the run that stage needs (the newest trained run for export, the newest verified model's for the
    gate and deploy). Raises PipelineError when there is none. `background`: see `enqueue_full_sync`."""
    stages = pipeline.STAGES
    if first not in stages or last not in stages or stages.index(first) > stages.index(last):
        raise ValueError(f"stages run in the order {stages}; got {first} to {last}")
    pipeline.recover_stale_runs()
    locked_shop(shop.id)  # one run at a time: the check and the run it starts are one locked transaction
    busy = pipeline.run_in_progress(shop)
    if busy is not None:
        db.session.rollback()
        raise PipelineError(f"Training run #{busy.id} is {busy.status} ({busy.stage or 'waiting'}); wait for it "
                            "to finish or cancel it.")
    if first == "build_datasets":
        run = TrainingRun(shop_id=shop.id, status="queued", hyperparameters=hyperparameters or {})
        db.session.add(run)
    elif run is None:
        run = pipeline.latest_trained_run(shop) if first == "export" else pipeline.newest_verified_run(shop)
        if run is None:
            raise PipelineError(f"{shop.domain} has no trained run to export" if first == "export" else
                                f"{shop.domain} has no verified model version waiting to be deployed")
        run.status, run.error = "queued", None
    else:
        run.status, run.error = "queued", None
    run.plan = {"first": first, "last": last, "conversations": conversations, "quantization": quantization,
                "force": force, "scheduled": scheduled}
    db.session.commit()
    (_later if background else _now)(_send_chain, run.id)
    db.session.refresh(run)
    return run


def _send_chain(run: TrainingRun | int) -> None:
    """The run's planned stretch of the chain, to the queues (or run now, in-process). The heartbeat says when
    it was sent, so the sweeper sends a queued run again only after waiting that long."""
    run = db.session.get(TrainingRun, run) if isinstance(run, int) else run
    run.heartbeat_at = utcnow()
    db.session.commit()
    plan, stages = run.plan, pipeline.STAGES
    options = {"build_datasets": {"conversations": plan.get("conversations")},
               "export": {"quantization": plan.get("quantization", "q8_0")}, "deploy": {"force": plan.get("force")}}
    chosen = stages[stages.index(plan["first"]):stages.index(plan["last"]) + 1]
    signatures = [claim_run.si(run.id), *(globals()[name].si(run.id, final=name == plan["last"],
                                                             **options.get(name, {})) for name in chosen)]
    try:
        chain(*signatures).delay()
    except Exception:  # in-process: the run row holds the error; queued: the sweeper sends it again
        log.exception("training run %s: chain not sent or failed", run.id)


def enqueue_rollback(shop: Shop, background: bool = False):
    """Bring back the previously live model version; returns it (None when there is none). With `background`
    it returns the version that is coming back at once (see `enqueue_full_sync`)."""
    if background:
        previous = pipeline.previous_version(shop)
        if previous is not None:
            _later(rollback.delay, shop.id)
        return previous
    result = rollback.apply_async((shop.id,), ignore_result=False)
    # An eager result is already there; Celery's "inside a task" flag is process-wide and may be set by a job on
    # another thread, so do not let it refuse this one.
    model_id = result.get(disable_sync_subtasks=False) if rollback.app.conf.task_always_eager \
        else result.get(timeout=600)
    return db.session.get(ModelVersion, model_id) if model_id else None


@shared_task(name="worker.tasks.evaluate_shop")
def evaluate_shop(shop_id: int, kind: str) -> str:
    """The admin's Evaluate now (`recommenders`: `pairwell evaluate SHOP`) and Check the assistant
    (`assistant`: `pairwell evaluate-assistant SHOP`), kept as reports for their pages."""
    module = evaluation if kind == "recommenders" else assistant_evaluation
    return module.evaluate_shop(db.session.get(Shop, shop_id))["status"]


def enqueue_evaluation(shop: Shop, kind: str) -> dict:
    """Start a report of `kind` (`recommenders` or `assistant`); returns its record (status `running`)."""
    record = reports.begin(shop, kind)
    _later(evaluate_shop.delay, shop.id, kind)
    return record


def add_conversations(shop: Shop, data: bytes, kind: str) -> int:
    """Keep the merchant's past conversations for every later training run (raises BadInput)."""
    return datasets.add_conversations(shop, data, kind)


def latest_evaluation(shop: Shop, kind: str) -> dict | None:
    return reports.read(shop, kind)


def evaluation_running(shop: Shop, kind: str) -> bool:
    return reports.running(reports.read(shop, kind))


def run_offline_evaluation(**options) -> dict:
    """`pairwell evaluate`: the recommenders compared on a shop's or a file's orders, in this process (it
    reads local files and reports progress to the terminal)."""
    return evaluation.run(**options)


def run_assistant_evaluation(**options) -> dict:
    """`pairwell evaluate-assistant`: the support assistant on its held-out question set, in this process."""
    return assistant_evaluation.evaluate(**options)
