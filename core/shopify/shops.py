"""Installing, uninstalling and holding a shop's access token (encrypted at rest, refreshed before expiry)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cryptography.fernet import Fernet
from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core.shopify import shopify_api
from core.shopify.shopify_api import AdminClient, ShopifyError, TokenGrant
from core.storage.models import Shop, db, shop_lock, utcnow

REFRESH_MARGIN = timedelta(minutes=5)


def _fernet() -> Fernet:
    return Fernet(current_app.config["PAIRWELL_ENCRYPTION_KEY"].encode())


def encrypt(value: str | None) -> str | None:
    return _fernet().encrypt(value.encode()).decode() if value else None


def decrypt(value: str | None) -> str | None:
    return _fernet().decrypt(value.encode()).decode() if value else None


def app_credentials() -> dict:
    config = current_app.config
    return {"api_key": config["SHOPIFY_API_KEY"], "secret": config["SHOPIFY_API_SECRET"],
            "origin": config["SHOPIFY_ADMIN_ORIGIN"]}


def get_shop(domain: str) -> Shop | None:
    return db.session.scalar(select(Shop).where(Shop.domain == domain))


def store_grant(shop: Shop, grant: TokenGrant) -> None:
    shop.access_token_encrypted = encrypt(grant.access_token)
    shop.access_token_expires_at = grant.expires_at
    shop.refresh_token_encrypted = encrypt(grant.refresh_token)
    shop.refresh_token_expires_at = grant.refresh_token_expires_at
    if grant.scope:
        shop.scopes = grant.scope


def install(domain: str, grant: TokenGrant) -> Shop:
    """Record a (re)install. A shop that had uninstalled starts over with a fresh install time."""
    if get_shop(domain) is None:
        try:  # two first loads at once: one inserts, the other finds its row
            db.session.add(Shop(domain=domain))
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
    with shop_lock(get_shop(domain).id) as shop:
        if shop.uninstalled_at is not None or shop.installed_at is None:
            shop.installed_at = utcnow()
            shop.uninstalled_at = None
        store_grant(shop, grant)
    return shop


def uninstall(domain: str) -> Shop | None:
    """Mark the shop uninstalled and drop its tokens; its data stays until shop/redact."""
    shop = get_shop(domain)
    if shop is not None:
        shop.uninstalled_at = utcnow()
        shop.access_token_encrypted = shop.refresh_token_encrypted = None
        shop.access_token_expires_at = shop.refresh_token_expires_at = None
        db.session.commit()
    return shop


def access_token(shop: Shop, now: datetime | None = None) -> str:
    """A usable offline token, refreshed first when it expires within a few minutes."""
    now = now or datetime.now(timezone.utc)
    if shop.access_token_encrypted and _expiring(shop, now):
        # A refresh retires the refresh token it used: under the shop's lock, only the first of two processes
        # refreshes, and the second reads the token the first stored.
        with shop_lock(shop.id):
            if _expiring(shop, now):
                if not shop.refresh_token_encrypted or (shop.refresh_token_expires_at or now) <= now:
                    raise ShopifyError(f"{shop.domain}: access token expired and cannot be refreshed", status=401)
                grant = shopify_api.refresh_access_token(shop.domain, decrypt(shop.refresh_token_encrypted),
                                                         **app_credentials())
                store_grant(shop, grant)
    if not shop.access_token_encrypted:  # never installed, or uninstalled (meanwhile, too)
        raise ShopifyError(f"{shop.domain} has no access token (not installed)", status=401)
    return decrypt(shop.access_token_encrypted)


def _expiring(shop: Shop, now: datetime) -> bool:
    return shop.access_token_expires_at is not None and shop.access_token_expires_at - REFRESH_MARGIN <= now


def admin_client(shop: Shop, **kwargs) -> AdminClient:
    kwargs.setdefault("max_attempts", current_app.config["ADMIN_API_MAX_ATTEMPTS"])
    return AdminClient.for_shop(shop.domain, access_token(shop),
                                origin=current_app.config["SHOPIFY_ADMIN_ORIGIN"], **kwargs)


def refresh_expired(shop: Shop, now: datetime | None = None) -> bool:
    """True when the stored token can no longer be refreshed, so only a new token exchange helps."""
    now = now or datetime.now(timezone.utc)
    token_dead = shop.access_token_expires_at is not None and shop.access_token_expires_at <= now
    refresh_dead = shop.refresh_token_expires_at is None or shop.refresh_token_expires_at <= now
    return token_dead and refresh_dead
