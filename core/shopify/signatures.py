"""Shopify's signing schemes: OAuth query HMAC, App Proxy signature, webhook HMAC, shop domains.

Each check is a pure function over what arrived, tested against Shopify's published vectors.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Iterable
from urllib.parse import urlencode

from core.inputs import BadInput, whole_number

SHOP_DOMAIN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9-]{0,62}\.myshopify\.com$")  # a DNS label: 63 characters at most
PROXY_MAX_SKEW_SECONDS = 90
MAX_TIMESTAMP = 10**11  # seconds since 1970, far past any real request (and never 10**4000)


def is_valid_shop_domain(shop: str | None) -> bool:
    return bool(shop) and SHOP_DOMAIN.fullmatch(shop) is not None


def _hex_hmac(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def same(expected: str, given: str) -> bool:
    """Constant-time comparison that takes any text (`compare_digest` raises on non-ASCII str)."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape"))


def oauth_hmac(pairs: Iterable[tuple[str, str]], secret: str) -> str:
    """Hex HMAC of the query without `hmac` (and legacy `signature`), `k=v` sorted and joined with `&`."""
    message = "&".join(sorted(f"{k}={v}" for k, v in pairs if k not in ("hmac", "signature")))
    return _hex_hmac(secret, message)


def verify_oauth_query(pairs: list[tuple[str, str]], secret: str) -> bool:
    given = dict(pairs).get("hmac", "")
    return bool(given) and same(oauth_hmac(pairs, secret), given)


def app_proxy_signature(pairs: Iterable[tuple[str, str]], secret: str) -> str:
    """Hex HMAC of the proxy query: repeated keys joined with `,`, `k=v` sorted, no separator."""
    values: dict[str, list[str]] = {}
    for key, value in pairs:
        if key != "signature":
            values.setdefault(key, []).append(value)
    message = "".join(sorted(f"{k}={','.join(v)}" for k, v in values.items()))
    return _hex_hmac(secret, message)


def signed_app_proxy_query(shop: str, secret: str, timestamp: float | None = None, **params) -> str:
    """The query string Shopify sends to the proxy for a guest on /apps/pairwell (CLI, benchmark, tests)."""
    query = {"shop": shop, "logged_in_customer_id": "", "path_prefix": "/apps/pairwell",
             "timestamp": str(int(timestamp or time.time())), **{k: str(v) for k, v in params.items()}}
    query["signature"] = app_proxy_signature(query.items(), secret)
    return urlencode(query)


def verify_app_proxy_query(pairs: list[tuple[str, str]], secret: str, now: float | None = None) -> bool:
    given = dict(pairs).get("signature", "")
    if not given or not same(app_proxy_signature(pairs, secret), given):
        return False
    try:
        stamp = whole_number(dict(pairs).get("timestamp", ""), "timestamp", 0, MAX_TIMESTAMP)
    except BadInput:
        return False
    return abs((now if now is not None else time.time()) - stamp) <= PROXY_MAX_SKEW_SECONDS


def webhook_hmac(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def verify_webhook(body: bytes, header_value: str | None, secret: str) -> bool:
    return bool(header_value) and same(webhook_hmac(body, secret), header_value)
