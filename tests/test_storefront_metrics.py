"""The block's events through the signed App Proxy, and the merchant's CTR, add-to-cart rate and AOV."""

from datetime import timedelta

from sqlalchemy import func, select

from core.shopify.signatures import signed_app_proxy_query
from core.storage.models import Order, OrderLine, Product, StorefrontEvent, Variant, db, utcnow
from shopify_app import analytics

from .conftest import API_SECRET


def events_url(shop: str, secret: str = API_SECRET) -> str:
    return "/proxy/events?" + signed_app_proxy_query(shop, secret)


def stored() -> int:
    return db.session.scalar(select(func.count()).select_from(StorefrontEvent))


def test_events_are_signed_validated_and_stored_all_or_nothing(client, installed_shop):
    good = {"events": [{"kind": "impression", "viewed_product_id": "11", "shown": 4, "source": "model"},
                       {"kind": "click", "viewed_product_id": "11", "product_id": "12", "source": "model"}]}
    assert client.post(events_url(installed_shop.domain, "forged"), json=good).status_code == 401
    bad = {"events": [good["events"][0], {"kind": "click", "viewed_product_id": "11"}]}
    response = client.post(events_url(installed_shop.domain), json=bad)
    assert response.status_code == 400 and "needs the recommended product_id" in response.json["message"]
    for body in ({"events": []}, {"events": [{"kind": "purchase", "viewed_product_id": 1}]}, ["x"],
                 {"events": [{"kind": "impression", "viewed_product_id": str(2**64)}]}):
        assert client.post(events_url(installed_shop.domain), json=body).status_code == 400
    assert client.post(events_url(installed_shop.domain), data="{not json").status_code == 400
    assert stored() == 0
    response = client.post(events_url(installed_shop.domain), json=good)
    assert response.status_code == 202 and response.json == {"recorded": 2}
    assert analytics.writer().flush() and stored() == 2  # written by the background writer


def test_metrics_give_ctr_add_to_cart_rate_and_aov_by_source(client, installed_shop, shopify):
    product_a, product_b = db.session.scalars(select(Product).limit(2)).all()
    price = {p.id: db.session.scalars(select(Variant).where(Variant.product_id == p.id)).first()
             for p in (product_a, product_b)}
    viewed, recommended = {"viewed_product_id": product_a.id}, {"product_id": product_b.id}
    events = [{"kind": "impression", **viewed, "shown": 4, "source": "model"}] * 4 + \
             [{"kind": "impression", **viewed, "shown": 4, "source": "fallback"}] * 4 + \
             [{"kind": "click", **viewed, **recommended, "source": "model"}] * 2 + \
             [{"kind": "add_to_cart", **viewed, **recommended, "source": "model"}]
    assert client.post(events_url(installed_shop.domain), json={"events": events}).status_code == 202
    now = utcnow()
    # One order with the added product (two of it), one without: AOV with and without the block.
    for order_id, variant, quantity in ((9001, price[product_b.id], 2), (9002, price[product_a.id], 1)):
        db.session.add(Order(shop_id=installed_shop.id, id=order_id, created_at=now + timedelta(minutes=5),
                             updated_at=now))
        db.session.add(OrderLine(shop_id=installed_shop.id, id=order_id, order_id=order_id,
                                 product_id=variant.product_id, variant_id=variant.id, quantity=quantity))
    db.session.commit()

    token = {"Authorization": f"Bearer {shopify.session_token()}"}
    assert client.get("/api/storefront-metrics", headers=token, query_string={"days": "0"}).status_code == 400
    metrics = client.get("/api/storefront-metrics", headers=token, query_string={"days": "1"}).json
    assert metrics["impressions"] == 8 and metrics["clicks"] == 2 and metrics["add_to_carts"] == 1
    assert metrics["ctr"] == 0.25 and metrics["add_to_cart_rate"] == 0.125
    assert metrics["by_source"]["model"]["ctr"] == 0.5 and metrics["by_source"]["fallback"]["ctr"] == 0
    assert metrics["orders_with_recommendations"] == 1
    assert metrics["aov_with_recommendations"] == str(round(price[product_b.id].price * 2, 2))
    assert metrics["aov_without"] is not None
