"""A shop's order history as the recommenders read it: the active catalog, each order's distinct products
oldest first, and the time split that keeps the newest orders out of training (the deploy gate scores them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from .models import Order, OrderLine, Product, db

EVAL_FRACTION = 0.12


@dataclass(frozen=True)
class Item:
    id: int
    title: str
    product_type: str
    description: str


def load_catalog(shop_id: int) -> dict[int, Item]:
    rows = db.session.scalars(select(Product).where(Product.shop_id == shop_id, Product.status == "ACTIVE"))
    return {p.id: Item(p.id, p.title, p.product_type, p.description) for p in rows}


def load_baskets(shop_id: int, catalog: dict[int, Item]) -> list[tuple[datetime, list[int]]]:
    """Each order's distinct catalog products, oldest first (lines naming vanished products are dropped)."""
    rows = db.session.execute(
        select(Order.id, Order.created_at, OrderLine.product_id)
        .join(OrderLine, (OrderLine.shop_id == Order.shop_id) & (OrderLine.order_id == Order.id))
        .where(Order.shop_id == shop_id)
        .order_by(Order.created_at, Order.id, OrderLine.id))
    baskets: dict[int, tuple[datetime, list[int]]] = {}
    for order_id, created_at, product_id in rows:
        created, products = baskets.setdefault(order_id, (created_at, []))
        if product_id in catalog and product_id not in products:
            products.append(product_id)
    return [basket for basket in baskets.values() if basket[1]]


def split_by_time(baskets: list, held_out: float = EVAL_FRACTION) -> tuple[list, list]:
    """The oldest (1 - held_out) of time-ordered baskets, and the rest."""
    cut = int(len(baskets) * (1 - held_out))
    return baskets[:cut], baskets[cut:]
