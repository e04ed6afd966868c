"""The storefront's retrieval, precomputed: each product's nearest products by each retrieval signal, with their
scores, kept in the database, so that a web process answers a "pairs well with" block by merging a few short
lists and never builds (or keeps) a store's index.

A worker computes the lists from the served retrieval (`recommenders.Blend` with its ranking head) after
every sync and after catalog or order changes (`store`): for each product, its top LISTED by EASE,
co-purchase, semantic similarity, semantic similarity among new products, the learned complements and the
served order for the product alone (head included), with every one's value by each of those signals and the
orders holding both. A request reads the lists of the viewed product and the cart (`load`) and merges them as
the blend weighs its signals (`ListedRetrieval`): EASE and co-purchase sum over the basket and are scaled to
their best, text signals take the basket's best (a product off a list counts as the list's last score, the
most it can have), the customer's history and popularity are added, and the blend's own weights, chosen on
the store's validation split, weigh them. A basket of one product without history gets the served order
exactly; any other request, in a slice the ranking head serves, is re-ordered by the head the build stored
(`ListedHead`), from the lists' values."""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property

import lightgbm
import numpy as np
from sqlalchemy import delete, insert, select, update

from core.recommendations.ranking_head import (
    HISTORY_READ,
    POOL,
    SLICES,
    TYPE_POOL,
    best_positions,
    feature_columns,
    reordered,
)
from core.recommendations.recommenders import Blend, History, Weights, top_k
from core.storage.models import NeighbourList, RetrievalBuild, Shop, db, locked_shop, utcnow

LISTED = 40  # a product's top neighbours taken by each signal: a block shows 4 after stock and rules; on Online
# Retail's validation split 20, 40 and 80 gave HR@10 0.275-0.282, 0.273-0.279 and 0.283, within noise of each
# other (taking the orders' signals to 100 or 200 moved nothing)
# A neighbour's value by each signal, then its own popularity and newness (what a request needs of a candidate).
COLUMNS = ("ease", "co-purchase", "semantic", "complement", "served", "popularity", "new")
SHORTLIST = 50  # merged candidates a block reads (their lists and stock): it shows 4, after stock and rules;
# 100 doubled the bytes a first request reads (p99 88 against 47 ms at 1,000 stores), and on Online Retail's
# validation split the values the candidates' lists lend moved HR@10 by nothing (0.273 against 0.274 without)
POPULAR = 50  # the shop's best-sellers, kept with the build: they fill a list its neighbours leave short
STORED_IN = 500  # rows written per statement
SETTLE = timedelta(seconds=20)  # after a change, wait this long for the next before building (a sync sends many)
REQUEUE_AFTER = timedelta(minutes=15)  # a build sent this long ago and not done is sent again (its worker died)


@dataclass
class Neighbours:
    """One product's neighbours (`ids`: its top LISTED by EASE, co-purchase, semantic similarity, semantic
    similarity among new products, the complements and the served order, together) with their value by each
    signal (`values`, a column each of COLUMNS: the raw scores the blend weighs, EASE's negative ones too, the
    served order's score for this product alone, and the neighbour's own popularity and newness), the orders
    holding both (`together`), the most a product off the list can have by similarity and by the complements
    (`floors`: the last listed), EASE's diagonal of the inverse Gram matrix for it (`floors[2]`: it turns the
    product's EASE weight for another into the other's for it), and its need as the complements read it
    (`asking`, unit length; None without trained complements)."""
    product: Hashable
    popularity: float
    cold: bool
    ids: np.ndarray
    values: np.ndarray
    together: np.ndarray
    floors: np.ndarray  # the last listed by similarity and by the complements; EASE's diagonal (0: not in EASE)
    asking: np.ndarray | None = None

    def pack(self) -> bytes:
        """The count, then the ids (int64), the values (float32, row by row), the together counts (int32) and
        the floors (float32)."""
        return (np.array([len(self.ids)], dtype=np.int32).tobytes() + self.ids.astype(np.int64).tobytes()
                + self.values.astype(np.float32).tobytes() + self.together.astype(np.int32).tobytes()
                + self.floors.astype(np.float32).tobytes())

    @classmethod
    def unpack(cls, product: int, popularity: float, cold: bool, packed: bytes, asking: bytes | None) -> Neighbours:
        count = int(np.frombuffer(packed, dtype=np.int32, count=1)[0])
        at = 4
        ids = np.frombuffer(packed, dtype=np.int64, count=count, offset=at)
        at += ids.nbytes
        values = np.frombuffer(packed, dtype=np.float32, count=count * len(COLUMNS), offset=at)
        at += values.nbytes
        together = np.frombuffer(packed, dtype=np.int32, count=count, offset=at)
        floors = np.frombuffer(packed, dtype=np.float32, count=3, offset=at + together.nbytes)
        return cls(product, popularity, cold, ids, values.reshape(count, len(COLUMNS)), together, floors,
                   np.frombuffer(asking, dtype=np.float32) if asking else None)

    def column(self, name: str) -> np.ndarray:
        return self.values[:, COLUMNS.index(name)]

    @cached_property
    def at(self) -> dict[Hashable, int]:
        """Each neighbour's row."""
        return {p: i for i, p in enumerate(self.ids.tolist())}


def _best(scores: np.ndarray, k: int, positive: bool = False) -> np.ndarray:
    """The positions of a row's k best finite scores (only those above 0 with `positive`), best first."""
    chosen = best_positions(np.where(scores > 0, scores, -np.inf) if positive else scores, k)
    return chosen[np.lexsort((chosen, -scores[chosen]))]


def neighbours_of(blend: Blend, products: Iterable[Hashable] | None = None, k: int = LISTED,
                  progress: Callable[[Iterable], Iterable] = lambda products: products) -> Iterable[Neighbours]:
    """Each catalog product's neighbours (of `products`; by default every one) over a fitted blend. `progress`
    wraps the products (a bar, a log line)."""
    ids, position = blend.ids, blend.position
    new = blend.cold.astype(bool)
    for product in progress(list(ids if products is None else products)):
        at = position[product]
        basket = [product]
        ease, copurchase = np.zeros(len(ids), dtype=np.float32), np.zeros(len(ids), dtype=np.float32)
        ease[blend._ease_to] = blend.ease.scores(basket)[blend._ease_from]
        copurchase[blend._to] = blend.copurchase.scores(basket)[blend._from]
        similarity = blend.index.similarities(basket)
        complement = blend.complements.matches(basket, readings=(True, False))[0] \
            if blend.complements is not None else np.zeros(len(ids), dtype=np.float32)
        served = blend.scores(basket).astype(np.float32)
        rows = np.stack([ease, copurchase, similarity, complement, served])
        rows[:, at] = -np.inf
        rows = np.vstack([rows, blend.popular[None], blend.cold[None]])
        unseen = np.where(new, rows[2], -np.inf)
        semantic, matched = _best(rows[2], k), _best(rows[3], k)
        chosen = np.unique(np.concatenate([_best(rows[0], k, positive=True), _best(rows[1], k, positive=True),
                                           semantic, _best(unseen, k), matched, _best(rows[4], k)]))
        chosen = chosen[np.lexsort((chosen, -rows[4, chosen]))]  # in the served order
        neighbour_ids = np.array([ids[i] for i in chosen])
        counts = blend.copurchase.bought_with(product)
        together = np.array([counts.get(p, 0) for p in neighbour_ids.tolist()], dtype=np.int32)
        in_ease = blend.ease.position.get(product)
        floors = np.array([rows[2, semantic[-1]] if len(semantic) else 0.0,
                           rows[3, matched[-1]] if len(matched) else 0.0,
                           blend.ease.diagonal[in_ease] if in_ease is not None else 0.0], dtype=np.float32)
        asking = None
        if blend.complements is not None and product in blend.complements.index.position:
            complements = blend.complements
            need = complements.index.vectors[complements.index.position[product]] @ complements.weight.T + \
                complements.bias
            asking = (need / max(float(np.linalg.norm(need)), 1e-9)).astype(np.float32)
        yield Neighbours(product, float(blend.popular[at]), bool(new[at]), neighbour_ids,
                         rows[:, chosen].T.astype(np.float32), together, floors, asking)


# --- Storage ------------------------------------------------------------------------------------------

def store(shop_id: int, blend: Blend, several: Iterable[str], started: datetime,
          progress: Callable[[Iterable], Iterable] = lambda products: products) -> tuple[RetrievalBuild, bool]:
    """Compute the shop's lists and replace the stored ones in one transaction (a reader sees the old lists or
    the new, never half), under the shop's lock (two builds of one shop take turns). `several`: the product
    types shoppers buy several of in one order (`Shelf.bought_several`); `started`: when the build began
    reading the shop's orders (a change after it is built again). Returns the build and whether the lists
    changed: lists where nothing moved are left as they are, and the storefront's cached replies can stay."""
    rows = [{"shop_id": shop_id, "product_id": n.product, "popularity": n.popularity, "cold": n.cold,
             "lists": n.pack(), "asking": n.asking.tobytes() if n.asking is not None else None}
            for n in neighbours_of(blend, progress=progress)]
    facts = {"weights": {name: getattr(blend.weights, name) for name in Weights.__dataclass_fields__},
             "several": sorted(several), "popular": [[int(blend.ids[i]), float(blend.popular[i]), bool(blend.cold[i])]
                                                    for i in np.argsort(-blend.popular, kind="stable")[:POPULAR]],
             "head": stored_head(blend)}
    locked_shop(shop_id)
    build = db.session.get(RetrievalBuild, shop_id, populate_existing=True) or RetrievalBuild(shop_id=shop_id)
    changed = build.built_at is None or any(getattr(build, name) != value for name, value in facts.items()) \
        or _stored(shop_id) != {(r["product_id"], r["popularity"], r["cold"], r["lists"], r["asking"]) for r in rows}
    if changed:
        db.session.execute(delete(NeighbourList).where(NeighbourList.shop_id == shop_id))
        for start in range(0, len(rows), STORED_IN):
            db.session.execute(insert(NeighbourList), rows[start:start + STORED_IN])
        for name, value in facts.items():
            setattr(build, name, value)
    build.products, build.built_at, build.queued_at = len(rows), utcnow(), None
    build.seconds = (build.built_at - started).total_seconds()
    if build.changed_at is not None and build.changed_at <= started:
        build.changed_at = None  # a change that arrived while it built waits for the next build
    db.session.add(build)
    db.session.commit()
    return build, changed


def stored_head(blend: Blend) -> bytes | None:
    """The blend's ranking head as a build stores it (`ListedHead.load` reads it back)."""
    return zlib.compress(json.dumps(blend.head.stored()).encode()) if blend.head is not None else None


def _stored(shop_id: int) -> set[tuple]:
    return {tuple(row) for row in db.session.execute(select(
        NeighbourList.product_id, NeighbourList.popularity, NeighbourList.cold, NeighbourList.lists,
        NeighbourList.asking).where(NeighbourList.shop_id == shop_id))}


def mark_changed(shop_id: int) -> None:
    """The shop's catalog or orders changed: the sweeper has its lists built again once the changes settle
    (one build however many arrive). Under the shop's lock; the caller commits."""
    locked_shop(shop_id)
    build = db.session.get(RetrievalBuild, shop_id, populate_existing=True)
    if build is None:
        db.session.add(RetrievalBuild(shop_id=shop_id, changed_at=utcnow()))
    elif build.changed_at is None:
        build.changed_at = utcnow()


def due(now: datetime) -> list[int]:
    """The shops whose lists the sweeper should have built now, each claimed (`queued_at`) so the next sweep
    does not send it again while it builds: changed over SETTLE ago, or never built, or sent over
    REQUEUE_AFTER ago and not built since. Installed shops without any build are marked first. Commits."""
    installed = select(Shop.id).where(Shop.installed_at.is_not(None), Shop.uninstalled_at.is_(None),
                                      ~Shop.id.in_(select(RetrievalBuild.shop_id)))
    for shop_id in db.session.scalars(installed).all():
        mark_changed(shop_id)
        db.session.commit()
    waiting = (RetrievalBuild.changed_at.is_not(None) & (RetrievalBuild.changed_at < now - SETTLE)) | \
        RetrievalBuild.built_at.is_(None)
    free = RetrievalBuild.queued_at.is_(None) | (RetrievalBuild.queued_at < now - REQUEUE_AFTER)
    claimed = db.session.scalars(update(RetrievalBuild).where(waiting, free).values(queued_at=now)
                                 .returning(RetrievalBuild.shop_id)).all()
    db.session.commit()
    return sorted(claimed)


def load(shop_id: int, products: Iterable[int]) -> dict[int, Neighbours]:
    """The stored lists of `products` (those the last build knew)."""
    wanted = sorted(set(products))
    if not wanted:
        return {}
    rows = db.session.execute(select(
        NeighbourList.product_id, NeighbourList.popularity, NeighbourList.cold, NeighbourList.lists,
        NeighbourList.asking).where(NeighbourList.shop_id == shop_id, NeighbourList.product_id.in_(wanted)))
    return {row[0]: Neighbours.unpack(*row) for row in rows}


def load_facts(shop_id: int, products: Iterable[int]) -> dict[int, tuple[float, bool]]:
    """Popularity and newness of `products` (a candidate's own facts, without its lists)."""
    wanted = sorted(set(products))
    if not wanted:
        return {}
    return {p: (popularity, cold) for p, popularity, cold in db.session.execute(select(
        NeighbourList.product_id, NeighbourList.popularity, NeighbourList.cold)
        .where(NeighbourList.shop_id == shop_id, NeighbourList.product_id.in_(wanted)))}


# --- Serving --------------------------------------------------------------------------------------------

class ListedCoPurchase:
    """What the storefront asks of co-purchase, from the lists: orders holding two products (`together`) and
    the A/B holdout's plain co-purchase list (`__call__`)."""

    def __init__(self, lists: dict[Hashable, Neighbours], popular: list[Hashable]):
        self.lists, self.popular = lists, popular

    def together(self, a: Hashable, b: Hashable) -> int:
        """Orders holding both, as either one's list names the other (0: neither does, so few or none)."""
        for first, second in ((a, b), (b, a)):
            listed = self.lists.get(first)
            row = listed.at.get(second) if listed is not None else None
            if row is not None:
                return int(listed.together[row])
        return 0

    def __call__(self, basket: Sequence[Hashable], k: int, history: History | None = None) -> list:
        scores: dict[Hashable, float] = {}
        for product in basket:
            if product in self.lists:
                listed = self.lists[product]
                for p, score in zip(listed.ids.tolist(), listed.column("co-purchase").tolist(), strict=True):
                    if score > 0:
                        scores[p] = scores.get(p, 0.0) + score
        ranked = [p for p in sorted(scores, key=lambda p: (-scores[p], p)) if p not in basket][:k]
        return ranked + [p for p in self.popular if p not in basket and p not in ranked][:k - len(ranked)]


class ListedHead:
    """The blend's ranking head as a request from the lists runs it (`RankingHead.stored`): the same booster
    over the same FEATURES, each read from the lists instead of the full index (orders holding two products,
    text similarity and EASE's and co-purchase's scores from the basket's and the candidates' lists; purchases
    from popularity; type-level co-purchase from each type's scores and best-sellers), in the slices the head
    serves."""

    def __init__(self, stored: dict):
        self.booster = lightgbm.Booster(model_str=stored["booster"])
        self.admitted: dict[str, bool] = stored["admitted"]
        self.purchases_scale: float = stored["purchases_scale"]
        kinds = stored["kinds"]
        self.kinds: dict[str, dict[str, float]] | None = kinds["scores"] if kinds else None
        self.best: dict[str, list] = kinds["best"] if kinds else {}
        self.size = len(stored["booster"]) + len(json.dumps(kinds))  # roughly the bytes it holds

    @classmethod
    def load(cls, stored: bytes) -> ListedHead:
        return cls(json.loads(zlib.decompress(stored)))

    def kind_scores(self, basket_types: Sequence[str]) -> dict[str, float]:
        """Type-level co-purchase's score of each type for the basket's types (each basket product's once)."""
        scores: dict[str, float] = defaultdict(float)
        for kind in basket_types:
            for other, score in (self.kinds or {}).get(kind, {}).items():
                scores[other] += score
        return scores

    def type_pool(self, basket_types: Sequence[str], basket: Iterable[Hashable]) -> list:
        """The TYPE_POOL products type-level co-purchase ranks first for the basket, as `CandidateFeatures.pool`
        takes them: of the types bought with the basket's, the best-sellers, outside the basket."""
        if self.kinds is None:
            return []
        scores, basket = self.kind_scores(basket_types), set(basket)
        ranked = sorted((-score, rank, product) for kind, score in scores.items() if score > 0
                        for product, rank in self.best.get(kind, []) if product not in basket)
        return [product for _, _, product in ranked[:TYPE_POOL]]

    def rescored(self, retrieval: ListedRetrieval, basket: Sequence[Hashable], history: History | None,
                 known: list[Hashable], tables: np.ndarray, signals: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """`RankingHead.rescored` over the lists: the merged scores (`signals`, `scores`; `tables`: each listed
        basket product's, `known`) with the pool re-ordered by the head."""
        position, together_of = retrieval.position, retrieval.copurchase.together
        scores_outside = scores.copy()
        scores_outside[[position[p] for p in basket if p in position]] = -np.inf
        top = best_positions(scores_outside, POOL)  # as `CandidateFeatures.pool` takes them
        basket_types = [retrieval.types[p] for p in basket if p in retrieval.types]
        kinds = self.kind_scores(basket_types) if self.kinds is not None else None
        if kinds is not None:
            typed = [position[p] for p in retrieval.type_pool
                     if p in position and p not in basket and kinds.get(retrieval.types.get(p, ""), 0.0) > 0]
            top = np.union1d(top, np.array(typed, dtype=np.int64))
        if not len(top):
            return scores
        pool = top[np.lexsort((top, -scores[top]))]
        products = [retrieval.ids[i] for i in pool]

        def together(owners: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
            counts = np.array([[together_of(owner, p) for p in products] for owner in owners], dtype=np.float64) \
                if owners else np.zeros((1, len(products)))
            return np.log1p(counts.max(axis=0)), np.log1p(counts.sum(axis=0))

        tables = tables[:, :, pool]
        similar = tables[:, 2].T
        earlier = sorted((history or {}).items(), key=lambda kv: -kv[1])[:HISTORY_READ]
        goes_with, same_type = np.zeros(len(pool)), np.zeros(len(pool))
        if kinds is not None:
            for row, product in enumerate(products):
                kind = retrieval.types.get(product)
                if kind:
                    goes_with[row] = kinds.get(kind, 0.0)
                    same_type[row] = basket_types.count(kind) / max(len(basket_types), 1)
        features = feature_columns(
            signals[:, pool], scores[pool], retrieval.cold[pool], len(basket), together(known),
            retrieval.popularity[pool] * self.purchases_scale, similar, tables[:, 0].sum(axis=0),
            tables[:, 1].sum(axis=0), together([p for p, _ in earlier]), len(history or {}), goes_with, same_type)
        learned = self.booster.predict(features, num_threads=1)
        return reordered(scores, pool[np.argsort(-learned, kind="stable")])


@dataclass
class ListedRetrieval:
    """The blend over the few products a request can show (`ids`: the lists' products, the customer's history,
    the best-sellers), merged from the basket products' lists as `Blend.signals` weighs them. It stands in for
    the Blend wherever the storefront reads one: `scores`, `position`, `cold`, `copurchase`."""
    weights: Weights
    lists: dict[Hashable, Neighbours]  # the basket's products' and the candidates' own (for `together`)
    facts: dict[Hashable, tuple[float, bool]]  # every candidate's popularity and newness
    popular: list[Hashable]
    head: ListedHead | None = None  # the ranking head, for the requests the lists do not answer exactly
    type_pool: list[Hashable] = field(default_factory=list)  # `ListedHead.type_pool` for the basket
    types: dict[Hashable, str] = field(default_factory=dict)  # the read products' types (the head reads them)
    # the read products' text vectors, where the head serves: their similarity with the basket exactly
    vectors: dict[Hashable, np.ndarray] = field(default_factory=dict)
    ids: list[Hashable] = field(init=False)
    position: dict[Hashable, int] = field(init=False)
    cold: np.ndarray = field(init=False)
    popularity: np.ndarray = field(init=False)
    copurchase: ListedCoPurchase = field(init=False)

    def __post_init__(self):
        self.ids = sorted(self.facts)
        self.position = {p: i for i, p in enumerate(self.ids)}
        self.cold = np.array([self.facts[p][1] for p in self.ids], dtype=np.float32)
        self.popularity = np.array([self.facts[p][0] for p in self.ids], dtype=np.float32)
        self.copurchase = ListedCoPurchase(self.lists, self.popular)

    def table(self, product: Hashable) -> np.ndarray:
        """A basket product's values with every candidate (rows: the first five COLUMNS). A candidate off its
        list whose own list is loaded and names the product lends its values: co-purchase and similarity are
        symmetric, and EASE's weight turns by the ratio of the two diagonals. Otherwise it takes 0 by the
        orders (never bought with it, near enough) and the floors by similarity and the complements."""
        listed = self.lists[product]
        table = np.zeros((5, len(self.ids)), dtype=np.float32)
        table[2], table[3], table[4] = listed.floors[0], listed.floors[1], -np.inf
        at = np.array([self.position.get(p, -1) for p in listed.ids.tolist()], dtype=np.int64)
        inside = at >= 0
        table[:, at[inside]] = listed.values[inside, :5].T
        known = set(listed.ids.tolist())
        for candidate, other in self.lists.items():
            if candidate in known or candidate == product or candidate not in self.position:
                continue
            names = np.flatnonzero(other.ids == product)
            if len(names):
                column, values = self.position[candidate], other.values[names[0]]
                table[1, column], table[2, column] = values[1], values[2]
                if other.floors[2]:
                    table[0, column] = values[0] * listed.floors[2] / other.floors[2]
        mine = self.vectors.get(product)
        read = [p for p in self.vectors if p in self.position]
        if mine is not None and read:
            table[2, [self.position[p] for p in read]] = np.stack([self.vectors[p] for p in read]) @ mine
        return table

    def head_serves(self, basket: Sequence[Hashable], history: History | None) -> bool:
        """Whether the ranking head re-orders this request (one the lists do not answer exactly)."""
        return (len(basket) > 1 or bool(history)) and self.head is not None and \
            bool(self.head.admitted.get(self.slice_of(basket)))

    def shortlist(self, basket: Sequence[Hashable], history: History | None = None) -> set:
        """The SHORTLIST candidates the merged lists score best, and the type pool the head may add: those
        whose own lists (and rows) a request loads, so that `scores` then reads each one's values with every
        basket product."""
        scores = self.scores(basket, history, head=False)
        return {self.ids[i] for i in np.argsort(-scores, kind="stable")[:SHORTLIST]} | set(self.type_pool)

    def scores(self, basket: Sequence[Hashable], history: History | None = None, head: bool = True) -> np.ndarray:
        """Every candidate's score for the basket: a product page without history gets the served order, head
        and all; any other request the merged blend, re-ordered by the ranking head where it serves."""
        known = [p for p in basket if p in self.lists]
        if not known:
            return (self.weights.popularity + 1e-3) * self.popularity
        tables = np.array([self.table(p) for p in known])
        signals, merged = self.blended(tables, known, history)
        if len(basket) == 1 and not history:  # the served order, head and all, then the rest by the blend
            served = tables[0, 4]
            listed = np.isfinite(served)
            if listed.any():
                merged[listed] = float(np.max(merged, initial=0.0)) + 1 + served[listed] \
                    - served[listed].min()
        elif head and self.head_serves(basket, history):
            merged = self.head.rescored(self, basket, history, known, tables, signals, merged)
        return merged

    def slice_of(self, basket: Sequence[Hashable]) -> str:
        """`ranking_head.slice_of`, from the candidates' facts."""
        known = [p for p in basket if p in self.position]
        if known and all(self.facts[p][1] for p in known):
            return SLICES[0]
        return SLICES[1] if len(basket) <= 1 else SLICES[2] if len(basket) <= 4 else SLICES[3]

    def blended(self, tables: np.ndarray, known: list[Hashable], history: History | None) -> tuple[np.ndarray,
                                                                                                    np.ndarray]:
        """The blend's eight signals (rows) of every candidate and its scores, merged from the basket's
        lists (`tables`)."""
        ease, copurchase = tables[:, 0].sum(axis=0), tables[:, 1].sum(axis=0)
        similarity, matched = tables[:, 2].max(axis=0), tables[:, 3]
        asking = [self.lists[p].asking for p in known if self.lists[p].asking is not None]
        need = float(np.linalg.norm(np.mean(asking, axis=0))) if asking else 1.0
        bought = np.zeros(len(self.ids), dtype=np.float32)
        for product, weight in (history or {}).items():
            if product in self.position:
                bought[self.position[product]] = weight
        signals = np.stack([ease / max(float(ease.max(initial=0)), 1e-9),
                            copurchase / max(float(copurchase.max(initial=0)), 1e-9),
                            similarity, similarity * self.cold, self.popularity,
                            bought / max(float(bought.max(initial=0)), 1e-9),
                            matched.max(axis=0), matched.mean(axis=0) / max(need, 1e-9)])
        return signals, self.weights.as_array() @ signals + 1e-3 * self.popularity


def candidates(lists: dict[Hashable, Neighbours], popular: Iterable[Hashable]) -> set:
    """Every product the basket's lists name, and the best-sellers."""
    return {p for n in lists.values() for p in n.ids.tolist()} | set(popular)


def facts_of(lists: dict[Hashable, Neighbours]) -> dict[Hashable, tuple[float, bool]]:
    """The popularity and newness of every product the lists name, and of their owners: what a request knows of
    its candidates without reading their rows."""
    facts = {}
    for listed in lists.values():
        facts |= dict(zip(listed.ids.tolist(), zip(listed.column("popularity").tolist(),
                                                   (listed.column("new") > 0).tolist(), strict=True), strict=True))
    return facts | {p: (n.popularity, n.cold) for p, n in lists.items()}


class ServedFromLists:
    """The blend as the storefront serves it from the lists, for offline evaluation: each basket product's
    lists computed from the blend once, merged over the same candidates a request reads (the lists'
    products, the customer's history, the best-sellers). A recommender: (basket, k, history) → products."""

    def __init__(self, blend: Blend, k: int = LISTED):
        self.blend, self.k, self.lists = blend, k, {}
        self.popular = [blend.ids[i] for i in np.argsort(-blend.popular, kind="stable")[:POPULAR]]
        self.head = ListedHead.load(stored_head(blend)) if blend.head is not None else None
        self.types = blend.head.features.types if blend.head is not None else {}

    def __call__(self, basket: Sequence[Hashable], k: int, history: History | None = None) -> list:
        blend = self.blend
        lists = self._lists(basket)
        type_pool = self.head.type_pool([self.types[p] for p in basket if p in self.types], basket) \
            if self.head is not None else []
        named = (candidates(lists, self.popular) | set(history or {}) | set(basket) | set(type_pool)) \
            & blend.position.keys()
        facts = {p: (float(blend.popular[blend.position[p]]), bool(blend.cold[blend.position[p]])) for p in named}
        retrieval = ListedRetrieval(blend.weights, lists, facts, self.popular, self.head, type_pool, self.types)
        shortlist = retrieval.shortlist(basket, history)
        lists |= self._lists(shortlist)
        if retrieval.head_serves(basket, history):
            index = blend.index
            retrieval.vectors = {p: index.vectors[index.position[p]] for p in shortlist | set(basket)
                                 if p in index.position}
        return top_k(retrieval.ids, retrieval.scores(basket, history), basket, k)

    def _lists(self, products: Iterable[Hashable]) -> dict[Hashable, Neighbours]:
        products = [p for p in dict.fromkeys(products) if p in self.blend.position]
        self.lists |= {n.product: n for n in neighbours_of(self.blend, [p for p in products if p not in self.lists],
                                                          self.k)}
        return {p: self.lists[p] for p in products}
