"""The embedded admin's pages: Home (also the embedded entry, where a shop installs), Recommendations, Models,
Schedule, Experiment, Assistant.

Each page is rendered on the server from the shop's data and then kept live by its script through `/api/*`
(admin_api.py) with App Bridge session tokens. Shopify puts `id_token` on the admin's first load; a page
loaded without one (a link inside the app, a reload) gets the bounce page, which asks App Bridge for a token
and loads the page again with it, as Shopify's own app templates do."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from urllib.parse import urlencode

from babel import Locale, UnknownLocaleError
from babel.numbers import format_currency
from flask import Blueprint, abort, current_app, g, redirect, render_template, request
from sqlalchemy import func, select

from core.assistant import replies
from core.model import schedule
from core.recommendations import experiment, merchandising, serving
from core.shopify import shopify_api, shops
from core.shopify.shopify_api import ShopifyError
from core.storage.models import ModelVersion, Order, Product, SyncRun, TrainingRun, db
from worker.tasks import latest_evaluation, training_in_progress

from . import analytics
from .admin_api import model_cards, sync_run_json, training_run_json
from .auth import bearer_token, install_and_sync, shop_from_claims, valid_shop_arg, verify_session_token

bp = Blueprint("admin", __name__)

PAGES = {"home": "Home", "recommendations": "Recommendations", "models": "Models", "schedule": "Schedule",
         "experiment": "Experiment", "assistant": "Assistant"}


def page_links() -> dict[str, str]:
    """Links between the pages keep the admin's own query (shop, host, embedded), never the token."""
    kept = urlencode({k: v for k, v in request.args.items() if k in ("shop", "host", "embedded", "locale")})
    return {name: ("/" if name == "home" else f"/{name}") + (f"?{kept}" if kept else "") for name in PAGES}


@bp.app_template_filter("money")
def money(amount, currency: str) -> str:
    """An amount in the shop's currency, as the admin's locale writes it ("$143.95", "143,95 €"); "–" for none."""
    try:
        value = Decimal(str(amount))
    except (InvalidOperation, ValueError):
        return "–"
    if not currency:
        return f"{value:,.2f}"
    try:
        locale = Locale.parse(request.args.get("locale") or "en", sep="-")
    except (UnknownLocaleError, ValueError):
        locale = Locale("en")
    return format_currency(value, currency, locale=locale)


def render_page(name: str, shop, **context):
    return render_template(f"admin/{name}.html", page=name, pages=PAGES, links=page_links(), shop=shop,
                           api_key=current_app.config["SHOPIFY_API_KEY"],
                           app_bridge_url=current_app.config["APP_BRIDGE_URL"], **context)


def bounce():
    """No session token on this load: let App Bridge supply one and come back."""
    return render_template("admin/bounce.html", api_key=current_app.config["SHOPIFY_API_KEY"],
                           app_bridge_url=current_app.config["APP_BRIDGE_URL"])


@bp.before_request
def authenticate_page():
    if request.endpoint == "admin.embedded_entry":
        return None
    token = request.args.get("id_token")
    if not token:
        return bounce()
    g.shop_domain = shop_from_claims(verify_session_token(token))
    if request.args.get("shop", g.shop_domain) != g.shop_domain:
        abort(401, "The session token was issued for a different shop.")
    shop = shops.get_shop(g.shop_domain)
    if shop is None or not shop.is_installed:
        abort(403, f"{g.shop_domain} has not installed Pairwell: open it from the Shopify admin to install.")
    g.shop = shop


def home_context(shop) -> dict:
    runs = db.session.scalars(select(SyncRun).where(SyncRun.shop_id == shop.id)
                              .order_by(SyncRun.id.desc()).limit(5)).all()
    counts = {name: db.session.scalar(select(func.count()).select_from(model).where(model.shop_id == shop.id))
              for name, model in (("products", Product), ("orders", Order))}
    live = serving.live_model(shop)
    newest = db.session.scalars(select(ModelVersion).where(ModelVersion.shop_id == shop.id)
                                .order_by(ModelVersion.version.desc()).limit(1)).first()
    training = training_in_progress(shop)
    return {"sync_runs": [sync_run_json(r) for r in runs],
            "counts": counts, "live": live and {"version": live.version, "deployed_at": live.deployed_at},
            "newest": newest and {"version": newest.version, "created_at": newest.created_at,
                                  "status": newest.status, "gate": (newest.metrics or {}).get("gate")},
            "training": training and {"id": training.id, "stage": training.stage or training.status},
            "metrics": analytics.summary(shop.id, 30)}


@bp.get("/")
def embedded_entry():
    """Shopify admin loads us here with `?shop=…&id_token=…`. First visit (or after an uninstall): install, by
    token exchange. It authenticates itself (`authenticate_page` lets it through): it is where a shop that has
    not installed yet arrives."""
    shop_arg = valid_shop_arg()
    token = bearer_token(allow_query=True)
    if not token:
        if shop_arg and request.args.get("embedded") == "1":  # inside the admin: App Bridge has a token for us
            return bounce()
        if shop_arg:
            return redirect(f"/auth/install?{urlencode({'shop': shop_arg})}")
        abort(400, "Open Pairwell from your Shopify admin: the request carries no shop and no session token.")
    domain = shop_from_claims(verify_session_token(token))
    if shop_arg and shop_arg != domain:
        abort(401, "The session token was issued for a different shop.")

    shop = shops.get_shop(domain)
    if shop is None or not shop.is_installed or shops.refresh_expired(shop):
        try:
            grant = shopify_api.exchange_session_token(domain, token, **shops.app_credentials())
        except ShopifyError as exc:
            abort(401 if exc.status in (400, 401) else 502, f"Token exchange failed: {exc}")
        shop = install_and_sync(domain, grant)
    return render_page("home", shop, **home_context(shop))


@bp.get("/recommendations")
def recommendations_page():
    return render_page("recommendations", g.shop, rules=[merchandising.rule_json(r)
                                                         for r in merchandising.list_rules(g.shop)])


@bp.get("/models")
def models_page():
    training = db.session.scalars(select(TrainingRun).where(TrainingRun.shop_id == g.shop.id)
                                  .order_by(TrainingRun.id.desc())).first()
    return render_page("models", g.shop, models=model_cards(g.shop)["models"],
                       training=training and training_run_json(training),
                       evaluation=latest_evaluation(g.shop, "recommenders"))


@bp.get("/schedule")
def schedule_page():
    return render_page("schedule", g.shop, schedule=schedule.schedule_json(g.shop))


@bp.get("/experiment")
def experiment_page():
    return render_page("experiment", g.shop, settings=experiment.settings(g.shop),
                       summary=analytics.experiment_summary(g.shop.id, 30))


@bp.get("/assistant")
def assistant_page():
    talks = replies.conversations(g.shop, 20)
    return render_page("assistant", g.shop, settings=replies.settings(g.shop), policies=g.shop.policies or {},
                       policy_kinds=replies.POLICY_KINDS, tones=sorted(replies.TONES),
                       conversations=[replies.conversation_json(t) for t in talks],
                       evaluation=latest_evaluation(g.shop, "assistant"))
