""""Pairs well with": the one path from a basket to the products a shopper sees.

The blended retrieval (EASE, co-purchase, semantics) ranks the sellable products; the deployed model
re-orders the top CANDIDATES by the probability of each one's letter (it can only point at a candidate) and the
ranking fills the rest. Reasons come from the merchant's own descriptions and the store's orders. The
storefront, the deploy gate and offline evaluation all call `rerank`, so the gate scores exactly what shoppers
get.
Whatever the model does, the answer holds only real, in-stock catalog products that shoppers can see (active and
published to the Online Store: `Product.on_storefront`)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property

import numpy as np
from cachetools import LRUCache
from flask import current_app, has_request_context
from scipy import sparse
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from core import embeddings
from core.claims import stems
from core.embeddings import SemanticIndex, catalog_index
from core.llm.model_hosts import ModelUnavailable, Ranker, best_first, host_for, letter_mass, model_ref
from core.llm.prompts import CANDIDATES, LABELS, MAX_PICKS, RECOMMEND_SYSTEM, candidate_line, ranking_prompt, reason_for
from core.recommendations import neighbours
from core.recommendations.experiment import HOLDOUT
from core.recommendations.history import Basket, Item, load_baskets
from core.recommendations.merchandising import Rules, load_rules
from core.recommendations.ranking_head import serving_retrieval, slice_of
from core.recommendations.recommenders import Blend, History, Weights, bought_before
from core.storage import cache
from core.storage.models import ModelVersion, Product, RetrievalBuild, Shop, Variant, db, utcnow

log = logging.getLogger(__name__)
INDEX_TTL_SECONDS = 600
CHANGED_INDEX_SECONDS = 30  # a catalog change rebuilds an index at least this old (in the background)
PRECOMPUTE_BUDGET_SECONDS = 20.0  # nobody waits on a precompute: let the model finish
SHELF_TTL_SECONDS = 30
GENERATION_TTL_SECONDS = 2.0  # how late another process's bump of the reply generation may be seen
SHELF_KINDS = ("index", "catalog")  # with the retrieval index (`shelf_for`); the assistant's (`catalog_shelf`)
BUILD_LOCKS = 64  # cold builds of different shops run side by side; of one shop, once
PERIODS_KEPT = 1  # training-period retrievals a process keeps: the datasets build one, the deploy gate reuses it


@dataclass(frozen=True)
class BuiltIndex:
    built_at: float  # time.monotonic()
    retrieval: Blend
    size: int  # bytes, as footprint() counts them
    changed: bool = False  # the catalog changed since: rebuild it in the background

    def due(self) -> bool:
        age = time.monotonic() - self.built_at
        return age > INDEX_TTL_SECONDS or (self.changed and age > CHANGED_INDEX_SECONDS)


class ServingState:
    """What a web process keeps to answer shoppers fast, owned by the app (`app.extensions["pairwell_serving"]`,
    made by the app factory) and bounded: the retrieval indexes, least recently used out first, within
    `index_bytes`; the shelves, within the same bytes again (each kept at most SHELF_TTL_SECONDS); the ranking
    heads of the shops' last builds of their lists, within the same bytes again (`listed_head`); the retrieval
    of the last training period built (`period_retrieval`). Losing any of it costs a rebuild or a read, never a
    wrong answer. Concurrent first requests of one shop wait for one build instead of each building."""

    def __init__(self, index_bytes: int):
        self.indexes: LRUCache[int, BuiltIndex] = LRUCache(maxsize=index_bytes, getsizeof=lambda built: built.size)
        self.shelves: LRUCache[tuple[int, str], tuple[int, float, Shelf, int]] = LRUCache(
            maxsize=index_bytes, getsizeof=lambda kept: kept[3])
        self.periods: LRUCache[tuple[int, str], Blend] = LRUCache(maxsize=PERIODS_KEPT)
        # each shop's ranking head from its last build of the lists: (built_at, head or None)
        self.heads: LRUCache[int, tuple] = LRUCache(maxsize=index_bytes,
                                                    getsizeof=lambda kept: kept[1].size if kept[1] else 64)
        self.rebuilding: set[int] = set()  # shops whose index a background thread is rebuilding
        self.lock = threading.Lock()  # cachetools' caches are not thread-safe
        self._builds = [threading.Lock() for _ in range(BUILD_LOCKS)]

    def index(self, shop_id: int) -> BuiltIndex | None:
        with self.lock:
            return self.indexes.get(shop_id)

    def keep_index(self, shop_id: int, built: BuiltIndex) -> None:
        with self.lock:
            try:
                self.indexes[shop_id] = built
            except ValueError:  # larger than the whole bound: served, not kept
                log.warning("the retrieval index of shop %s (%.0f MiB) is larger than PAIRWELL_INDEX_CACHE_MB",
                            shop_id, built.size / 2**20)

    def shelf(self, shop_id: int, kind: str) -> tuple[int, float, Shelf, int] | None:
        with self.lock:
            return self.shelves.get((shop_id, kind))

    def keep_shelf(self, shop_id: int, kind: str, generation: int, shelf: Shelf) -> None:
        """Kept by its bytes (`footprint`: a shelf with an index counts the index again) within the same bound
        as the indexes; one larger than the whole bound is served, not kept."""
        kept = (generation, time.monotonic(), shelf, footprint(shelf))
        with self.lock:
            try:
                self.shelves[(shop_id, kind)] = kept
            except ValueError:
                pass

    def head(self, shop_id: int) -> tuple | None:
        with self.lock:
            return self.heads.get(shop_id)

    def keep_head(self, shop_id: int, built_at: datetime, head: neighbours.ListedHead | None) -> None:
        with self.lock:
            try:
                self.heads[shop_id] = (built_at, head)
            except ValueError:  # larger than the whole bound: served, not kept
                pass

    def build_lock(self, shop_id: int) -> threading.Lock:
        return self._builds[shop_id % BUILD_LOCKS]

    def catalog_changed(self, shop_id: int) -> None:
        """The shop's shelf goes; its index keeps serving until the background rebuild replaces it."""
        with self.lock:
            for kind in SHELF_KINDS:
                self.shelves.pop((shop_id, kind), None)
            built = self.indexes.get(shop_id)
            if built is not None and not built.changed:
                self.indexes[shop_id] = replace(built, changed=True)

    def forget(self, shop_id: int) -> None:
        with self.lock:
            self.indexes.pop(shop_id, None)
            self.heads.pop(shop_id, None)
            for kind in SHELF_KINDS:
                self.shelves.pop((shop_id, kind), None)
            for key in [key for key in self.periods if key[0] == shop_id]:
                del self.periods[key]


def serving_state() -> ServingState:
    return current_app.extensions["pairwell_serving"]


def period_retrieval(shop_id: int, baskets: list[Basket], catalog: dict[int, Item]) -> Blend:
    """The retrieval of a period's orders (the training period's: the datasets' candidates and the deploy gate's
    ranking), built once a process for the same orders and catalog: learning it takes most of a minute."""
    digest = hashlib.sha256(repr(([(b.order_id, b.created_at, b.products, b.customer) for b in baskets],
                                  sorted(catalog.items()))).encode()).hexdigest()
    state = serving_state()
    with state.build_lock(shop_id):
        with state.lock:
            kept = state.periods.get((shop_id, digest))
        if kept is None:
            kept = serving_retrieval(baskets, catalog)
            with state.lock:
                state.periods[(shop_id, digest)] = kept
    return kept


def footprint(root: object) -> int:
    """Roughly the bytes an index holds: its arrays and sparse matrices and the containers of Pairwell's own
    objects, each counted once (a catalog of n products holds O(n²) in its co-purchase and EASE matrices)."""
    seen, total, pending = set(), 0, [root]
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, np.ndarray):
            total += item.nbytes
        elif sparse.issparse(item):
            pending += [getattr(item, part) for part in ("data", "indices", "indptr", "row", "col")
                        if hasattr(item, part)]
        elif isinstance(item, dict):
            total += sys.getsizeof(item)
            pending += item.values()
        elif isinstance(item, list | tuple | set | frozenset):
            total += sys.getsizeof(item)
            pending += item
        elif type(item).__module__.startswith("core.") and hasattr(item, "__dict__"):
            pending += vars(item).values()
        else:
            total += sys.getsizeof(item)
    return total


@dataclass(frozen=True)
class Offer:
    """A sellable product as the block shows it."""
    id: int
    handle: str
    title: str
    url: str
    image: str | None
    price: str | None  # of the variant quick add puts in the cart
    variant_id: int | None = None  # the first variant in stock


@dataclass
class Shelf:
    """What can be recommended right now: the storefront catalog (what the model reads), the sellable products by
    department (what may be shown), and the retrieval that ranks them. Loaded once a request, a precompute or
    a gate run."""
    catalog: dict[Hashable, Item]
    sellable: dict[Hashable, str]
    retrieval: Blend | neighbours.ListedRetrieval | None  # None: the assistant's shelf (`catalog_shelf`)
    offers: dict[int, Offer] = field(default_factory=dict)  # what a storefront reply shows of each sellable one
    rules: Rules = field(default_factory=Rules)  # the merchant's pins and exclusions
    several: frozenset[str] | None = None  # `bought_several` as a build of the neighbour lists found it
    index: SemanticIndex | None = None  # the catalog's text vectors (the assistant's search); the Blend's own

    def __post_init__(self):
        if self.index is None and isinstance(self.retrieval, Blend):
            self.index = self.retrieval.index

    @cached_property
    def bought_several(self) -> frozenset[str]:
        """The product types (casefolded) shoppers buy several of in one order: at least SEVERAL_SHARE of the
        pairs bought together with a product of the type are of the type itself (two fuel canisters for a
        long trip, three colours of a lunch bag)."""
        if self.several is not None:
            return self.several
        copurchase = self.retrieval.copurchase
        kinds = [self.catalog[p].product_type.casefold() if p in self.catalog else "" for p in copurchase.ids]
        names, codes = np.unique(np.array(kinds + [""], dtype=object), return_inverse=True)
        codes = codes[:-1]
        pairs = copurchase.counts.tocoo()
        same = codes[pairs.row] == codes[pairs.col]
        total = np.bincount(codes[pairs.row], weights=pairs.data, minlength=len(names))
        own = np.bincount(codes[pairs.row][same], weights=pairs.data[same], minlength=len(names))
        return frozenset(name for name, n, t in zip(names, own, total, strict=True)
                         if name and t and n >= SEVERAL_SHARE * t)

    @cached_property
    def title_words(self) -> dict[Hashable, tuple[frozenset[str], frozenset[str]]]:
        """Each product's title as content words (`title_words_of`), and those of its last word (what the product
        is): what a shopper's loose naming of a product is matched against, worked out once a shelf."""
        return {p: (title_words_of(item.title), title_words_of(item.title.split()[-1] if item.title.split() else ""))
                for p, item in self.catalog.items()}

    @cached_property
    def title_word_rarity(self) -> dict[str, float]:
        """How rare each title word is across the catalog (log of products over products with it)."""
        counts = Counter(w for words, _ in self.title_words.values() for w in words)
        return {w: math.log(len(self.title_words) / n) for w, n in counts.items()}

    def kind(self, product: Hashable) -> str:
        """The product's type, casefolded ("" when it has none or is not in the catalog)."""
        item = self.catalog.get(product)
        return item.product_type.casefold() if item else ""

    def title(self, product: Hashable) -> str:
        item = self.catalog.get(product)
        return item.title if item else str(product)

    @classmethod
    def everything(cls, titles: dict[Hashable, str], retrieval: Blend,
                   types: dict[Hashable, str] | None = None) -> Shelf:
        """A catalog known by titles (and product `types`, when known) from an order file, every product
        sellable: offline evaluation."""
        types = types or {}
        catalog = {p: Item(p, title, types.get(p, ""), "") for p, title in sorted(titles.items())}
        return cls(catalog, {p: item.product_type for p, item in catalog.items()}, retrieval)


def storefront_products(shop_id: int, only: Iterable[int] | None = None) -> tuple[list, dict[int, Item],
                                                                                  dict[int, Offer]]:
    """The shop's products (or `only` these) in two light queries (columns, not ORM objects): their rows, the
    catalog of what shoppers can see (active and published to the Online Store) and, of that, the offers of
    what has a variant in stock (what may be shown)."""
    query = select(Product.id, Product.title, Product.product_type, Product.description,
                   Product.on_storefront.label("on_storefront"), Product.handle, Product.online_store_url,
                   Product.image_url, Product.embedding_sha).where(Product.shop_id == shop_id)
    variants = select(Variant.product_id, Variant.id, Variant.price).where(
        Variant.shop_id == shop_id, Variant.available_for_sale, Variant.inventory_quantity > 0)
    if only is not None:
        wanted = sorted(set(only))
        query, variants = query.where(Product.id.in_(wanted)), variants.where(Variant.product_id.in_(wanted))
    products = db.session.execute(query).all()
    first_in_stock: dict[int, tuple[int, object]] = {}  # product → (variant, price): what quick add adds
    for product, variant, price in db.session.execute(variants.order_by(Variant.product_id, Variant.id)):
        first_in_stock.setdefault(product, (variant, price))
    catalog = {p.id: Item(p.id, p.title, p.product_type, p.description) for p in products if p.on_storefront}
    offers = {p.id: Offer(p.id, p.handle, p.title, p.online_store_url or f"/products/{p.handle}", p.image_url,
                          str(first_in_stock[p.id][1]), first_in_stock[p.id][0])
              for p in products if p.id in catalog and p.id in first_in_stock}
    return products, catalog, offers


def load_shelf(shop: Shop, baskets: list[Basket] | None = None) -> Shelf:
    """The shop's shelf over its whole catalog. Retrieval learns from all its orders (remembered a few minutes),
    or from `baskets` when given (the deploy gate passes the training period only). Stored product embeddings
    stand in for the encoder."""
    products, catalog, offers = storefront_products(shop.id)
    remember_stored_vectors(shop.id, products, catalog)
    if baskets is None:
        retrieval = retrieval_index(shop.id, catalog)
    else:
        retrieval = period_retrieval(shop.id, baskets, catalog)
    return Shelf(catalog, {p: catalog[p].product_type for p in offers}, retrieval, offers, load_rules(shop.id))


def remember_stored_vectors(shop_id: int, products: list, catalog: dict[int, Item]) -> None:
    """The catalog's text vectors stored at sync (and on product webhooks), where their text is unchanged: the
    encoder runs only for the rest."""
    texts = {p.id: embeddings.product_text(p.title, p.product_type, p.description) for p in products}
    stored = [p.id for p in products if p.id in catalog and not embeddings.is_remembered(texts[p.id])
              and p.embedding_sha == embeddings.text_sha(texts[p.id])]
    if stored:
        embeddings.remember((texts[product], vector) for product, vector in db.session.execute(
            select(Product.id, Product.embedding).where(Product.shop_id == shop_id, Product.id.in_(stored))))


def catalog_shelf(shop: Shop) -> Shelf:
    """What the support assistant reads: the storefront catalog, its offers and rules and the catalog's text
    vectors, without a retrieval index (a chat never waits for one to be built). Reused by this process like
    `shelf_for`."""
    def load() -> Shelf:
        products, catalog, offers = storefront_products(shop.id)
        remember_stored_vectors(shop.id, products, catalog)
        return Shelf(catalog, {p: catalog[p].product_type for p in offers}, None, offers, load_rules(shop.id),
                     index=catalog_index(catalog))
    return _kept_shelf(shop, "catalog", load)


def listed_shelf(shop: Shop, viewing: int, cart: list[int], history: History, arm: str = "served",
                 everything: bool = False) -> Shelf | None:
    """The shelf a storefront block needs, from the shop's neighbour lists (neighbours.py): of the products
    the basket's lists name, the customer's history and the best-sellers, the shortlist the merged lists
    score best (`ListedRetrieval.shortlist`; for the A/B holdout, plain co-purchase's), or `everything`, and
    the pins, read with their stock now. No index is built or kept. None before the shop's first build (the
    caller uses `shelf_for`)."""
    build = db.session.get(RetrievalBuild, shop.id)
    if build is None or build.built_at is None:
        return None
    rules = load_rules(shop.id)
    basket = [viewing, *cart]
    lists = neighbours.load(shop.id, basket)
    pins = set(rules.pins.get(viewing, []))
    popular = {p: (popularity, cold) for p, popularity, cold in build.popular}
    head = listed_head(build) if cart or history else None  # a product page's served order holds the head's
    type_pool = head.type_pool(list(db.session.scalars(select(Product.product_type).where(
        Product.shop_id == shop.id, Product.id.in_(basket), Product.product_type != ""))), basket) \
        if head is not None and head.kinds is not None and any(head.admitted.values()) else []
    facts = neighbours.facts_of(lists) | popular
    facts |= neighbours.load_facts(shop.id, (set(history) | pins | set(basket) | set(type_pool)) - facts.keys())
    retrieval = neighbours.ListedRetrieval(Weights(**build.weights), lists, facts, list(popular), head, type_pool)
    if everything:
        shortlist = set(facts)
    elif arm == HOLDOUT:
        shortlist = set(retrieval.copurchase(basket, neighbours.SHORTLIST))
    else:
        shortlist = retrieval.shortlist(basket, history)
    shortlist |= pins | set(basket)
    lists |= neighbours.load(shop.id, shortlist - set(lists))  # each one's values with the basket, and together
    _, catalog, offers = storefront_products(shop.id, shortlist)
    retrieval.types = {p: item.product_type for p, item in catalog.items() if item.product_type}
    if retrieval.head_serves(basket, history):  # it reads their text similarity with the basket exactly
        retrieval.vectors = {p: np.frombuffer(vector, dtype=np.float32) for p, vector in db.session.execute(
            select(Product.id, Product.embedding).where(Product.shop_id == shop.id, Product.id.in_(shortlist),
                                                        Product.embedding.is_not(None)))}
    return Shelf(catalog, {p: catalog[p].product_type for p in offers}, retrieval, offers, rules,
                 frozenset(build.several))


def listed_head(build: RetrievalBuild) -> neighbours.ListedHead | None:
    """The shop's ranking head as its last build stored it, read once a build by this process (`ServingState`)."""
    state = serving_state()
    kept = state.head(build.shop_id)
    if kept is not None and kept[0] == build.built_at:
        return kept[1]
    stored = build.head
    head = neighbours.ListedHead.load(stored) if stored else None
    state.keep_head(build.shop_id, build.built_at, head)
    return head


def build_neighbour_lists(shop: Shop, progress: Callable[[Iterable], Iterable] = lambda products: products):
    """Build the shop's serving retrieval from its orders now, keep it in this process (a precompute that
    follows reuses it), and store every product's neighbour lists for the storefront. Forgets the cached
    replies where the lists changed: they were built from the old ones."""
    started = utcnow()
    _, catalog, _ = storefront_products(shop.id)
    retrieval = _build_index(serving_state(), shop.id, catalog).retrieval
    several = Shelf(catalog, {}, retrieval).bought_several
    build, changed = neighbours.store(shop.id, retrieval, several, started, progress)
    if changed:
        forget_replies(shop.id)
    return build


def title_words_of(text: str) -> frozenset[str]:
    """A title's or a question's content words, plurals folded ("tents" is "tent")."""
    return frozenset(w.rstrip("s") for w in stems(text))


def shelf_for(shop: Shop) -> Shelf:
    """The shop's shelf with its retrieval index (the admin's preview; a storefront request before the shop's
    first build of its neighbour lists), reused by this process while the catalog has not changed (a product
    webhook moves the shop's reply generation) and for at most SHELF_TTL_SECONDS (stock)."""
    return _kept_shelf(shop, "index", lambda: load_shelf(shop))


def _kept_shelf(shop: Shop, kind: str, load: Callable[[], Shelf]) -> Shelf:
    generation = reply_generation(shop.id)
    state = serving_state()
    kept = state.shelf(shop.id, kind)
    if kept is not None and kept[0] != generation:  # moved by a webhook, perhaps in another process
        state.catalog_changed(shop.id)
    if kept is None or kept[0] != generation or time.monotonic() - kept[1] > SHELF_TTL_SECONDS:
        shelf = load()
        state.keep_shelf(shop.id, kind, generation, shelf)
        return shelf
    return kept[2]


REBUILD_THREAD = "pairwell-index-"  # a background rebuild's thread name, then the shop's id


def retrieval_index(shop_id: int, catalog: dict[int, Item]) -> Blend:
    """The serving retrieval over the shop's orders. Built on first use (once, however many requests arrive);
    after INDEX_TTL_SECONDS, or CHANGED_INDEX_SECONDS after a catalog change, it is rebuilt in the background
    while the old one keeps serving (a big catalog's build takes a minute, and no shopper should wait for it;
    products it does not know score 0 meanwhile). The embeddings of unchanged product texts are remembered, so
    a rebuild embeds only what changed."""
    state = serving_state()
    built = state.index(shop_id)
    if built is None:
        with state.build_lock(shop_id):
            built = state.index(shop_id) or _build_index(state, shop_id, catalog)
        return built.retrieval
    with state.lock:
        stale = built.due() and shop_id not in state.rebuilding
        if stale:
            state.rebuilding.add(shop_id)
    if stale:
        threading.Thread(target=_rebuild_index, args=(current_app._get_current_object(), shop_id, catalog),
                         name=f"{REBUILD_THREAD}{shop_id}", daemon=True).start()
    return built.retrieval


def finish_rebuilds() -> None:
    """Wait for the background index rebuilds: a process that exits in the middle of one (torch learning the
    complements in a daemon thread) aborts instead of exiting."""
    for thread in threading.enumerate():
        if thread.name.startswith(REBUILD_THREAD):
            thread.join()


def _build_index(state: ServingState, shop_id: int, catalog: dict[int, Item]) -> BuiltIndex:
    retrieval = serving_retrieval(load_baskets(shop_id, catalog), catalog)
    built = BuiltIndex(time.monotonic(), retrieval, footprint(retrieval))
    state.keep_index(shop_id, built)
    return built


def _rebuild_index(app, shop_id: int, catalog: dict[int, Item]) -> None:
    with app.app_context():
        state = serving_state()
        try:
            _build_index(state, shop_id, catalog)
        except Exception:  # the old index keeps serving; the next request past the TTL tries again
            log.exception("rebuilding the retrieval index of shop %s failed", shop_id)
        finally:
            with state.lock:
                state.rebuilding.discard(shop_id)
            db.session.remove()


INTENTS = ("complementary", "related")  # as Shopify's own recommendations name them
BOUGHT_BOTH = 2  # orders holding both: enough to show a product of the viewed one's own type as a complement


def admissible(shelf: Shelf, viewing: Hashable, intent: str) -> Callable[[Hashable], bool]:
    """What may appear in the viewed product's block: what the merchant allows and, for the complementary
    intent, nothing of the viewed product's own type (a second stove is a substitute) unless shoppers bought
    both (`substitutes`). A catalog without product types cannot tell, so its products are all admissible."""
    def allowed(product: Hashable) -> bool:
        if not shelf.rules.allows(viewing, product, shelf.sellable[product]):
            return False
        return intent != "complementary" or not substitutes(shelf, viewing, product)
    return allowed


def substitutes(shelf: Shelf, first: Hashable, second: Hashable) -> bool:
    """Two products of one type that shoppers have not bought together (BOUGHT_BOTH orders): the second stands
    in for the first (a second stove), so a block of complements shows one. Untyped products never are."""
    kind = shelf.kind(first)
    return bool(kind) and kind == shelf.kind(second) and \
        shelf.retrieval.copurchase.together(first, second) < BOUGHT_BOTH


SEVERAL_SHARE = 0.25  # of a type's bought-together pairs with its own type, for a block to show two of it


def one_of_a_kind(shelf: Shelf, products: list[Hashable], limit: int) -> list[Hashable]:
    """The first `limit` of `products` with at most one product of each type, unless shoppers buy several of
    that type in one order (`Shelf.bought_several`) or bought the two together (BOUGHT_BOTH orders): four
    places are precious, and three AAA batteries for a headlamp waste two. Products set aside come back only
    when the list holds too few kinds. Products without a type are all of their own kind."""
    shown: list[Hashable] = []
    set_aside: list[Hashable] = []
    for product in products:
        if shelf.kind(product) not in shelf.bought_several and any(substitutes(shelf, twin, product)
                                                                   for twin in shown):
            set_aside.append(product)
        else:
            shown.append(product)
            if len(shown) == limit:
                break
    return (shown + set_aside)[:limit]


def ranking(shelf: Shelf, viewing: Hashable, cart: list[Hashable], intent: str = "related",
            history: History | None = None) -> list[Hashable]:
    """Sellable products admissible for `intent` by the retrieval score with the viewed item, the cart and the
    signed-in customer's `history`, then the viewed item's department first, then by id. The gate and
    evaluation score the ranking itself (`related`: every product); the storefront's default is
    `complementary`."""
    retrieval = shelf.retrieval
    scores = retrieval.scores([viewing, *cart], history)
    basket = {viewing, *cart}
    allowed = admissible(shelf, viewing, intent)
    score = {p: float(scores[retrieval.position[p]]) if p in retrieval.position else 0.0
             for p in shelf.sellable if p not in basket and allowed(p)}
    department = shelf.catalog[viewing].product_type if viewing in shelf.catalog else None
    return sorted(score, key=lambda p: (-score[p], shelf.sellable[p] != department, p))


@dataclass
class Reranked:
    products: list[Hashable]  # the model's picks first, then the ranking
    picks: list[Hashable] = field(default_factory=list)  # what the model placed (its origin is `model`)
    label_mass: float = 0.0  # the probability the model gave the candidates' letters together (1: all of it)


def rerank(rank: Ranker, shelf: Shelf, viewing: Hashable, cart: list[Hashable], limit: int,
           intent: str = "related", history: History | None = None, at_most: int | None = None) -> Reranked:
    """The model orders the ranking's top CANDIDATES by their letters' probability (one forward pass; it reads
    the newest cart items) and places up to `at_most` (default `limit`; never over MAX_PICKS) first; the ranking
    fills the rest, to `limit`. Raises ModelUnavailable when the model cannot answer in time."""
    ordered = ranking(shelf, viewing, cart, intent, history)
    candidates = ordered[:CANDIDATES]
    if not candidates:
        return Reranked([])
    lines = [candidate_line(shelf.title(p), shelf.catalog[p].product_type if p in shelf.catalog else None)
             for p in candidates]
    prompt = ranking_prompt(shelf.title(viewing), [shelf.title(c) for c in cart], lines)
    scores = rank([{"role": "system", "content": RECOMMEND_SYSTEM}, {"role": "user", "content": prompt}],
                  LABELS[:len(candidates)])
    picks = [candidates[i] for i in best_first(scores)[:min(at_most or limit, MAX_PICKS)]]
    return Reranked((picks + [p for p in ordered if p not in picks])[:limit], picks, letter_mass(scores))


# --- The storefront -------------------------------------------------------------------------------------

def live_model(shop: Shop) -> ModelVersion | None:
    """The deployed version; a verified one waiting (or refused by the gate) serves nobody."""
    return db.session.scalars(select(ModelVersion).where(
        ModelVersion.shop_id == shop.id, ModelVersion.status == "deployed")).first()


def gate_slices(model: ModelVersion) -> list[str] | None:
    """The slices of requests (ranking_head.py SLICES) the deploy gate admitted the model for; None for
    every request: a version forced past the gate, or gated before the gate decided per slice."""
    gate = (model.metrics or {}).get("gate") or {}
    return gate["serves"] if gate.get("passed") and "serves" in gate else None


def within_model_budget(shop_id: int) -> bool:
    """Whether a shopper's request may call the shop's model now: at most MODEL_CALLS_PER_SHOP a minute over
    every web process, so one shop's storm cannot take the model host from the others. A job's own calls
    (precompute, the gate) are outside any request and never counted."""
    if not has_request_context():
        return True
    return cache.over_limit("model", str(shop_id), current_app.config["MODEL_CALLS_PER_SHOP"]) is None


def storefront_ranker(model: ModelVersion, budget: float) -> Ranker:
    """The live model on the configured host, each ranking within `budget` seconds."""
    host = host_for(current_app)
    ref = model_ref(host, model)
    return lambda messages, labels: host.rank(ref, messages, labels, timeout=budget)


def copurchase_ranking(shelf: Shelf, viewing: Hashable, cart: list[Hashable], intent: str) -> list[Hashable]:
    """The A/B holdout's list: plain co-purchase (popularity fills), over what is admissible."""
    basket = [viewing, *cart]
    allowed = admissible(shelf, viewing, intent)
    return [p for p in shelf.retrieval.copurchase(basket, len(shelf.catalog) + len(basket))
            if p in shelf.sellable and allowed(p)]


def pinned(shelf: Shelf, viewing: Hashable, cart: list[Hashable]) -> list[Hashable]:
    """The products the merchant pinned to this product's block that can be sold now (an exclusion wins)."""
    return [p for p in shelf.rules.pins.get(viewing, []) if p in shelf.offers and p not in cart
            and shelf.rules.allows(viewing, p, shelf.sellable[p])]


@dataclass
class Pick:
    """A product in a block, its reason and where it came from: `pinned`, `model`, `co-purchase`, `semantic`
    or `popular` (the retrieval's strongest signal for it; "" when not asked to explain)."""
    offer: Offer
    reason: str
    origin: str


def served_list(shop: Shop, shelf: Shelf, viewing: Hashable, cart: list[Hashable], limit: int,
                budget: float | None, intent: str, history: History | None = None) -> tuple[Reranked, str]:
    """The live model's re-rank of the ranking (`model`), or the ranking alone (`fallback`) when no model answers
    in time or the deploy gate did not admit the model for this kind of request (`gate_slices`). A complementary
    block gets the whole ranking, for `one_of_a_kind` to choose from; the model still picks at most `limit`."""
    model = live_model(shop)
    admitted = gate_slices(model) if model is not None else None
    if admitted is not None and slice_of(shelf.retrieval, [viewing, *cart]) not in admitted:
        model = None  # the gate admitted it for other kinds of request: the ranking serves this one
    reach = len(shelf.sellable) if intent == "complementary" else limit
    try:
        if model is None:
            raise ModelUnavailable("no model deployed")
        if not within_model_budget(shop.id):
            raise ModelUnavailable("the shop's model calls for this minute are spent")
        rank = storefront_ranker(model, budget or current_app.config["MODEL_BUDGET_SECONDS"])
        result = rerank(rank, shelf, viewing, cart, reach, intent, history, at_most=limit)
    except ModelUnavailable as exc:
        if model is not None:
            log.warning("serving fallback for %s: %s", shop.domain, exc)
        return Reranked(ranking(shelf, viewing, cart, intent, history)[:reach]), "fallback"
    return result, "model"


def customer_history(shop: Shop, customer: str) -> History:
    """What the signed-in customer (Shopify's `logged_in_customer_id`) bought in this shop before, by recency;
    nothing for a guest."""
    if not customer:
        return {}
    orders = load_baskets(shop.id, None, customer)
    return bought_before(((o.created_at, o.products) for o in orders), datetime.now(timezone.utc))


def recommend(shop: Shop, viewing: Product, cart: list[Product], limit: int, budget: float | None = None,
              shelf: Shelf | None = None, arm: str = "served", intent: str = "complementary",
              explain: bool = False, history: History | None = None) -> tuple[list[Pick], str]:
    """The products and their reasons, and where the list came from (`model`, `fallback`, or `holdout` for the
    A/B holdout's co-purchase list). Pinned products come first. `history`: the signed-in customer's
    (`customer_history`). `explain`: say where each product came from (the admin's preview; it costs a second
    scoring of the catalog)."""
    shelf = shelf or shelf_for(shop)
    cart_ids = [c.id for c in cart]
    pins = pinned(shelf, viewing.id, cart_ids)[:limit]
    if arm == HOLDOUT:
        result, source = Reranked(copurchase_ranking(shelf, viewing.id, cart_ids, intent)[:limit]), HOLDOUT
    else:
        result, source = served_list(shop, shelf, viewing.id, cart_ids, limit, budget, intent, history)
        if intent == "complementary":  # a block of complements shows one product of a kind
            result.products = one_of_a_kind(shelf, [p for p in result.products if p not in pins], limit)
    products = (pins + [p for p in result.products if p not in pins])[:limit]
    origins = shelf.retrieval.origins([viewing.id, *cart_ids], products, history) if explain else {}
    together = shelf.retrieval.copurchase.together

    def origin(product: Hashable) -> str:
        if product in pins:
            return "pinned"
        if product in result.picks:
            return "model"
        return "co-purchase" if source == HOLDOUT else origins.get(product, "")

    def reason(product: Hashable) -> str:
        shown, orders = reason_for(shelf.catalog[product]), together(viewing.id, product)
        if orders >= 2:
            shown += f"; bought together in {orders} orders"
        if history and product in history:
            shown += "; you ordered it before"  # a fact of the customer's own orders
        return shown

    return [Pick(shelf.offers[p], reason(p), origin(p)) for p in products], source


def offer_json(offer: Offer) -> dict:
    return {"id": offer.id, "handle": offer.handle, "title": offer.title, "url": offer.url, "image": offer.image,
            "price": offer.price, "variant_id": offer.variant_id}


def as_json(offer: Offer, reason: str) -> dict:
    return {**offer_json(offer), "reason": reason}


def cache_key(shop_id: int, product_id: int, cart: list[int], limit: int, arm: str = "served",
              intent: str = "complementary", customer: str = "") -> str:
    """A reply's key, which carries the reply generation it is built at, so a reply from before the generation
    moved is never found again. A customer with a history gets their own (`customer`); everybody else shares."""
    return (f"rec:{shop_id}:{reply_generation(shop_id)}:{arm}:{intent}:{product_id}:"
            f"{','.join(map(str, sorted(set(cart))))}:{limit}" + (f":customer:{customer}" if customer else ""))


def reply_generation(shop_id: int) -> int:
    """The shop's reply generation as the database has it, read again by this process at most every
    GENERATION_TTL_SECONDS. The database, not the cache, holds it: a bump made while Redis was away still
    reaches every process. While the database is away nothing can bump it, so the last value read stands."""
    known = current_app.extensions.setdefault("pairwell_reply_generations", LRUCache(maxsize=10_000))
    value, read_at = known.get(shop_id, (None, 0.0))
    if value is None or time.monotonic() - read_at > GENERATION_TTL_SECONDS:
        try:
            value = db.session.scalar(select(Shop.reply_generation).where(Shop.id == shop_id)) or 0
        except SQLAlchemyError:
            db.session.rollback()
            if value is None:
                raise
        known[shop_id] = (value, time.monotonic())
    return value


def forget_replies(shop_id: int) -> None:
    """Forget every cached reply of the shop (a rule, a rating, a catalog change, a deploy, a redaction): the
    generation moves in one atomic update (committed), so every process's keys change, and each reloads the
    shelf, which brings the rules, on its next request. The retrieval index stays."""
    db.session.execute(update(Shop).where(Shop.id == shop_id)
                       .values(reply_generation=Shop.reply_generation + 1))
    db.session.commit()
    current_app.extensions.get("pairwell_reply_generations", {}).pop(shop_id, None)


def invalidate(shop_id: int) -> None:
    """Forget every cached reply of the shop and its shelf (a new model, a changed catalog); its retrieval index
    keeps serving while it is rebuilt in the background (other processes see the moved generation)."""
    forget_replies(shop_id)
    serving_state().catalog_changed(shop_id)


def forget_shop(shop_id: int) -> None:
    """Forget everything this process keeps of a shop that is gone (shop/redact)."""
    forget_replies(shop_id)
    serving_state().forget(shop_id)


def cached(key: str) -> dict | None:
    """A stored reply, saying where its products came from (`model` or `fallback`) and that it was cached."""
    value = cache.store().get(key)
    return {**json.loads(value), "cached": True} if value is not None else None


def serve(shop: Shop, viewing: Product, cart: list[Product], limit: int, budget: float | None = None,
          shelf: Shelf | None = None, arm: str = "served", intent: str = "complementary", customer: str = "") -> dict:
    """The proxy's reply, from the cache when it can be. `budget`: seconds the model may take (default: the
    storefront's MODEL_BUDGET_SECONDS). `customer`: the signed-in customer, whose earlier orders count (the
    holdout's co-purchase list reads none)."""
    history = customer_history(shop, customer) if customer and arm != HOLDOUT else {}
    key = cache_key(shop.id, viewing.id, [c.id for c in cart], limit, arm, intent, customer if history else "")
    hit = cached(key)
    if hit is not None:
        return hit
    listed = listed_shelf(shop, viewing.id, [c.id for c in cart], history, arm) if shelf is None else None
    picks, source = recommend(shop, viewing, cart, limit, budget, shelf or listed, arm, intent, history=history)
    if listed is not None and len(picks) < limit:  # stock and the rules left too few of the shortlist: every candidate
        picks, source = recommend(shop, viewing, cart, limit, budget, listed_shelf(
            shop, viewing.id, [c.id for c in cart], history, arm, everything=True), arm, intent, history=history)
    reply = {"products": [as_json(pick.offer, pick.reason) for pick in picks], "source": source}
    # Model answers keep until the next deploy or catalog change; a fallback only briefly (the model may be back).
    cache.store().set(key, json.dumps(reply), 86400 if source == "model" else 60)
    return {**reply, "cached": False}


def precompute(shop: Shop, limit: int = 4, budget_seconds: float | None = None,
               progress: Callable[[list[int]], Iterable[int]] = lambda products: products) -> dict:
    """Every storefront product's empty-cart block, best-sellers first, so storefront requests hit the cache.
    With a budget, what is left is computed on its first request instead. `progress` wraps the products in
    turn (a terminal's bar)."""
    started = time.monotonic()
    shelf = load_shelf(shop)
    products = {p.id: p for p in db.session.scalars(
        select(Product).where(Product.shop_id == shop.id, Product.on_storefront))}
    popularity = shelf.retrieval.copurchase.items
    counts: dict[str, int] = {}
    for product_id in progress(sorted(products, key=lambda p: (-popularity[p], p))):
        if budget_seconds is not None and time.monotonic() - started > budget_seconds:
            counts["deferred"] = counts.get("deferred", 0) + 1
            continue
        source = serve(shop, products[product_id], [], limit, PRECOMPUTE_BUDGET_SECONDS, shelf)["source"]
        counts[source] = counts.get(source, 0) + 1
    return counts
