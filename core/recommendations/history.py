"""A shop's order history as the recommenders read it: the active catalog, each order's distinct products
and customer, oldest first, and the time split that keeps the newest orders out of training (the deploy gate
scores them)."""

from __future__ import annotations

from collections.abc import Container, Hashable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from core.storage.models import Order, OrderLine, Product, db

EVAL_FRACTION = 0.12


@dataclass(frozen=True)
class Item:
    id: int
    title: str
    product_type: str
    description: str


@dataclass
class Basket:
    """An order as the recommenders read it: its distinct products in line order, and who bought it (None for a
    guest)."""
    order_id: str
    created_at: datetime
    products: list = field(default_factory=list)
    customer: Hashable | None = None


def load_catalog(shop_id: int) -> dict[int, Item]:
    """The products shoppers can see (`Product.on_storefront`: active and published to the Online Store): what
    the recommenders learn from and may offer. An order's lines naming others are dropped (`load_baskets`), so
    a hidden product is never a training target, a gate case or a candidate."""
    rows = db.session.scalars(select(Product).where(Product.shop_id == shop_id, Product.on_storefront))
    return {p.id: Item(p.id, p.title, p.product_type, p.description) for p in rows}


def load_baskets(shop_id: int, catalog: Container[int] | None, customer: str | None = None) -> list[Basket]:
    """Each order's distinct catalog products, oldest first (lines naming products not in `catalog` are dropped;
    None keeps every product); only `customer`'s orders when given."""
    query = (select(Order.id, Order.created_at, Order.customer_ref, OrderLine.product_id)
             .join(OrderLine, (OrderLine.shop_id == Order.shop_id) & (OrderLine.order_id == Order.id))
             .where(Order.shop_id == shop_id)
             .order_by(Order.created_at, Order.id, OrderLine.id))
    if customer is not None:
        query = query.where(Order.customer_ref == customer)
    baskets: dict[int, Basket] = {}
    for order_id, created_at, customer_ref, product_id in db.session.execute(query):
        basket = baskets.setdefault(order_id, Basket(str(order_id), created_at, [], customer_ref))
        if (catalog is None or product_id in catalog) and product_id not in basket.products:
            basket.products.append(product_id)
    return [basket for basket in baskets.values() if basket.products]


def split_by_time(baskets: list, held_out: float = EVAL_FRACTION) -> tuple[list, list]:
    """The oldest (1 - held_out) of time-ordered baskets, and the rest."""
    cut = int(len(baskets) * (1 - held_out))
    return baskets[:cut], baskets[cut:]
