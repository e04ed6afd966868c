"""`/api/*`: JSON for the embedded admin UI. Every route needs an App Bridge session token."""

from __future__ import annotations

from flask import Blueprint, abort, g
from sqlalchemy import func, select

from . import shops
from .auth import session_token_required
from .models import Order, OrderLine, Product, SyncRun, Variant, db

bp = Blueprint("admin_api", __name__, url_prefix="/api")


def _current_shop():
    shop = shops.get_shop(g.shop_domain)
    if shop is None or not shop.is_installed:
        abort(403, f"{g.shop_domain} has not installed Pairwell.")
    return shop


def sync_run_json(run: SyncRun) -> dict:
    return {
        "id": run.id, "kind": run.kind, "status": run.status, "stage": run.stage, "progress": run.progress,
        "counts": run.counts, "error": run.error,
        "started_at": run.started_at and run.started_at.isoformat(),
        "finished_at": run.finished_at and run.finished_at.isoformat(),
    }


@bp.before_request
@session_token_required
def require_session_token():
    """Applies the guard to every route of the blueprint."""


@bp.get("/shop")
def shop_summary():
    shop = _current_shop()

    def count(model):
        return db.session.scalar(select(func.count()).select_from(model).where(model.shop_id == shop.id))

    return {
        "shop": shop.domain, "scopes": shop.scopes.split(",") if shop.scopes else [],
        "installed_at": shop.installed_at.isoformat(),
        "counts": {"products": count(Product), "variants": count(Variant), "orders": count(Order),
                   "order_lines": count(OrderLine)},
    }


@bp.get("/sync-runs")
def sync_runs():
    shop = _current_shop()
    runs = db.session.scalars(
        select(SyncRun).where(SyncRun.shop_id == shop.id).order_by(SyncRun.id.desc()).limit(20)).all()
    return {"sync_runs": [sync_run_json(run) for run in runs]}


@bp.post("/sync-runs")
def start_sync():
    from worker.tasks import enqueue_full_sync

    return sync_run_json(enqueue_full_sync(_current_shop())), 202
