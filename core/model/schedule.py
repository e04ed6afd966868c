"""Retraining on a schedule: each shop's chosen cadence, when its next run is due, and what the last one did.
Celery beat calls `worker.tasks.retrain_on_schedule` hourly; it starts the same chain and gate as the admin."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from core.inputs import BadInput
from core.storage.models import Shop, TrainingRun, db

CADENCES = {"off": None, "weekly": timedelta(days=7), "monthly": timedelta(days=30)}
DEFAULTS = {"cadence": "monthly"}


def settings(shop: Shop) -> dict:
    return {**DEFAULTS, **(shop.schedule or {})}


def validate_settings(body: object) -> dict:
    if not isinstance(body, dict) or set(body) != {"cadence"} or body["cadence"] not in CADENCES:
        raise BadInput(f'Send {{"cadence": ...}} with one of {list(CADENCES)}.')
    return body


def last_run(shop: Shop) -> TrainingRun | None:
    return db.session.scalars(select(TrainingRun).where(TrainingRun.shop_id == shop.id)
                              .order_by(TrainingRun.id.desc())).first()


def next_run_at(shop: Shop) -> datetime | None:
    """A cadence after the shop's newest run (or its install, before any): None when switched off."""
    period = CADENCES[settings(shop)["cadence"]]
    if period is None or shop.installed_at is None:
        return None
    newest = last_run(shop)
    return (newest.created_at if newest else shop.installed_at) + period


def due_shops(now: datetime) -> list[Shop]:
    shops = db.session.scalars(select(Shop).where(Shop.installed_at.is_not(None), Shop.uninstalled_at.is_(None)))
    return [shop for shop in shops if (when := next_run_at(shop)) is not None and when <= now]


def schedule_json(shop: Shop) -> dict:
    newest, when = last_run(shop), next_run_at(shop)
    return {**settings(shop), "cadences": list(CADENCES), "next_run_at": when and when.isoformat(),
            "last_run": newest and {"id": newest.id, "status": newest.status, "stage": newest.stage,
                                    "scheduled": bool((newest.plan or {}).get("scheduled")),
                                    "created_at": newest.created_at.isoformat(), "error": newest.error}}
