"""The merchant's hand on the "pairs well with" block: pins and exclusions that the storefront honours at once,
and 1–3 relevance ratings of what the block shows (the seed's hand-scored relevance), kept per model version."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from sqlalchemy import func, select

from core.inputs import BadInput, shopify_id
from core.storage.models import MerchandisingRule, Product, RecommendationRating, Shop, db, locked_shop

RULE_KINDS = ("pin", "exclude", "exclude_type", "exclude_pair")
MAX_RULES = 2000
MAX_PINS = 10  # no more than a block shows
RATINGS = {1: "unrelated", 2: "plausible", 3: "pairs well"}


@dataclass
class Rules:
    """A shop's rules, read once with its shelf (a change moves the shop's cache generation)."""
    pins: dict[Hashable, list[Hashable]] = field(default_factory=dict)  # viewed → pinned, in the order pinned
    excluded: set[Hashable] = field(default_factory=set)
    excluded_types: set[str] = field(default_factory=set)
    excluded_pairs: set[frozenset] = field(default_factory=set)
    unrelated: set[tuple[Hashable, Hashable]] = field(default_factory=set)  # (viewed, product) rated 1

    def allows(self, viewing: Hashable, product: Hashable, product_type: str) -> bool:
        return (product not in self.excluded and product_type.casefold() not in self.excluded_types
                and frozenset((viewing, product)) not in self.excluded_pairs
                and (viewing, product) not in self.unrelated)


def load_rules(shop_id: int) -> Rules:
    """The rules, and the products the merchant rated unrelated to a block (never shown in it again)."""
    rules = Rules()
    rules.unrelated = {(viewed, product) for viewed, product in db.session.execute(select(
        RecommendationRating.viewed_product_id, RecommendationRating.product_id).where(
        RecommendationRating.shop_id == shop_id, RecommendationRating.rating == 1))}
    for rule in db.session.scalars(select(MerchandisingRule).where(MerchandisingRule.shop_id == shop_id)
                                   .order_by(MerchandisingRule.id)):
        if rule.kind == "pin":
            rules.pins.setdefault(rule.product_id, []).append(rule.other_id)
        elif rule.kind == "exclude":
            rules.excluded.add(rule.product_id)
        elif rule.kind == "exclude_type":
            rules.excluded_types.add(rule.product_type.casefold())
        elif rule.kind == "exclude_pair":
            rules.excluded_pairs.add(frozenset((rule.product_id, rule.other_id)))
    return rules


def rule_json(rule: MerchandisingRule) -> dict:
    return {"id": rule.id, "kind": rule.kind, "product_id": rule.product_id, "other_id": rule.other_id,
            "product_type": rule.product_type, "created_at": rule.created_at.isoformat()}


def list_rules(shop: Shop) -> list[MerchandisingRule]:
    return list(db.session.scalars(select(MerchandisingRule).where(MerchandisingRule.shop_id == shop.id)
                                   .order_by(MerchandisingRule.id)))


def _product(shop: Shop, value: object, name: str) -> int:
    product_id = shopify_id(value, name)
    if db.session.get(Product, (shop.id, product_id)) is None:
        raise BadInput(f"{name}: the store has no product {product_id}.")
    return product_id


def add_rule(shop: Shop, body: object) -> MerchandisingRule:
    """A new rule from `{"kind", "product_id"?, "other_id"?, "product_type"?}`; the same rule twice is kept once."""
    if not isinstance(body, dict) or body.get("kind") not in RULE_KINDS:
        raise BadInput(f"kind must be one of {list(RULE_KINDS)}.")
    kind = body["kind"]
    rule = MerchandisingRule(shop_id=shop.id, kind=kind)
    if kind == "exclude_type":
        product_type = body.get("product_type")
        if not isinstance(product_type, str) or not product_type.strip() or len(product_type) > 255:
            raise BadInput("product_type must be a product type of the store (1-255 characters).")
        rule.product_type = product_type.strip()
    else:
        rule.product_id = _product(shop, body.get("product_id"), "product_id")
        if kind in ("pin", "exclude_pair"):
            rule.other_id = _product(shop, body.get("other_id"), "other_id")
            if rule.other_id == rule.product_id:
                raise BadInput("A product cannot be paired with itself.")
    locked_shop(shop.id)  # the same rule sent twice at once is kept once, and the caps hold
    rules = list_rules(shop)
    existing = [r for r in rules if (r.kind, r.product_id, r.other_id, r.product_type)
                == (rule.kind, rule.product_id, rule.other_id, rule.product_type)]
    if existing:
        return existing[0]
    if len(rules) >= MAX_RULES:
        raise BadInput(f"A store may keep at most {MAX_RULES} rules; remove some first.")
    if kind == "pin" and sum(r.kind == "pin" and r.product_id == rule.product_id for r in rules) >= MAX_PINS:
        raise BadInput(f"At most {MAX_PINS} products can be pinned to one block.")
    db.session.add(rule)
    db.session.commit()
    return rule


def remove_rule(shop: Shop, rule_id: int) -> bool:
    rule = db.session.get(MerchandisingRule, rule_id)
    if rule is None or rule.shop_id != shop.id:
        return False
    db.session.delete(rule)
    db.session.commit()
    return True


def rate(shop: Shop, body: object, model_version: int) -> RecommendationRating:
    """Store (or change) the merchant's rating of one recommendation under the live version."""
    if not isinstance(body, dict):
        raise BadInput('Send {"viewed_product_id", "product_id", "rating": 1-3, "source"}.')
    rating = body.get("rating")
    if rating not in RATINGS or isinstance(rating, bool):
        raise BadInput("rating must be 1 (unrelated), 2 (plausible) or 3 (pairs well).")
    viewed = _product(shop, body.get("viewed_product_id"), "viewed_product_id")
    product = _product(shop, body.get("product_id"), "product_id")
    source = body.get("source") if isinstance(body.get("source"), str) else ""
    locked_shop(shop.id)  # two ratings of one pair at once: one row, the later rating
    row = db.session.scalar(select(RecommendationRating).where(
        RecommendationRating.shop_id == shop.id, RecommendationRating.viewed_product_id == viewed,
        RecommendationRating.product_id == product, RecommendationRating.model_version == model_version))
    if row is None:
        row = RecommendationRating(shop_id=shop.id, viewed_product_id=viewed, product_id=product,
                                   model_version=model_version)
        db.session.add(row)
    row.rating, row.source = rating, source[:16]
    db.session.commit()
    return row


def ratings(shop: Shop, viewed_product_id: int) -> dict[int, int]:
    """The merchant's ratings of a block's products under any version, newest first wins."""
    rows = db.session.execute(select(RecommendationRating.product_id, RecommendationRating.rating).where(
        RecommendationRating.shop_id == shop.id, RecommendationRating.viewed_product_id == viewed_product_id)
        .order_by(RecommendationRating.created_at))
    return dict(rows.all())


def relevance_by_version(shop: Shop) -> dict[int, dict]:
    """Each version's mean rating and count: the relevance score on its model card (0: no model live)."""
    rows = db.session.execute(select(RecommendationRating.model_version, func.avg(RecommendationRating.rating),
                                     func.count()).where(RecommendationRating.shop_id == shop.id)
                              .group_by(RecommendationRating.model_version))
    return {version: {"mean": round(float(mean), 2), "count": count} for version, mean, count in rows}
