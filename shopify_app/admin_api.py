"""`/api/*`: JSON for the embedded admin UI. Every route needs an App Bridge session token."""

from __future__ import annotations

from pathlib import PurePath

from flask import Blueprint, abort, current_app, g, request
from sqlalchemy import func, select

from core.assistant import replies
from core.inputs import BadInput, load_json, shopify_id, whole_number
from core.model import schedule
from core.recommendations import experiment, merchandising, serving
from core.shopify import shops
from core.storage.models import ModelVersion, Order, OrderLine, Product, SyncRun, TrainingRun, Variant, db, shop_lock
from worker.tasks import (
    PipelineError,
    add_conversations,
    enqueue_evaluation,
    enqueue_full_sync,
    enqueue_pipeline,
    enqueue_rollback,
    evaluation_running,
    latest_evaluation,
    training_in_progress,
)

from . import analytics
from .auth import session_token_required

bp = Blueprint("admin_api", __name__, url_prefix="/api")


def sync_run_json(run: SyncRun) -> dict:
    return {
        "id": run.id, "kind": run.kind, "status": run.status, "stage": run.stage, "progress": run.progress,
        "counts": run.counts, "error": run.error,
        "started_at": run.started_at and run.started_at.isoformat(),
        "finished_at": run.finished_at and run.finished_at.isoformat(),
    }


def json_body(what: str, max_depth: int = 3) -> object:
    """The request's JSON, or a 400 saying what is wrong with it."""
    try:
        return load_json(request.get_data(), what, max_depth=max_depth)
    except BadInput as exc:
        abort(400, str(exc))


def update_settings(shop, column: str, kind) -> None:
    """A PUT of one of the shop's settings (assistant, schedule, experiment): the body checked by the module's
    `validate_settings`, merged over its `settings`; a 400 saying what is wrong."""
    try:
        changes = kind.validate_settings(load_json(request.get_data(), f"the {column} settings", max_depth=4))
    except BadInput as exc:
        abort(400, str(exc))
    with shop_lock(shop.id):  # merged over what is stored now, not what this request read
        setattr(shop, column, {**kind.settings(shop), **changes})


def query_number(name: str, default: int, low: int, high: int) -> int:
    """A whole number from the query string, or a 400 saying what is wrong with it."""
    try:
        return whole_number(request.args.get(name, str(default)), name, low, high)
    except BadInput as exc:
        abort(400, str(exc))


@bp.before_request
@session_token_required
def load_shop():
    """Every route: a valid session token (the guard), and the installed shop it names, loaded once (`g.shop`)."""
    g.shop = shops.get_shop(g.shop_domain)
    if g.shop is None or not g.shop.is_installed:
        abort(403, f"{g.shop_domain} has not installed Pairwell.")


@bp.get("/shop")
def shop_summary():
    shop = g.shop

    def count(model):
        return db.session.scalar(select(func.count()).select_from(model).where(model.shop_id == shop.id))

    return {
        "shop": shop.domain, "scopes": shop.scopes.split(",") if shop.scopes else [],
        "installed_at": shop.installed_at.isoformat(),
        "counts": {"products": count(Product), "variants": count(Variant), "orders": count(Order),
                   "order_lines": count(OrderLine)},
    }


POLICY_KINDS = replies.POLICY_KINDS
MAX_POLICY_CHARS = 20_000


@bp.put("/policies")
def update_policies():
    """The merchant's own answers for the support assistant, by kind; an empty text removes one."""
    shop = g.shop
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
    with shop_lock(shop.id):  # merged over what is stored now, not what this request read
        policies = {**(shop.policies or {}), **{k: v.strip() for k, v in body.items()}}
        shop.policies = {k: v for k, v in policies.items() if v}
    return {"policies": shop.policies}


def training_run_json(run: TrainingRun) -> dict:
    return {
        "id": run.id, "status": run.status, "stage": run.stage, "step": run.step, "total_steps": run.total_steps,
        "loss": run.loss, "eval_loss": run.eval_loss, "tokens_per_second": run.tokens_per_second,
        "eta_seconds": run.eta_seconds, "history": run.history, "dataset_version": run.dataset_version,
        "dataset_stats": run.dataset_stats, "error": run.error,
        "time_budget_seconds": (run.hyperparameters or {}).get("time_budget_seconds"),
    }


@bp.get("/training-runs")
def training_runs():
    shop = g.shop
    runs = db.session.scalars(select(TrainingRun).where(TrainingRun.shop_id == shop.id)
                              .order_by(TrainingRun.id.desc()).limit(10)).all()
    return {"training_runs": [training_run_json(run) for run in runs]}


@bp.post("/training-runs/<int(min=1, max=2147483647):run_id>/cancel")
def cancel_training(run_id: int):
    run = db.session.get(TrainingRun, run_id)
    if run is None or run.shop_id != g.shop.id:
        abort(404, f"No training run {run_id} for this shop.")
    if run.status not in ("queued", "running"):
        abort(409, f"Training run {run_id} is {run.status}; only queued or running runs can be cancelled.")
    run.cancel_requested = True
    db.session.commit()
    return training_run_json(run), 202


@bp.get("/sync-runs")
def sync_runs():
    shop = g.shop
    runs = db.session.scalars(
        select(SyncRun).where(SyncRun.shop_id == shop.id).order_by(SyncRun.id.desc()).limit(20)).all()
    return {"sync_runs": [sync_run_json(run) for run in runs]}


@bp.post("/sync-runs")
def start_sync():
    """Sync now: refused while a sync is queued or running."""
    shop = g.shop
    with shop_lock(shop.id):  # two clicks at once start one sync
        busy = db.session.scalar(select(SyncRun).where(SyncRun.shop_id == shop.id,
                                                       SyncRun.status.in_(("queued", "running"))))
        if busy is not None:
            abort(409, f"Sync run #{busy.id} is {busy.status}; wait for it to finish.")
        return sync_run_json(enqueue_full_sync(shop, background=True)), 202


# --- Training and model versions ------------------------------------------------------------------------

@bp.post("/training-runs")
def start_training():
    """Train now: the whole chain (datasets → train → export → gate → deploy), one run at a time."""
    shop = g.shop
    busy = training_in_progress(shop)
    if busy is not None:
        abort(409, f"Training run #{busy.id} is {busy.status} ({busy.stage or 'waiting'}); wait for it to finish "
                   "or cancel it.")
    if not db.session.scalar(select(func.count()).select_from(Order).where(Order.shop_id == shop.id)):
        abort(409, "There are no orders to learn from yet: sync the store first.")
    hyperparameters = dict(current_app.config.get("ADMIN_TRAINING") or {})
    body = json_body("the training body") if request.get_data() else {}
    if not isinstance(body, dict) or not set(body) <= {"minutes"}:
        abort(400, 'Send nothing, or {"minutes": N} for a time budget.')
    if "minutes" in body:
        minutes = body["minutes"]
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not 1 <= minutes <= 24 * 60:
            abort(400, "minutes must be a number from 1 to 1440.")
        hyperparameters["time_budget_seconds"] = float(minutes) * 60
    try:  # the run in progress may have started since the check above
        return training_run_json(enqueue_pipeline(shop, hyperparameters=hyperparameters, background=True)), 202
    except PipelineError as exc:
        abort(409, str(exc))


def model_json(model: ModelVersion, relevance: dict[int, dict]) -> dict:
    """A version's model card: where it came from, how it trained, what the gate found, how the merchant rated
    what it showed, and what it is (size, checksum)."""
    run = db.session.get(TrainingRun, model.training_run_id) if model.training_run_id else None
    gate = (model.metrics or {}).get("gate")
    return {
        "id": model.id, "version": model.version, "status": model.status, "live": model.status == "deployed",
        "created_at": model.created_at.isoformat(), "deployed_at": model.deployed_at and model.deployed_at.isoformat(),
        "base_model": PurePath(model.base_model).name,  # its name: no server path reaches the merchant
        "quantization": model.quantization, "size_bytes": model.size_bytes,
        "sha256": model.sha256, "dataset_version": model.dataset_version,
        "dataset_stats": run.dataset_stats if run else {}, "history": run.history if run else [],
        "eval_loss": run.eval_loss if run else None, "training_run_id": model.training_run_id,
        "gate": gate, "label_mass": (gate or {}).get("label_mass"),
        "deploy_note": (model.metrics or {}).get("deploy"), "relevance": relevance.get(model.version),
    }


def model_cards(shop) -> dict:
    """The shop's newest versions' cards, and the merchant's ratings made while no model was live."""
    models = db.session.scalars(select(ModelVersion).where(ModelVersion.shop_id == shop.id)
                                .order_by(ModelVersion.version.desc()).limit(20)).all()
    relevance = merchandising.relevance_by_version(shop)
    return {"models": [model_json(m, relevance) for m in models], "unrated_relevance": relevance.get(0)}


@bp.get("/models")
def model_versions():
    return model_cards(g.shop)


@bp.post("/models/<int(min=1, max=2147483647):model_id>/deploy")
def deploy_model(model_id: int):
    """Deploy a verified version through the gate; one the gate refused only with `{"force": true}`."""
    shop = g.shop
    model = db.session.get(ModelVersion, model_id)
    if model is None or model.shop_id != shop.id:
        abort(404, f"No model version {model_id} for this shop.")
    if model.status != "verified" or model.training_run_id is None:
        abort(409, f"Model v{model.version} is {model.status}; only a verified version can be deployed "
                   "(use Roll back for an earlier one).")
    body = json_body("the deploy body") if request.get_data() else {}
    force = isinstance(body, dict) and body.get("force") is True
    gate = (model.metrics or {}).get("gate")
    if gate is not None and not gate["passed"] and not force:
        abort(409, f"The deploy gate refused v{model.version}: {gate['reason']}. Deploy anyway to override.")
    busy = training_in_progress(shop)
    if busy is not None:
        abort(409, f"Training run #{busy.id} is {busy.status}; deploy when it has finished.")
    run = db.session.get(TrainingRun, model.training_run_id)
    try:
        enqueue_pipeline(shop, first="deploy" if gate else "gate", last="deploy", run=run, force=force,
                         background=True)
    except PipelineError as exc:
        abort(409, str(exc))
    return model_json(model, {}), 202


@bp.get("/evaluations/<any(recommenders, assistant):kind>")
def evaluation(kind: str):
    """The latest report: `recommenders` (`pairwell evaluate SHOP`) or `assistant` (`pairwell
    evaluate-assistant SHOP`), if any."""
    return latest_evaluation(g.shop, kind) or {"status": "none"}


@bp.post("/evaluations/<any(recommenders, assistant):kind>")
def start_evaluation(kind: str):
    """Evaluate now: every recommender and the live model on the shop's newest orders, one product hidden each;
    or the assistant on its held-out questions from the shop's catalog, policies and orders."""
    shop = g.shop
    if not db.session.scalar(select(func.count()).select_from(Order).where(Order.shop_id == shop.id)):
        abort(409, "There are no orders to evaluate on yet: sync the store first.")
    with shop_lock(shop.id):  # two clicks at once start one report
        if evaluation_running(shop, kind):
            abort(409, "This evaluation is running; wait for it to finish.")
        return enqueue_evaluation(shop, kind), 202


@bp.post("/models/rollback")
def roll_back():
    """Bring back the version that was live before this one."""
    shop = g.shop
    model = enqueue_rollback(shop, background=True)
    if model is None:
        abort(409, "There is no earlier model version to roll back to.")
    return model_json(model, {}), 202


# --- Recommendations and merchandising ------------------------------------------------------------------

@bp.get("/products")
def products():
    """Products whose title holds `q` (all when empty), for the pickers."""
    shop = g.shop
    query = request.args.get("q", "").strip()[:100]
    rows = db.session.execute(select(
        Product.id, Product.title, Product.product_type, Product.status, Product.published).where(
        Product.shop_id == shop.id, Product.title.icontains(query, autoescape=True) if query else True)
        .order_by(Product.title).limit(query_number("limit", 50, 1, 1000)))
    # `published`: on the Online Store sales channel (only an ACTIVE, published product is ever recommended)
    return {"products": [{"id": i, "title": t, "product_type": k, "status": st, "published": pub}
                         for i, t, k, st, pub in rows],
            "product_types": sorted(set(db.session.scalars(select(Product.product_type).where(
                Product.shop_id == shop.id, Product.product_type != "")).all()))}


@bp.get("/recommendations/<product_id>")
def block_preview(product_id: str):
    """What the block shows on this product's page right now (no cache, the served arm), with where each
    product came from, its reason and the merchant's rating."""
    shop = g.shop
    try:
        viewing = db.session.get(Product, (shop.id, shopify_id(product_id, "product_id")))
    except BadInput as exc:
        abort(400, str(exc))
    if viewing is None:
        abort(404, f"The store has no product {product_id}.")
    picks, source = serving.recommend(shop, viewing, [], query_number("limit", 4, 1, 10), explain=True)
    rated = merchandising.ratings(shop, viewing.id)
    live = serving.live_model(shop)
    return {"product": {"id": viewing.id, "title": viewing.title, "product_type": viewing.product_type},
            "source": source, "model_version": live.version if live else None,
            "products": [{**serving.as_json(pick.offer, pick.reason), "origin": pick.origin,
                          "rating": rated.get(pick.offer.id)} for pick in picks]}


@bp.post("/ratings")
def rate_recommendation():
    """The merchant's 1–3 rating of one recommendation, kept for the version live now."""
    shop = g.shop
    live = serving.live_model(shop)
    try:
        row = merchandising.rate(shop, json_body("the rating body"), live.version if live else 0)
    except BadInput as exc:
        abort(400, str(exc))
    serving.forget_replies(shop.id)  # a product rated unrelated leaves the block at once
    return {"viewed_product_id": row.viewed_product_id, "product_id": row.product_id, "rating": row.rating,
            "model_version": row.model_version}, 201


@bp.get("/rules")
def rules():
    return {"rules": [merchandising.rule_json(r) for r in merchandising.list_rules(g.shop)]}


@bp.post("/rules")
def add_rule():
    """Pin, exclude a product or a type, or exclude a pair; the storefront honours it at once."""
    shop = g.shop
    try:
        rule = merchandising.add_rule(shop, json_body("the rule body"))
    except BadInput as exc:
        abort(400, str(exc))
    serving.forget_replies(shop.id)
    return merchandising.rule_json(rule), 201


@bp.delete("/rules/<int(min=1, max=2147483647):rule_id>")
def remove_rule(rule_id: int):
    shop = g.shop
    if not merchandising.remove_rule(shop, rule_id):
        abort(404, f"No rule {rule_id} for this shop.")
    serving.forget_replies(shop.id)
    return "", 204


# --- Schedule and experiment -----------------------------------------------------------------------------

@bp.get("/schedule")
def retraining_schedule():
    return schedule.schedule_json(g.shop)


@bp.put("/schedule")
def update_schedule():
    shop = g.shop
    update_settings(shop, "schedule", schedule)
    return schedule.schedule_json(shop)


@bp.get("/experiment")
def ab_experiment():
    """The holdout's settings and each arm's CTR, add-to-cart rate and AOV with 95% intervals."""
    shop = g.shop
    return {**experiment.settings(shop), **analytics.experiment_summary(shop.id, query_number("days", 30, 1, 365))}


@bp.put("/experiment")
def update_experiment():
    shop = g.shop
    update_settings(shop, "experiment", experiment)
    return experiment.settings(shop)


@bp.get("/storefront-metrics")
def storefront_metrics():
    """CTR, add-to-cart rate and AOV of the "pairs well with" block, overall and by source."""
    return analytics.summary(g.shop.id, query_number("days", 30, 1, 365))


@bp.get("/assistant")
def assistant_settings():
    """What the admin's assistant page shows: the settings and the policies the assistant answers from."""
    return assistant_json(g.shop)


def assistant_json(shop) -> dict:
    return {**replies.settings(shop), "policies": shop.policies or {}}


@bp.put("/assistant")
def update_assistant_settings():
    """Switch the assistant on or off, set its tone, handoff contact and the discount codes it may name."""
    shop = g.shop
    update_settings(shop, "assistant", replies)
    return assistant_json(shop)


@bp.post("/conversations/import")
def import_conversations():
    """Past support conversations for training (`?format=csv`: question,answer[,strategy]; `jsonl`: one
    {"messages": [...]} a line), as `pairwell dataset --conversations` takes them. The file is checked whole
    against one schema (core/model/datasets.py `conversation_records`: types, sizes, nesting, lines, encoding): it is
    kept, or refused with a 400 naming the line and the reason, and nothing of it is kept."""
    shop = g.shop
    kind = request.args.get("format", "csv")
    if kind not in ("csv", "jsonl"):  # before reading the body
        abort(400, "format must be csv or jsonl.")
    try:
        examples = add_conversations(shop, request.get_data(cache=False), kind)
    except BadInput as exc:
        abort(400, str(exc))
    return {"examples": examples}, 201


@bp.get("/conversations")
def conversations():
    """The assistant's conversations, handed-off ones first, with their transcripts."""
    talks = replies.conversations(g.shop, query_number("limit", 50, 1, 200))
    return {"conversations": [replies.conversation_json(t) for t in talks]}
