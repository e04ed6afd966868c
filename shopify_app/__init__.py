"""Pairwell: a Shopify embedded app that learns which products pair well together."""

from __future__ import annotations

from flask import Flask, jsonify, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from core import config, logs
from core.readiness import readiness
from core.recommendations.serving import ServingState
from core.shopify.signatures import is_valid_shop_domain
from core.storage.models import db


def create_app(test_config: dict | None = None) -> Flask:
    logs.install()
    app = Flask(__name__, template_folder=str(config.ROOT / "templates"), instance_path=str(config.INSTANCE_DIR))
    app.config.from_mapping(config.from_env(), MAX_CONTENT_LENGTH=8 * 1024 * 1024,
                            SESSION_COOKIE_SAMESITE="Lax")
    if test_config:
        app.config.update(test_config)
    app.config["SESSION_COOKIE_SECURE"] = app.config["SHOPIFY_APP_URL"].startswith("https://")
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///"):
        config.INSTANCE_DIR.mkdir(exist_ok=True)

    db.init_app(app)
    app.extensions["pairwell_serving"] = ServingState(index_bytes=app.config["INDEX_CACHE_MB"] * 2**20)

    from worker.celery_app import celery_init_app

    celery_init_app(app)

    from . import admin, admin_api, auth, proxy, webhooks

    app.register_blueprint(auth.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(admin_api.bp)
    app.register_blueprint(proxy.bp)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        """Every refusal is JSON with a sentence saying what was wrong."""
        response = jsonify(error=error.name, message=error.description)
        response.status_code = error.code or 500
        return response

    @app.get("/ready")
    def ready():
        """Readiness for a load balancer: 200 once the encoder and the live models are loaded, else 503."""
        state = readiness(app)
        return state, 200 if state["ready"] else 503

    @app.errorhandler(SQLAlchemyError)
    def database_away(error: SQLAlchemyError):
        """The database is down or locked: say so (503, retry later), never a trace."""
        db.session.rollback()
        app.logger.error("database error on %s: %s", request.path, error)
        response = jsonify(error="Service Unavailable", message="The database is unavailable; retry later.")
        response.status_code, response.headers["Retry-After"] = 503, "30"
        return response

    @app.after_request
    def allow_shopify_framing(response):
        """Embedded apps load in the admin's iframe: allow exactly that shop's admin to frame us."""
        shop = request.args.get("shop", "")
        ancestors = "https://admin.shopify.com"
        if is_valid_shop_domain(shop):
            ancestors = f"https://{shop} " + ancestors
        response.headers.setdefault("Content-Security-Policy", f"frame-ancestors {ancestors};")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")  # JSON is never sniffed into HTML
        return response

    return app

