"""The app's declared configuration agrees with its code."""

import tomllib

from core.config import ROOT, from_env
from core.shopify.webhooks import TOPICS
from worker.webhooks import HANDLERS


def test_shopify_app_toml_declares_scopes_webhooks_and_proxy():
    config = tomllib.loads((ROOT / "shopify.app.toml").read_text())
    scopes = set(config["access_scopes"]["scopes"].split(","))
    assert {"read_products", "read_orders", "write_app_proxy"} <= scopes
    assert config["access_scopes"]["optional_scopes"] == ["read_all_orders"]
    subscriptions = config["webhooks"]["subscriptions"]
    topics = {t for s in subscriptions for t in s.get("topics", [])}
    compliance = {t for s in subscriptions for t in s.get("compliance_topics", [])}
    assert compliance == {"customers/data_request", "customers/redact", "shop/redact"}
    assert topics | compliance == set(TOPICS) == set(HANDLERS)  # every subscribed topic, and only those, is handled
    assert all(s["uri"].endswith("/webhooks") for s in subscriptions)
    assert config["webhooks"]["api_version"] == "2026-10"
    proxy = config["app_proxy"]
    assert (proxy["prefix"], proxy["subpath"]) == ("apps", "pairwell") and proxy["url"].endswith("/proxy")


def test_environment_defaults_and_overrides():
    defaults = from_env({})
    assert defaults["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///") and defaults["REDIS_URL"] is None
    assert defaults["OLLAMA_HOST"] is None and defaults["SHOPIFY_ADMIN_ORIGIN"] is None
    custom = from_env({"DATABASE_URL": "postgresql+psycopg://db/pairwell", "REDIS_URL": "redis://r:6379/0",
                       "SHOPIFY_API_SECRET": "s1"})
    assert custom["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://db/pairwell"
    assert custom["REDIS_URL"] == "redis://r:6379/0"
    # The dev encryption key follows the secret, so two apps never share one by accident.
    assert custom["PAIRWELL_ENCRYPTION_KEY"] != from_env({"SHOPIFY_API_SECRET": "s2"})["PAIRWELL_ENCRYPTION_KEY"]
