"""`/api/*`: JSON for the embedded admin UI. Every route needs an App Bridge session token."""

from __future__ import annotations

from flask import Blueprint, abort, g, request
from sqlalchemy import func, select

from core import assistant, shops
from core.inputs import BadInput, load_json, whole_number
from core.models import Order, OrderLine, Product, SyncRun, TrainingRun, Variant, db
from worker.tasks import enqueue_full_sync

from . import analytics
from .auth import session_token_required

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


def query_number(name: str, default: int, low: int, high: int) -> int:
    """A whole number from the query string, or a 400 saying what is wrong with it."""
    try:
        return whole_number(request.args.get(name, str(default)), name, low, high)
    except BadInput as exc:
        abort(400, str(exc))


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


POLICY_KINDS = assistant.POLICY_KINDS
MAX_POLICY_CHARS = 20_000


@bp.put("/policies")
def update_policies():
    """The merchant's own answers for the support assistant, by kind; an empty text removes one."""
    shop = _current_shop()
    try:
        body = load_json(request.get_data(), "the policies body", max_depth=2)
    except BadInput as exc:
        abort(400, str(exc))
    if not isinstance(body, dict) or not all(isinstance(v, str) for v in body.values()):
        abort(400, 'Send a JSON object of policy texts, for example {"returns": "..."}.')
    if any(len(v) > MAX_POLICY_CHARS for v in body.values()):
        abort(400, f"A policy text may be at most {MAX_POLICY_CHARS} characters.")
    unknown = sorted(set(body) - set(POLICY_KINDS))
    if unknown:
        abort(400, f"Unknown policy kinds {unknown}; expected some of {list(POLICY_KINDS)}.")
    policies = {**(shop.policies or {}), **{k: v.strip() for k, v in body.items()}}
    shop.policies = {k: v for k, v in policies.items() if v}
    db.session.commit()
    return {"policies": shop.policies}


def training_run_json(run: TrainingRun) -> dict:
    return {
        "id": run.id, "status": run.status, "stage": run.stage, "step": run.step, "total_steps": run.total_steps,
        "loss": run.loss, "eval_loss": run.eval_loss, "tokens_per_second": run.tokens_per_second,
        "eta_seconds": run.eta_seconds, "history": run.history, "dataset_version": run.dataset_version,
        "dataset_stats": run.dataset_stats, "error": run.error,
    }


@bp.get("/training-runs")
def training_runs():
    shop = _current_shop()
    runs = db.session.scalars(select(TrainingRun).where(TrainingRun.shop_id == shop.id)
                              .order_by(TrainingRun.id.desc()).limit(10)).all()
    return {"training_runs": [training_run_json(run) for run in runs]}


@bp.post("/training-runs/<int(min=1, max=2147483647):run_id>/cancel")
def cancel_training(run_id: int):
    run = db.session.get(TrainingRun, run_id)
    if run is None or run.shop_id != _current_shop().id:
        abort(404, f"No training run {run_id} for this shop.")
    if run.status not in ("queued", "running"):
        abort(409, f"Training run {run_id} is {run.status}; only queued or running runs can be cancelled.")
    run.cancel_requested = True
    db.session.commit()
    return training_run_json(run), 202


@bp.get("/sync-runs")
def sync_runs():
    shop = _current_shop()
    runs = db.session.scalars(
        select(SyncRun).where(SyncRun.shop_id == shop.id).order_by(SyncRun.id.desc()).limit(20)).all()
    return {"sync_runs": [sync_run_json(run) for run in runs]}


@bp.post("/sync-runs")
def start_sync():
    return sync_run_json(enqueue_full_sync(_current_shop())), 202


@bp.get("/storefront-metrics")
def storefront_metrics():
    """CTR, add-to-cart rate and AOV of the "pairs well with" block, overall and by source."""
    return analytics.summary(_current_shop().id, query_number("days", 30, 1, 365))


@bp.get("/assistant")
def assistant_settings():
    """What the admin's assistant page shows: the settings and the policies the assistant answers from."""
    return assistant_json(_current_shop())


def assistant_json(shop) -> dict:
    return {**assistant.settings(shop), "policies": shop.policies or {}}


@bp.put("/assistant")
def update_assistant_settings():
    """Switch the assistant on or off, set its tone, handoff contact and the discount codes it may name."""
    shop = _current_shop()
    try:
        changes = assistant.validate_settings(load_json(request.get_data(), "the settings body", max_depth=4))
    except BadInput as exc:
        abort(400, str(exc))
    shop.assistant = {**assistant.settings(shop), **changes}
    db.session.commit()
    return assistant_json(shop)


@bp.get("/conversations")
def conversations():
    """The assistant's conversations, handed-off ones first, with their transcripts."""
    talks = assistant.conversations(_current_shop(), query_number("limit", 50, 1, 200))
    return {"conversations": [assistant.conversation_json(t) for t in talks]}
