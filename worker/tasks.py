"""Celery tasks: each only orchestrates named stages from the modules beside it."""

from __future__ import annotations

import logging

from celery import shared_task

from shopify_app.models import SyncRun, db

from . import sync, webhooks

log = logging.getLogger(__name__)


@shared_task(name="worker.tasks.process_webhook", autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def process_webhook(delivery_id: int) -> str:
    return webhooks.handle_delivery(delivery_id).status


@shared_task(name="worker.tasks.full_sync")
def full_sync(sync_run_id: int) -> dict:
    run = sync.run_full_sync(db.session.get(SyncRun, sync_run_id))
    return run.counts


def enqueue_full_sync(shop) -> SyncRun:
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
