"""Install and auth against the sample Shopify: token exchange, refresh, reinstall, the legacy redirect."""

import base64
import json
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlencode, urlparse

import jwt
import pytest

from core.shopify import shops
from core.shopify.signatures import oauth_hmac
from shopify_app.auth import SESSION_TOKEN_CLAIMS, SESSION_TOKEN_LEEWAY_SECONDS

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
    from core.shopify.sync import BULK_OPERATION_QUERY
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


# --- Session tokens: every claim Shopify documents, present and right (docs/security.md) -----------------------

OTHER_SHOP = "other-shop.myshopify.com"


def _unsigned(header: object, payload: object, signature: bytes = b"sig") -> str:
    """A token with any header and payload, for shapes PyJWT will not encode."""
    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return ".".join(part(json.dumps(p).encode()) if not isinstance(p, bytes) else part(p)
                    for p in (header, payload, signature))


def _now() -> int:
    return int(time.time())


# Each maker takes the sample Shopify and returns a token the app must refuse. Leeway is 10 s at most, so
# "past" and "future" below are 60 s away: clearly outside it, however slow the machine.
REFUSED = {
    **{f"missing-{name}": (lambda s, name=name: s.session_token(drop=(name,))) for name in SESSION_TOKEN_CLAIMS},
    **{f"null-{name}": (lambda s, name=name: s.session_token(claims={name: None})) for name in SESSION_TOKEN_CLAIMS},
    **{f"empty-{name}": (lambda s, name=name: s.session_token(claims={name: ""}))
       for name in ("iss", "dest", "aud", "sub", "jti", "sid")},
    "exp-past": lambda s: s.session_token(issued_at=_now() - 120),  # exp = iat + 60: a minute ago
    "exp-past-beyond-leeway": lambda s: s.session_token(claims={"exp": _now() - 30}),
    "exp-equals-nbf-long-ago": lambda s: s.session_token(issued_at=_now() - 600, lifetime=0),
    "nbf-future": lambda s: s.session_token(claims={"nbf": _now() + 60}),
    "iat-future": lambda s: s.session_token(claims={"iat": _now() + 60}),
    "all-times-future": lambda s: s.session_token(issued_at=_now() + 60),
    "aud-another-app": lambda s: s.session_token(audience="someone-elses-client-id"),
    "aud-as-list": lambda s: s.session_token(claims={"aud": [API_KEY]}),
    "aud-list-with-another": lambda s: s.session_token(claims={"aud": [API_KEY, "someone-else"]}),
    "aud-differs-in-case": lambda s: s.session_token(audience=API_KEY.upper()),
    "signed-with-another-secret": lambda s: s.session_token(secret="not-the-app-secret-but-long-enough"),
    "alg-HS384": lambda s: s.session_token(algorithm="HS384"),
    "alg-HS512": lambda s: s.session_token(algorithm="HS512"),
    "alg-none": lambda s: s.session_token(algorithm="none"),
    "alg-none-with-signature": lambda s: _unsigned({"alg": "none", "typ": "JWT"}, jwt_payload(s)),
    "alg-missing": lambda s: _unsigned({"typ": "JWT"}, jwt_payload(s)),
    "iss-another-shop": lambda s: s.session_token(claims={"iss": f"https://{OTHER_SHOP}/admin"}),
    "dest-another-shop": lambda s: s.session_token(claims={"dest": f"https://{OTHER_SHOP}"}),
    "iss-without-admin": lambda s: s.session_token(claims={"iss": f"https://{s.shop}"}),
    "iss-admin-slash": lambda s: s.session_token(claims={"iss": f"https://{s.shop}/admin/"}),
    "iss-admin-suffix": lambda s: s.session_token(claims={"iss": f"https://{s.shop}/administrator"}),
    "iss-admin-subpath": lambda s: s.session_token(claims={"iss": f"https://{s.shop}/admin/apps"}),
    "iss-http": lambda s: s.session_token(claims={"iss": f"http://{s.shop}/admin"}),
    "iss-no-scheme": lambda s: s.session_token(claims={"iss": f"{s.shop}/admin"}),
    "iss-host-case": lambda s: s.session_token(claims={"iss": f"https://{s.shop.upper()}/admin"}),
    "dest-not-myshopify": lambda s: s.session_token(shop="evil.example.com"),
    "dest-lookalike": lambda s: s.session_token(shop="outdoor-test.myshopify.com.evil.example"),
    "dest-http": lambda s: s.session_token(claims={"dest": f"http://{s.shop}", "iss": f"http://{s.shop}/admin"}),
    "dest-no-scheme": lambda s: s.session_token(claims={"dest": s.shop, "iss": f"{s.shop}/admin"}),
    "dest-trailing-slash": lambda s: s.session_token(claims={"dest": f"https://{s.shop}/"}),
    "dest-with-port": lambda s: s.session_token(claims={"dest": f"https://{s.shop}:443",
                                                        "iss": f"https://{s.shop}:443/admin"}),
    "dest-with-userinfo": lambda s: s.session_token(claims={"dest": f"https://x@{s.shop}",
                                                            "iss": f"https://x@{s.shop}/admin"}),
    "dest-admin-host": lambda s: s.session_token(shop="admin.shopify.com"),
    "dest-int": lambda s: s.session_token(claims={"dest": 12345}),
    "dest-list": lambda s: s.session_token(claims={"dest": [f"https://{s.shop}"]}),
    "dest-object": lambda s: s.session_token(claims={"dest": {"host": s.shop}}),
    "iss-int": lambda s: s.session_token(claims={"iss": 7}),
    "iss-list": lambda s: s.session_token(claims={"iss": [f"https://{s.shop}/admin"]}),
    "aud-int": lambda s: s.session_token(claims={"aud": 123}),
    "sub-int": lambda s: s.session_token(claims={"sub": 42}),
    "jti-int": lambda s: s.session_token(claims={"jti": 1}),
    "sid-int": lambda s: s.session_token(claims={"sid": 1}),
    "sid-object": lambda s: s.session_token(claims={"sid": {"id": "x"}}),
    "exp-string": lambda s: s.session_token(claims={"exp": str(_now() + 60)}),
    "exp-float": lambda s: s.session_token(claims={"exp": _now() + 60.5}),
    "exp-bool": lambda s: s.session_token(claims={"exp": True}),
    "exp-list": lambda s: s.session_token(claims={"exp": [_now() + 60]}),
    "nbf-string": lambda s: s.session_token(claims={"nbf": str(_now())}),
    "nbf-object": lambda s: s.session_token(claims={"nbf": {}}),
    "iat-string": lambda s: s.session_token(claims={"iat": "yesterday"}),
    "iat-float": lambda s: s.session_token(claims={"iat": _now() + 0.25}),
    "exp-infinity": lambda s: s.session_token(claims={"exp": float("inf")}),  # JSON `Infinity`
    "exp-nan": lambda s: s.session_token(claims={"exp": float("nan")}),
    "nbf-minus-infinity": lambda s: s.session_token(claims={"nbf": float("-inf")}),
    "not-a-jwt": lambda s: "not.a.jwt",
    "garbage": lambda s: "garbage",
    "three-empty-parts": lambda s: "..",
    "bad-base64": lambda s: "%%%.%%%.%%%",
    "non-ascii": lambda s: "\u00e9\u00e9.\u00e9\u00e9.\u00e9\u00e9",
    "header-a-list": lambda s: _unsigned(["HS256"], jwt_payload(s)),
    "payload-a-list": lambda s: _signed_raw(s, [1, 2, 3]),
    "payload-a-string": lambda s: _signed_raw(s, "claims"),
    "payload-not-json": lambda s: _signed_raw(s, b"\xff\xfe not json"),
    "truncated-signature": lambda s: s.session_token()[:-5],
    "four-parts": lambda s: s.session_token() + ".extra",
}


def jwt_payload(shopify) -> dict:
    now = _now()
    return {"iss": f"https://{shopify.shop}/admin", "dest": f"https://{shopify.shop}", "aud": API_KEY, "sub": "42",
            "exp": now + 60, "nbf": now, "iat": now, "jti": "f8912129-1af6-4cad-9ca3-76b0f7621087", "sid": "ab"}


def _signed_raw(shopify, payload: object) -> str:
    """An HS256 token signed with the app secret whose payload is not a JSON object (a list, a string) or not
    JSON at all: shapes no claims dict can give."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return jwt.api_jws.encode(body, shopify.api_secret, algorithm="HS256")


def _assert_refused(response, shopify) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.json["message"].startswith("Invalid session token"), response.json
    assert EXCHANGE not in shopify.requests  # refused by the app itself, never sent on to Shopify
    assert shops.get_shop(shopify.shop) is None


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # HS384/HS512 with the app secret
@pytest.mark.parametrize("make", REFUSED.values(), ids=REFUSED.keys())
def test_admin_api_refuses_a_bad_session_token(client, shopify, make):
    response = client.get("/api/shop", headers={"Authorization": f"Bearer {make(shopify)}"})
    _assert_refused(response, shopify)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("make", REFUSED.values(), ids=REFUSED.keys())
def test_embedded_entry_refuses_a_bad_session_token(client, shopify, make):
    response = client.get("/", query_string={"shop": shopify.shop, "id_token": make(shopify)})
    _assert_refused(response, shopify)


@pytest.mark.parametrize("make", [REFUSED["missing-exp"], REFUSED["alg-none"], REFUSED["dest-int"]],
                         ids=["missing-exp", "alg-none", "dest-int"])
def test_admin_pages_refuse_a_bad_session_token(client, shopify, make):
    response = client.get("/models", query_string={"shop": shopify.shop, "id_token": make(shopify)})
    _assert_refused(response, shopify)


def test_the_test_tokens_are_well_formed_apart_from_their_one_fault(shopify):
    """The makers above differ from a good token only where their name says (a guard on the tests)."""
    good = jwt.decode(shopify.session_token(), API_SECRET, algorithms=["HS256"], audience=API_KEY)
    assert sorted(good) == sorted(SESSION_TOKEN_CLAIMS)
    assert good["iss"] == f"https://{shopify.shop}/admin" and good["dest"] == f"https://{shopify.shop}"
    assert good["exp"] - good["iat"] == 60 and good["nbf"] == good["iat"]
    for name in SESSION_TOKEN_CLAIMS:
        assert name not in jwt.decode(shopify.session_token(drop=(name,)), options={"verify_signature": False})
    payload = jwt_payload(shopify)
    assert jwt.decode(_signed_raw(shopify, payload), API_SECRET, algorithms=["HS256"], audience=API_KEY) == payload
    for name, value in (("iss", 7), ("dest", None), ("sid", {"id": "x"})):  # PyJWT would not encode these
        token = shopify.session_token(claims={name: value})
        assert jwt.decode(token, options={"verify_signature": False})[name] == value
    infinite = REFUSED["exp-infinity"](shopify).split(".")[1]
    assert b'"exp":Infinity' in base64.urlsafe_b64decode(infinite + "=" * (-len(infinite) % 4))


ACCEPTED = {
    "as-minted": lambda s: s.session_token(),
    "exp-just-past-within-leeway": lambda s: s.session_token(claims={"exp": _now() - 3}),
    "nbf-just-ahead-within-leeway": lambda s: s.session_token(claims={"nbf": _now() + 3}),
    "iat-just-ahead-within-leeway": lambda s: s.session_token(claims={"iat": _now() + 3, "nbf": _now() + 3}),
    "extra-documented-sig-claim": lambda s: s.session_token(claims={"sig": "f07cf3740270c17fb61c700b2f0f2e7f"}),
}


@pytest.mark.parametrize("make", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_valid_session_tokens_still_work_on_the_admin_api(client, installed_shop, shopify, make):
    response = client.get("/api/shop", headers={"Authorization": f"Bearer {make(shopify)}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["shop"] == shopify.shop


def test_valid_session_token_still_installs_through_the_embedded_entry(client, shopify):
    response = client.get("/", query_string={"shop": shopify.shop, "id_token": shopify.session_token()})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert shops.get_shop(shopify.shop).is_installed


def test_leeway_is_small():
    assert 0 < SESSION_TOKEN_LEEWAY_SECONDS <= 10
