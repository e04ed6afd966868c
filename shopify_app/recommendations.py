""""Pairs well with": candidates from co-purchase and semantic neighbours (the hybrid retrieval the evaluation
measures), the model picks and explains among them under a grammar, and the answer is matched back to real,
active, in-stock catalog products. Whatever the model does not fill comes from the hybrid ranking, so the
storefront always gets real products."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from worker.datasets import (
    CANDIDATES,
    RECOMMEND_SYSTEM,
    Item,
    load_baskets,
    parse_answer,
    reason_for,
    recommendation_prompt,
)
from worker.embeddings import SemanticIndex, catalog_index
from worker.recommenders import CoPurchase, Hybrid, TitleMatcher
from worker.runtime import title_grammar

from . import cache
from .model_host import ModelUnavailable, host_for, json_schema_for
from .models import ModelVersion, Product, Shop, db

log = logging.getLogger(__name__)
INDEX_TTL_SECONDS = 600
PRECOMPUTE_BUDGET_SECONDS = 20.0  # nobody waits on a precompute: let the model finish
_indexes: dict[int, tuple[float, Hybrid]] = {}


@dataclass
class Pick:
    product: Product
    reason: str


@dataclass
class Shelf:
    """What one shop can recommend right now: active products, the sellable ones, and the retrieval index.
    Loaded once a request, or once for a whole precompute."""
    catalog: dict[int, Item]
    sellable: dict[int, Product]
    retrieval: Hybrid


def load_shelf(shop: Shop) -> Shelf:
    products = db.session.scalars(
        select(Product).where(Product.shop_id == shop.id).options(selectinload(Product.variants))).all()
    catalog = {p.id: Item(p.id, p.title, p.product_type, p.description) for p in products if p.status == "ACTIVE"}
    sellable = {p.id: p for p in products
                if p.status == "ACTIVE" and any(v.available_for_sale and v.inventory_quantity > 0 for v in p.variants)}
    return Shelf(catalog, sellable, retrieval_index(shop.id, catalog))


def cache_key(shop_id: int, product_id: int, cart: list[int], limit: int) -> str:
    generation = cache.store().get(f"generation:{shop_id}") or "0"
    return f"rec:{shop_id}:{generation}:{product_id}:{','.join(map(str, sorted(set(cart))))}:{limit}"


def invalidate(shop_id: int) -> None:
    """Forget every cached reply of the shop (a new model, a changed catalog): new keys, old ones expire."""
    cache.store().set(f"generation:{shop_id}", str(time.time_ns()), 30 * 86400)
    _indexes.pop(shop_id, None)


def retrieval_index(shop_id: int, catalog: dict[int, Item]) -> Hybrid:
    """Co-purchase over the shop's orders plus embeddings of its products, rebuilt every few minutes (the
    embeddings of unchanged product texts are remembered, so a rebuild embeds only what changed)."""
    built = _indexes.get(shop_id)
    if built is None or time.monotonic() - built[0] > INDEX_TTL_SECONDS:
        copurchase = CoPurchase(b for _, b in load_baskets(shop_id, catalog))
        built = (time.monotonic(), Hybrid(copurchase, catalog_index(catalog)))
        _indexes[shop_id] = built
    return built[1]


def ranked_candidates(shelf: Shelf, viewing: int, cart: list[int]) -> list[int]:
    """Sellable products by the hybrid score with the viewed item and the cart, then the viewed item's
    department first, then by id: always enough to fill a block."""
    retrieval = shelf.retrieval
    scores = retrieval.scores([viewing, *cart])
    score = {p: float(scores[retrieval.position[p]]) if p in retrieval.position else 0.0
             for p in shelf.sellable if p not in {viewing, *cart}}
    department = shelf.sellable[viewing].product_type if viewing in shelf.sellable else None
    return sorted(score, key=lambda p: (-score[p], shelf.sellable[p].product_type != department, p))


def model_picks(shop: Shop, model: ModelVersion, viewing: Product, cart: list[Product], candidates: list[Product],
                limit: int, budget: float | None = None, index: SemanticIndex | None = None) -> tuple[list[Pick], int]:
    """The model's choice among the candidates; returns the picks and how many names matched nothing."""
    messages = [{"role": "system", "content": RECOMMEND_SYSTEM.format(shop=shop.domain)},
                {"role": "user", "content": recommendation_prompt(viewing.title, [c.title for c in cart],
                                                                  [c.title for c in candidates])}]
    titles = [c.title for c in candidates]
    host = host_for(current_app)
    if host.name == "ollama":
        name = (model.metrics or {}).get("deployment", {}).get("name")
        if not name:
            raise ModelUnavailable(f"model v{model.version} is not deployed on Ollama")
        text = host.chat(name, messages, schema=json_schema_for(titles, limit))
    else:
        text = host.chat(model.gguf_path, messages, grammar=title_grammar(titles, limit),
                         timeout=budget or current_app.config["MODEL_BUDGET_SECONDS"])
    by_id = {c.id: c for c in candidates}
    match = TitleMatcher({c.id: c.title for c in candidates}, index)
    picks, misses = [], 0
    for record in parse_answer(text):
        product = by_id.get(match(record["title"]))
        if product is None:
            misses += 1
        elif all(p.product.id != product.id for p in picks):
            picks.append(Pick(product, str(record.get("reason") or "").strip()))
    return picks, misses


def live_model(shop: Shop) -> ModelVersion | None:
    """The deployed version; a verified one waiting (or refused by the gate) serves nobody."""
    return db.session.scalars(select(ModelVersion).where(
        ModelVersion.shop_id == shop.id, ModelVersion.status == "deployed")).first()


def recommend(shop: Shop, viewing: Product, cart: list[Product], limit: int, budget: float | None = None,
              shelf: Shelf | None = None) -> tuple[list[Pick], str]:
    shelf = shelf or load_shelf(shop)
    ranking = ranked_candidates(shelf, viewing.id, [c.id for c in cart])
    picks, source = [], "fallback"
    model = live_model(shop)
    if model is not None:
        try:
            picks, misses = model_picks(shop, model, viewing, cart, [shelf.sellable[p] for p in ranking[:CANDIDATES]],
                                        min(limit, 4), budget, shelf.retrieval.index)
            source = "model"
            # The raw miss rate, for evaluation: names the model gave that matched no candidate.
            cache.store().incr(f"model-names:{shop.id}", 30 * 86400)
            if misses:
                cache.store().incr(f"model-misses:{shop.id}", 30 * 86400)
                log.info("model named %d products outside the candidates", misses)
        except ModelUnavailable as exc:
            log.warning("serving fallback for %s: %s", shop.domain, exc)
    chosen = {p.product.id for p in picks}
    for product_id in ranking:
        if len(picks) >= limit:
            break
        if product_id not in chosen:
            picks.append(Pick(shelf.sellable[product_id], reason_for(shelf.catalog[product_id])))
    return picks[:limit], source


def as_json(pick: Pick) -> dict:
    product = pick.product
    return {
        "id": product.id, "handle": product.handle, "title": product.title,
        "url": product.online_store_url or f"/products/{product.handle}", "image": product.image_url,
        "price": str(min(v.price for v in product.variants)) if product.variants else None,
        "reason": pick.reason,
    }


def cached(key: str) -> dict | None:
    value = cache.store().get(key)
    return {"products": json.loads(value), "source": "cache"} if value is not None else None


def serve(shop: Shop, viewing: Product, cart: list[Product], limit: int, budget: float | None = None,
          shelf: Shelf | None = None) -> dict:
    """The proxy's reply, from the cache when it can be. `budget`: seconds the model may take (default: the
    storefront's MODEL_BUDGET_SECONDS)."""
    key = cache_key(shop.id, viewing.id, [c.id for c in cart], limit)
    hit = cached(key)
    if hit is not None:
        return hit
    picks, source = recommend(shop, viewing, cart, limit, budget, shelf)
    products = [as_json(pick) for pick in picks]
    # Model answers keep until the next deploy or catalog change; a fallback only briefly (the model may be back).
    cache.store().set(key, json.dumps(products), 86400 if source == "model" else 60)
    return {"products": products, "source": source}


def precompute(shop: Shop, limit: int = 4, budget_seconds: float | None = None) -> dict:
    """Every active product's empty-cart block, best-sellers first, so storefront requests hit the cache.
    With a budget, what is left is computed on its first request instead."""
    started = time.monotonic()
    shelf = load_shelf(shop)
    products = {p.id: p for p in db.session.scalars(
        select(Product).where(Product.shop_id == shop.id, Product.status == "ACTIVE"))}
    popularity = shelf.retrieval.copurchase.items
    counts: dict[str, int] = {}
    for product_id in sorted(products, key=lambda p: (-popularity[p], p)):
        if budget_seconds is not None and time.monotonic() - started > budget_seconds:
            counts["deferred"] = counts.get("deferred", 0) + 1
            continue
        source = serve(shop, products[product_id], [], limit, PRECOMPUTE_BUDGET_SECONDS, shelf)["source"]
        counts[source] = counts.get(source, 0) + 1
    return counts
