"""Install and auth against the sample Shopify: token exchange, refresh, reinstall, the legacy redirect."""

import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlencode, urlparse

from core import shops
from core.signatures import oauth_hmac

from .conftest import API_KEY, API_SECRET

EXCHANGE = "token:urn:ietf:params:oauth:grant-type:token-exchange"


def test_embedded_install_exchanges_for_an_expiring_token_stored_encrypted(installed_shop, shopify, store):
    assert EXCHANGE in shopify.requests
    plain = shops.decrypt(installed_shop.access_token_encrypted)
    assert plain in shopify.tokens and plain not in installed_shop.access_token_encrypted
    assert shopify.tokens[plain].expires_at is not None  # expiring=1 was honoured
    remaining = installed_shop.access_token_expires_at - datetime.now(timezone.utc)
    assert timedelta(minutes=55) < remaining <= timedelta(hours=1)
    assert shops.decrypt(installed_shop.refresh_token_encrypted) in shopify.refresh_tokens
    assert installed_shop.is_installed and "read_products" in installed_shop.scopes


def test_bearer_header_is_accepted_on_the_entry(client, shopify):
    response = client.get("/", headers={"Authorization": f"Bearer {shopify.session_token()}"})
    assert response.status_code == 200
    assert shops.get_shop(shopify.shop).is_installed
    page = response.get_data(as_text=True)
    assert shopify.shop in page and "succeeded" in page and f'content="{API_KEY}"' in page


def test_only_the_shop_admin_may_frame_the_app(client, shopify):
    response = client.get(f"/?shop={shopify.shop}&id_token={shopify.session_token()}")
    policy = response.headers["Content-Security-Policy"]
    assert policy == f"frame-ancestors https://{shopify.shop} https://admin.shopify.com;"


def test_second_visit_does_not_exchange_again(client, installed_shop, shopify):
    before = shopify.requests.count(EXCHANGE)
    assert client.get(f"/?shop={shopify.shop}&id_token={shopify.session_token()}").status_code == 200
    assert shopify.requests.count(EXCHANGE) == before


def test_forged_expired_and_foreign_session_tokens_are_401(client, shopify):
    forged = shopify.session_token(secret="not-the-app-secret-but-long-enough")
    expired = shopify.session_token(issued_at=time.time() - 600)
    other_app = shopify.session_token(audience="someone-elses-client-id")
    for token in (forged, expired, other_app, "not.a.jwt"):
        response = client.get(f"/?id_token={token}")
        assert response.status_code == 401, token
        assert "session token" in response.json["message"].lower()
    assert shops.get_shop(shopify.shop) is None


def test_token_for_another_shop_than_the_query_is_401(client, shopify):
    response = client.get(f"/?shop=other.myshopify.com&id_token={shopify.session_token()}")
    assert response.status_code == 401


def test_bad_shop_and_missing_context(client):
    assert client.get("/?shop=evil.example.com").status_code == 400
    assert "Invalid shop domain" in client.get("/?shop=evil.example.com").json["message"]
    assert client.get("/").status_code == 400
    response = client.get("/?shop=good.myshopify.com")
    assert response.status_code == 302 and response.location.startswith("/auth/install?shop=good.myshopify.com")


def test_token_exchange_refused_by_shopify_is_401(client, shopify):
    shopify.api_secret = "shopify-knows-another-secret-entirely"  # Shopify rejects the subject token
    token = shopify.session_token(secret=API_SECRET)
    response = client.get(f"/?id_token={token}")
    assert response.status_code == 401 and "invalid_client" in response.json["message"]


def test_expiring_token_is_refreshed_and_refresh_token_rotated(app, installed_shop, shopify):
    old_access = shops.decrypt(installed_shop.access_token_encrypted)
    old_refresh = shops.decrypt(installed_shop.refresh_token_encrypted)
    shopify.expire_access_tokens()
    installed_shop.access_token_expires_at = datetime.now(timezone.utc) + timedelta(minutes=2)

    new_access = shops.access_token(installed_shop)

    assert new_access != old_access and "token:refresh_token" in shopify.requests
    assert old_refresh not in shopify.refresh_tokens  # rotated
    assert shops.decrypt(installed_shop.refresh_token_encrypted) in shopify.refresh_tokens
    assert installed_shop.access_token_expires_at > datetime.now(timezone.utc) + timedelta(minutes=55)
    client = shops.admin_client(installed_shop)
    assert client.session.token == new_access  # and Shopify accepts it:
    from worker.sync import BULK_OPERATION_QUERY
    assert client.execute(BULK_OPERATION_QUERY, {"id": "gid://shopify/BulkOperation/999"}) == {"bulkOperation": None}


def test_uninstall_then_reinstall_is_a_fresh_install(client, installed_shop, shopify):
    first_install = installed_shop.installed_at
    body, headers = shopify.signed_webhook("app/uninstalled", {"id": 1, "myshopify_domain": shopify.shop})
    assert client.post("/webhooks", data=body, headers=headers).status_code == 200
    shop = shops.get_shop(shopify.shop)
    assert shop.uninstalled_at is not None and shop.access_token_encrypted is None and not shop.is_installed

    assert client.get(f"/?shop={shopify.shop}&id_token={shopify.session_token()}").status_code == 200
    shop = shops.get_shop(shopify.shop)
    assert shop.is_installed and shop.uninstalled_at is None and shop.installed_at > first_install
    assert shopify.requests.count(EXCHANGE) == 2


def test_admin_api_requires_a_session_token(client, installed_shop, shopify, store):
    assert client.get("/api/shop").status_code == 401
    assert client.get("/api/shop", headers={"Authorization": "Bearer forged"}).status_code == 401
    response = client.get("/api/shop", headers={"Authorization": f"Bearer {shopify.session_token()}"})
    assert response.status_code == 200
    assert response.json["counts"]["products"] == len(store.products)


def test_admin_api_refuses_a_shop_that_never_installed(client, shopify):
    token = shopify.session_token(shop="stranger.myshopify.com")
    assert client.get("/api/shop", headers={"Authorization": f"Bearer {token}"}).status_code == 403


# --- Legacy authorization-code redirect ---------------------------------------------------------------

def _callback_query(shop: str, code: str, state: str, secret: str = API_SECRET, **extra) -> str:
    params = {"code": code, "host": "YWRtaW4uc2hvcGlmeS5jb20", "shop": shop, "state": state,
              "timestamp": str(int(time.time())), **extra}
    params["hmac"] = oauth_hmac(params.items(), secret)
    return urlencode(params)


def test_install_redirects_to_the_grant_screen_with_a_state_cookie(client, shopify):
    response = client.get(f"/auth/install?shop={shopify.shop}")
    assert response.status_code == 302
    location = urlparse(response.location)
    assert location.netloc == shopify.shop and location.path == "/admin/oauth/authorize"
    query = parse_qs(location.query)
    assert query["client_id"] == [API_KEY] and query["redirect_uri"] == ["https://pairwell.test/auth/callback"]
    assert "write_app_proxy" in query["scope"][0]
    assert client.get_cookie("session") is not None
    assert client.get("/auth/install?shop=bad_shop.com").status_code == 400


def test_callback_installs_with_valid_hmac_and_state(client, shopify, store):
    location = client.get(f"/auth/install?shop={shopify.shop}").location
    state = parse_qs(urlparse(location).query)["state"][0]
    response = client.get("/auth/callback?" + _callback_query(shopify.shop, shopify.authorization_code(), state))
    assert response.status_code == 302 and response.location == f"https://{shopify.shop}/admin/apps/{API_KEY}"
    assert shops.get_shop(shopify.shop).is_installed


def test_callback_rejects_forgeries(client, shopify):
    location = client.get(f"/auth/install?shop={shopify.shop}").location
    state = parse_qs(urlparse(location).query)["state"][0]
    code = shopify.authorization_code()
    bad_hmac = _callback_query(shopify.shop, code, state, secret="attacker")
    assert client.get("/auth/callback?" + bad_hmac).status_code == 401
    wrong_state = _callback_query(shopify.shop, code, "guessed-state")
    assert client.get("/auth/callback?" + wrong_state).status_code == 401
    assert client.get("/auth/callback?" + _callback_query("evil.example.com", code, state)).status_code == 400
    stale = _callback_query(shopify.shop, code, state, timestamp=str(int(time.time()) - 3 * 86400))
    client.get(f"/auth/install?shop={shopify.shop}")
    assert client.get("/auth/callback?" + stale).status_code == 401
    assert shops.get_shop(shopify.shop) is None


def test_sample_admin_opens_the_app_with_a_fresh_session_token(client, shopify):
    import requests

    shopify.app_url = "https://pairwell.test"
    location = requests.get(f"{shopify.origin}/admin/apps/pairwell", allow_redirects=False).headers["Location"]
    assert location.startswith("https://pairwell.test/?") and "id_token=" in location
    assert client.get(location.removeprefix("https://pairwell.test")).status_code == 200
