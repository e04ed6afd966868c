"""Talking to Shopify: token exchange and refresh (ShopifyAPI lacks both) and the Admin GraphQL client.

Every call goes to `https://{shop}` unless `SHOPIFY_ADMIN_ORIGIN` points elsewhere (the loopback sample
store); then the request keeps the shop in its Host header, exactly as Shopify routes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import requests

import shopify
from core.config import API_VERSION

log = logging.getLogger(__name__)

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
OFFLINE_TOKEN_TYPE = "urn:shopify:params:oauth:token-type:offline-access-token"


class ShopifyError(Exception):
    """Shopify said no, or kept failing after retries."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


def shop_url(shop: str, path: str, origin: str | None) -> tuple[str, dict[str, str]]:
    """The URL and extra headers that reach `path` on `shop`."""
    if origin:
        return origin.rstrip("/") + path, {"Host": shop}
    return f"https://{shop}{path}", {}


@dataclass(frozen=True)
class TokenGrant:
    access_token: str
    scope: str
    expires_at: datetime | None
    refresh_token: str | None
    refresh_token_expires_at: datetime | None

    @classmethod
    def from_response(cls, body: dict, now: datetime) -> TokenGrant:
        def after(seconds):
            return now + timedelta(seconds=int(seconds)) if seconds else None

        return cls(
            access_token=body["access_token"],
            scope=body.get("scope", ""),
            expires_at=after(body.get("expires_in")),
            refresh_token=body.get("refresh_token"),
            refresh_token_expires_at=after(body.get("refresh_token_expires_in")),
        )


def _request_token(shop: str, form: dict, *, api_key: str, secret: str, origin: str | None) -> TokenGrant:
    url, headers = shop_url(shop, "/admin/oauth/access_token", origin)
    now = datetime.now(timezone.utc)
    data = {"client_id": api_key, "client_secret": secret, **form}
    try:
        response = requests.post(url, data=data, headers={**headers, "Accept": "application/json"}, timeout=15)
    except requests.RequestException as exc:
        raise ShopifyError(f"could not reach {shop}: {exc}") from exc
    if response.status_code != 200:
        try:
            body = response.json()
        except ValueError:
            body = {}
        code = body.get("error") if isinstance(body, dict) else None
        raise ShopifyError(f"token request refused ({response.status_code} {code or response.text[:200]})",
                           status=response.status_code, code=code)
    return TokenGrant.from_response(response.json(), now)


def exchange_session_token(shop: str, id_token: str, **app) -> TokenGrant:
    """Trade an App Bridge session token for an expiring offline access token."""
    return _request_token(shop, {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token": id_token,
        "subject_token_type": ID_TOKEN_TYPE,
        "requested_token_type": OFFLINE_TOKEN_TYPE,
        "expiring": "1",
    }, **app)


def refresh_access_token(shop: str, refresh_token: str, **app) -> TokenGrant:
    return _request_token(shop, {"grant_type": "refresh_token", "refresh_token": refresh_token}, **app)


def exchange_authorization_code(shop: str, code: str, **app) -> TokenGrant:
    """The legacy redirect flow's last step, also asking for an expiring token."""
    return _request_token(shop, {"code": code, "expiring": "1"}, **app)


class AdminClient:
    """Admin GraphQL over a ShopifyAPI session, paced by Shopify's cost-based leaky bucket."""

    def __init__(self, session: shopify.Session, *, origin: str | None = None, max_attempts: int = 8,
                 sleep: Callable[[float], None] = time.sleep, http: requests.Session | None = None):
        self.session = session
        self.origin = origin
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.http = http or requests.Session()
        self.throttle_status: dict | None = None
        self.waited_seconds = 0.0

    @classmethod
    def for_shop(cls, shop: str, token: str, **kwargs) -> AdminClient:
        return cls(shopify.Session(shop, API_VERSION, token), **kwargs)

    def _wait(self, seconds: float) -> None:
        self.waited_seconds += seconds
        self.sleep(seconds)

    def execute(self, query: str, variables: dict | None = None) -> dict:
        """Run one query and return its `data`, retrying throttles, 429s and 5xx with backoff."""
        path = f"/admin/api/{self.session.api_version.name}/graphql.json"
        url, headers = shop_url(self.session.url, path, self.origin)
        headers |= {"X-Shopify-Access-Token": self.session.token, "Content-Type": "application/json",
                    "Accept": "application/json"}
        for attempt in range(self.max_attempts):
            backoff = min(0.5 * 2**attempt, 30.0)
            try:
                response = self.http.post(url, json={"query": query, "variables": variables or {}},
                                          headers=headers, timeout=30)
            except requests.RequestException as exc:
                log.warning("Admin API unreachable (%s), retrying in %.1fs", exc, backoff)
                self._wait(backoff)
                continue
            if response.status_code == 429:
                self._wait(float(response.headers.get("Retry-After") or backoff))
                continue
            if response.status_code >= 500:
                self._wait(backoff)
                continue
            if response.status_code != 200:
                raise ShopifyError(f"Admin API answered {response.status_code}: {response.text[:300]}",
                                   status=response.status_code)
            body = response.json()
            cost = (body.get("extensions") or {}).get("cost") or {}
            self.throttle_status = cost.get("throttleStatus") or self.throttle_status
            errors = body.get("errors") or []
            if any((e.get("extensions") or {}).get("code") == "THROTTLED" for e in errors):
                self._wait(self._throttle_wait(cost))
                continue
            if errors:
                raise ShopifyError("; ".join(e.get("message", str(e)) for e in errors), status=200)
            return body["data"]
        raise ShopifyError(f"Admin API still failing after {self.max_attempts} attempts")

    @staticmethod
    def _throttle_wait(cost: dict) -> float:
        """Seconds until the bucket holds the requested cost again."""
        status = cost.get("throttleStatus") or {}
        rate = float(status.get("restoreRate") or 50)
        missing = float(cost.get("requestedQueryCost") or rate) - float(status.get("currentlyAvailable") or 0)
        return max(missing / rate, 0.1)


def stream_lines(url: str, *, chunk_size: int = 1 << 16) -> Iterator[bytes]:
    """The lines of a bulk-operation result, streamed: the file can be far larger than memory."""
    with requests.get(url, stream=True, timeout=60) as response:
        response.raise_for_status()
        for line in response.iter_lines(chunk_size=chunk_size):
            if line:
                yield line
