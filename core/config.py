"""Configuration from the environment, with defaults that run the demo on one machine."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTANCE_DIR = ROOT / "instance"

API_VERSION = "2026-10"
"""The one place the Admin API version is pinned."""

DEFAULT_SCOPES = "read_products,read_orders,read_all_orders,write_app_proxy"
DEV_SECRET = "pairwell-development-secret-change-me"
DEV_CLIENT_ID = "pairwell-development-client-id"


def _derived_key(secret: str, purpose: str) -> str:
    """A stable dev-only key derived from the app secret, so a fresh checkout needs no setup."""
    digest = hashlib.sha256(f"pairwell:{purpose}:{secret}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()


def from_env(env: dict[str, str] | None = None) -> dict:
    """Flask config keys read from environment variables (see README, Configuration)."""
    env = dict(os.environ if env is None else env)
    secret = env.get("SHOPIFY_API_SECRET") or DEV_SECRET
    return {
        "SHOPIFY_API_KEY": env.get("SHOPIFY_API_KEY") or DEV_CLIENT_ID,
        "SHOPIFY_API_SECRET": secret,
        "SHOPIFY_APP_URL": env.get("SHOPIFY_APP_URL", "http://127.0.0.1:8000").rstrip("/"),
        "SHOPIFY_SCOPES": env.get("SHOPIFY_SCOPES", DEFAULT_SCOPES),
        # Where Admin API calls go; unset means the real https://{shop}. The sample store sets it to loopback.
        "SHOPIFY_ADMIN_ORIGIN": env.get("SHOPIFY_ADMIN_ORIGIN") or None,
        "SQLALCHEMY_DATABASE_URI": env.get("DATABASE_URL", f"sqlite:///{INSTANCE_DIR / 'pairwell.db'}"),
        # A failed statement's error never carries its parameters (a shopper's message, a customer id) into a log.
        "SQLALCHEMY_ENGINE_OPTIONS": {"hide_parameters": True},
        "REDIS_URL": env.get("REDIS_URL") or None,
        "OLLAMA_HOST": env.get("OLLAMA_HOST") or None,
        "PAIRWELL_ENCRYPTION_KEY": env.get("PAIRWELL_ENCRYPTION_KEY") or _derived_key(secret, "tokens"),
        "ENCRYPTION_KEY_DERIVED": not env.get("PAIRWELL_ENCRYPTION_KEY"),
        "BULK_POLL_SECONDS": float(env.get("PAIRWELL_BULK_POLL_SECONDS", "1.0")),
        "ADMIN_API_MAX_ATTEMPTS": 8,
        "PAIRWELL_ARTIFACTS": env.get("PAIRWELL_ARTIFACTS") or str(INSTANCE_DIR / "artifacts"),
        "BASE_MODEL": env.get("BASE_MODEL") or None,
        "MODEL_BUDGET_SECONDS": float(env.get("PAIRWELL_MODEL_BUDGET_SECONDS", "1.5")),
        # The support assistant's model writes a sentence or two, not a few titles: a little longer.
        "ASSISTANT_BUDGET_SECONDS": float(env.get("PAIRWELL_ASSISTANT_BUDGET_SECONDS", "3.0")),
        # Retrieval indexes a web process keeps, least recently used out first (a 5,000-product store's: ~170 MiB).
        "INDEX_CACHE_MB": int(env.get("PAIRWELL_INDEX_CACHE_MB", "1024")),
        "PROXY_LIMIT_PER_IP": int(env.get("PAIRWELL_PROXY_LIMIT_PER_IP", "120")),
        "PROXY_LIMIT_PER_SHOP": int(env.get("PAIRWELL_PROXY_LIMIT_PER_SHOP", "6000")),
        # Chat messages a minute per shopper (the signed customer, else the address) and per shop.
        "CHAT_LIMIT_PER_SHOPPER": int(env.get("PAIRWELL_CHAT_LIMIT_PER_SHOPPER", "30")),
        "CHAT_LIMIT_PER_SHOP": int(env.get("PAIRWELL_CHAT_LIMIT_PER_SHOP", "1200")),
        # Model calls a minute that shoppers' requests may make per shop, over every web process: past it the
        # shop's shoppers get the ranking or the facts alone, and the model host stays free for other shops.
        "MODEL_CALLS_PER_SHOP": int(env.get("PAIRWELL_MODEL_CALLS_PER_SHOP", "600")),
        # Proxies of our own in front of the app that append to X-Forwarded-For (Shopify's App Proxy counts).
        "TRUSTED_PROXIES": int(env.get("PAIRWELL_TRUSTED_PROXIES", "1")),
        "SECRET_KEY": env.get("SECRET_KEY") or _derived_key(secret, "cookies"),
        # The sweeper hands out again what was stored but not picked up this long (the broker was down).
        "SWEEP_EVERY_SECONDS": float(env.get("PAIRWELL_SWEEP_EVERY_SECONDS", "60")),
        "SWEEP_AFTER_SECONDS": float(env.get("PAIRWELL_SWEEP_AFTER_SECONDS", "120")),
        # App Bridge, from Shopify's CDN; the demo and the browser tests use the sample store's stand-in.
        "APP_BRIDGE_URL": env.get("PAIRWELL_APP_BRIDGE_URL", "https://cdn.shopify.com/shopifycloud/app-bridge.js"),
        # Train now's hyperparameters (the demo keeps its runs short); empty: the training defaults.
        "ADMIN_TRAINING": {},
    }


def production_problems(config: dict) -> list[str]:
    """Why this configuration must not serve real shops: the development placeholders are public, so anyone
    could sign webhooks and proxy requests with them, and a key derived from them protects no token."""
    problems = []
    if config["SHOPIFY_API_SECRET"] == DEV_SECRET:
        problems.append("SHOPIFY_API_SECRET is not set (the development placeholder is public)")
    if config["SHOPIFY_API_KEY"] == DEV_CLIENT_ID:
        problems.append("SHOPIFY_API_KEY is not set")
    if config.get("ENCRYPTION_KEY_DERIVED"):
        problems.append("PAIRWELL_ENCRYPTION_KEY is not set (generate one with "
                        "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')")
    return problems


def require_production(config: dict) -> None:
    """Refuse to start a production entry point (wsgi, `pairwell serve`, `pairwell worker`) on placeholders."""
    problems = production_problems(config)
    if problems:
        raise SystemExit("Pairwell will not start: " + "; ".join(problems) + ". (`pairwell demo` runs without them.)")
