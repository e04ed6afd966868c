"""Shopify's published test vectors (platform-notes) and forgeries against each signing scheme."""

from urllib.parse import parse_qsl

import pytest

from core.shopify.signatures import (
    app_proxy_signature,
    is_valid_shop_domain,
    oauth_hmac,
    verify_app_proxy_query,
    verify_oauth_query,
    verify_webhook,
    webhook_hmac,
)

OAUTH_QUERY = "code=0907a61c0c8d55e99db179b68161bc00&shop=some-shop.myshopify.com&timestamp=1337178173"
PROXY_QUERY = ("extra=1&extra=2&logged_in_customer_id=1&path_prefix=/apps/awesome_reviews"
               "&shop=shop-name.myshopify.com&timestamp=1317327555")


def pairs(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True)


def test_oauth_vectors():
    assert oauth_hmac(pairs(OAUTH_QUERY), "hush") == "4712bf92ffc2917d15a2f5a273e39f0116667419aa4b6ac0b3baaf26fa3c4d20"
    with_state = pairs(OAUTH_QUERY + "&state=0.6784241404160823")
    assert oauth_hmac(with_state, "hush") == "700e2dadb827fcc8609e9d5ce208b2e9cdaab9df07390d2cbca10d7c328fc4bf"


def test_oauth_verification_rejects_tampering():
    signed = pairs(OAUTH_QUERY + "&hmac=4712bf92ffc2917d15a2f5a273e39f0116667419aa4b6ac0b3baaf26fa3c4d20")
    assert verify_oauth_query(signed, "hush")
    assert not verify_oauth_query(signed, "other-secret")
    assert not verify_oauth_query([(k, "evil-shop.myshopify.com" if k == "shop" else v) for k, v in signed], "hush")
    assert not verify_oauth_query(pairs(OAUTH_QUERY), "hush")  # no hmac at all


def test_app_proxy_vectors():
    assert app_proxy_signature(pairs(PROXY_QUERY), "hush") == \
        "4c68c8624d737112c91818c11017d24d334b524cb5c2b8ba08daa056f7395ddb"
    guest = PROXY_QUERY.replace("logged_in_customer_id=1", "logged_in_customer_id=")
    assert app_proxy_signature(pairs(guest), "hush") == \
        "e072b6d7e6622d85912a5214b860d3100dc1e73d9bc29f43796ac8c9ff8093cb"


def test_app_proxy_verification_checks_signature_and_clock():
    signed = pairs(PROXY_QUERY + "&signature=4c68c8624d737112c91818c11017d24d334b524cb5c2b8ba08daa056f7395ddb")
    assert verify_app_proxy_query(signed, "hush", now=1317327555 + 30)
    assert not verify_app_proxy_query(signed, "hush", now=1317327555 + 600)  # replayed later
    assert not verify_app_proxy_query(signed, "wrong", now=1317327555)
    tampered = [(k, "2" if k == "logged_in_customer_id" else v) for k, v in signed]
    assert not verify_app_proxy_query(tampered, "hush", now=1317327555)


def test_webhook_vector_and_forgery():
    assert webhook_hmac(b'{"id":1}', "hush") == "VnKUjZsLuN5iZWjn5EntcBVCF9kMN43LglzCE1/GSeY="
    assert verify_webhook(b'{"id":1}', "VnKUjZsLuN5iZWjn5EntcBVCF9kMN43LglzCE1/GSeY=", "hush")
    assert not verify_webhook(b'{"id":2}', "VnKUjZsLuN5iZWjn5EntcBVCF9kMN43LglzCE1/GSeY=", "hush")
    assert not verify_webhook(b'{"id":1}', None, "hush")


@pytest.mark.parametrize("shop, valid", [
    ("some-shop.myshopify.com", True),
    ("Shop1.myshopify.com", True),
    ("-shop.myshopify.com", False),
    ("shop.myshopify.com.evil.com", False),
    ("evil.com/shop.myshopify.com", False),
    ("shop.myshopify.io", False),
    ("", False),
    (None, False),
])
def test_shop_domain(shop, valid):
    assert is_valid_shop_domain(shop) is valid
