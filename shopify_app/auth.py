"""Install and authentication: session tokens (verified here for the admin pages, `/api/*` and the embedded
entry in `admin.py`), installing a shop, and the legacy authorization-code redirect for non-embedded installs.
Also the `session_token_required` guard."""

from __future__ import annotations

import functools
import secrets
import time
from urllib.parse import urlencode, urlparse

import jwt
from flask import Blueprint, abort, current_app, g, redirect, request, session

from core.inputs import BadInput, whole_number
from core.shopify import shopify_api, shops
from core.shopify.shopify_api import ShopifyError
from core.shopify.signatures import MAX_TIMESTAMP, is_valid_shop_domain, same, verify_oauth_query
from worker.tasks import enqueue_full_sync

bp = Blueprint("auth", __name__)

OAUTH_MAX_AGE_SECONDS = 24 * 3600

# App Bridge session tokens (docs/security.md, Session tokens): Shopify's documented payload, every claim required.
SESSION_TOKEN_ALGORITHM = "HS256"
SESSION_TOKEN_CLAIMS = ("iss", "dest", "aud", "sub", "exp", "nbf", "iat", "jti", "sid")
SESSION_TOKEN_TEXT_CLAIMS = ("iss", "dest", "aud", "sub", "jti", "sid")
SESSION_TOKEN_TIME_CLAIMS = ("exp", "nbf", "iat")
SESSION_TOKEN_LEEWAY_SECONDS = 10  # clock skew allowed on exp, nbf and iat (Shopify's own libraries allow 10 s)


def bearer_token(allow_query: bool = False) -> str | None:
    """The session token from `Authorization: Bearer`, or (the embedded entry only) the `id_token` query."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header.removeprefix("Bearer ").strip()
    return request.args.get("id_token") if allow_query else None


def _session_token_claims(token: str) -> dict:
    """The verified claims, or `jwt.InvalidTokenError` saying what is wrong. Signature, algorithm, audience, the
    presence of every claim and the times are PyJWT's; the shapes and the shop are checked after it."""
    try:
        claims = jwt.decode(
            token, current_app.config["SHOPIFY_API_SECRET"], algorithms=[SESSION_TOKEN_ALGORITHM],
            audience=current_app.config["SHOPIFY_API_KEY"], leeway=SESSION_TOKEN_LEEWAY_SECONDS,
            options={"require": list(SESSION_TOKEN_CLAIMS), "verify_signature": True, "verify_exp": True,
                     "verify_nbf": True, "verify_iat": True, "verify_aud": True, "strict_aud": True})
    except (TypeError, ValueError, OverflowError) as exc:  # a claim PyJWT could not even compare (inf, a list…)
        raise jwt.InvalidTokenError(f"malformed claims ({type(exc).__name__})") from exc
    for name in SESSION_TOKEN_TEXT_CLAIMS:
        if not isinstance(claims[name], str) or not claims[name]:
            raise jwt.InvalidTokenError(f"the {name} claim must be a non-empty string")
    for name in SESSION_TOKEN_TIME_CLAIMS:
        if type(claims[name]) is not int:  # NumericDate in whole seconds; not a bool, a float or a numeric string
            raise jwt.InvalidTokenError(f"the {name} claim must be a whole number of seconds")
    # PyJWT 2.15 refuses a future iat itself (verify_iat); pyproject admits older PyJWTs, so the rule is also here.
    if claims["iat"] > time.time() + SESSION_TOKEN_LEEWAY_SECONDS:
        raise jwt.ImmatureSignatureError("The token is not yet valid (iat)")
    shop = claims["dest"].removeprefix("https://")
    if claims["dest"] != f"https://{shop}" or not is_valid_shop_domain(shop):
        raise jwt.InvalidTokenError("dest must be https://<shop>.myshopify.com")
    if claims["iss"] != f"https://{shop}/admin":
        raise jwt.InvalidIssuerError("iss must be the admin of the dest shop (https://<shop>.myshopify.com/admin)")
    return claims


def verify_session_token(token: str) -> dict:
    """Claims of a valid App Bridge session token, or 401."""
    try:
        return _session_token_claims(token)
    except jwt.InvalidTokenError as exc:
        abort(401, f"Invalid session token: {exc}")


def shop_from_claims(claims: dict) -> str:
    return urlparse(claims["dest"]).hostname


def session_token_required(view):
    """Admin JSON endpoints: the caller must present `Authorization: Bearer <session token>`."""

    @functools.wraps(view)
    def guarded(*args, **kwargs):
        token = bearer_token()
        if not token:
            abort(401, "Missing session token (send Authorization: Bearer <token> from App Bridge).")
        g.session_claims = verify_session_token(token)
        g.shop_domain = shop_from_claims(g.session_claims)
        return view(*args, **kwargs)

    return guarded


def valid_shop_arg() -> str | None:
    shop = request.args.get("shop")
    if shop is not None and not is_valid_shop_domain(shop):
        abort(400, f"Invalid shop domain {shop!r}: expected something like your-store.myshopify.com.")
    return shop


def install_and_sync(domain: str, grant: shopify_api.TokenGrant):
    """Record the (re)install and start the first full sync."""
    shop = shops.install(domain, grant)
    enqueue_full_sync(shop)
    return shop


@bp.get("/auth/install")
def install():
    """Non-embedded install: send the merchant to Shopify's grant screen with a nonce in a signed cookie."""
    shop = valid_shop_arg()
    if not shop:
        abort(400, "Missing shop parameter.")
    session["oauth_state"] = state = secrets.token_urlsafe(24)
    params = {
        "client_id": current_app.config["SHOPIFY_API_KEY"],
        "scope": current_app.config["SHOPIFY_SCOPES"],
        "redirect_uri": current_app.config["SHOPIFY_APP_URL"] + "/auth/callback",
        "state": state,
    }
    return redirect(f"https://{shop}/admin/oauth/authorize?{urlencode(params)}")


@bp.get("/auth/callback")
def callback():
    shop = valid_shop_arg()
    if not shop:
        abort(400, "Missing shop parameter.")
    pairs = list(request.args.items(multi=True))
    if not verify_oauth_query(pairs, current_app.config["SHOPIFY_API_SECRET"]):
        abort(401, "HMAC verification failed.")
    expected_state = session.pop("oauth_state", None)
    if not expected_state or not same(expected_state, request.args.get("state", "")):
        abort(401, "The state parameter does not match this browser's install attempt.")
    try:
        issued = whole_number(request.args.get("timestamp", "0"), "timestamp", 0, MAX_TIMESTAMP)
    except BadInput as exc:
        abort(400, str(exc))
    if abs(time.time() - issued) > OAUTH_MAX_AGE_SECONDS:
        abort(401, "The callback is too old.")
    try:
        grant = shopify_api.exchange_authorization_code(shop, request.args.get("code", ""), **shops.app_credentials())
    except ShopifyError as exc:
        abort(401 if exc.status in (400, 401) else 502, f"Code exchange failed: {exc}")
    install_and_sync(shop, grant)
    return redirect(f"https://{shop}/admin/apps/{current_app.config['SHOPIFY_API_KEY']}")
