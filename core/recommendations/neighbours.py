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
exactly."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import delete, insert, select, update

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


def _best(scores: np.ndarray, k: int, positive: bool = False) -> np.ndarray:
    """The positions of a row's k best finite scores (only those above 0 with `positive`), best first."""
    candidates = np.flatnonzero(np.isfinite(scores) & (scores > 0 if positive else True))
    if len(candidates) > k:
        candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
    return candidates[np.lexsort((candidates, -scores[candidates]))]


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
                                                    for i in np.argsort(-blend.popular, kind="stable")[:POPULAR]]}
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
        for first, second in ((a, b), (b, a)):
            if first in self.lists:
                ids = self.lists[first].ids.tolist()
                return int(self.lists[first].together[ids.index(second)]) if second in ids else 0
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


@dataclass
class ListedRetrieval:
    """The blend over the few products a request can show (`ids`: the lists' products, the customer's history,
    the best-sellers), merged from the basket products' lists as `Blend.signals` weighs them. It stands in for
    the Blend wherever the storefront reads one: `scores`, `position`, `cold`, `copurchase`."""
    weights: Weights
    lists: dict[Hashable, Neighbours]  # the basket's products' and the candidates' own (for `together`)
    facts: dict[Hashable, tuple[float, bool]]  # every candidate's popularity and newness
    popular: list[Hashable]
    ids: list[Hashable] = field(init=False)
    position: dict[Hashable, int] = field(init=False)
    cold: np.ndarray = field(init=False)
    popularity: np.ndarray = field(init=False)
    copurchase: ListedCoPurchase = field(init=False)
    head = None  # the served order already holds the head's

    def __post_init__(self):
        self.ids = sorted(self.facts)
        self.position = {p: i for i, p in enumerate(self.ids)}
        self.cold = np.array([self.facts[p][1] for p in self.ids], dtype=np.float32)
        self.popularity = np.array([self.facts[p][0] for p in self.ids], dtype=np.float32)
        self.copurchase = ListedCoPurchase(self.lists, self.popular)

    def _table(self, product: Hashable) -> np.ndarray:
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
        return table

    def shortlist(self, basket: Sequence[Hashable], history: History | None = None) -> set:
        """The SHORTLIST candidates the merged lists score best: those whose own lists a request loads, so
        that `scores` then reads each one's values with every basket product."""
        scores = self.scores(basket, history)
        return {self.ids[i] for i in np.argsort(-scores, kind="stable")[:SHORTLIST]}

    def scores(self, basket: Sequence[Hashable], history: History | None = None) -> np.ndarray:
        known = [p for p in basket if p in self.lists]
        if not known:
            return (self.weights.popularity + 1e-3) * self.popularity
        tables = np.array([self._table(p) for p in known])
        merged = self.blended(tables, known, history)
        if len(basket) == 1 and not history:  # the served order, head and all, then the rest by the blend
            served = tables[0, 4]
            listed = np.isfinite(served)
            if listed.any():
                merged[listed] = float(np.max(merged, initial=0.0)) + 1 + served[listed] \
                    - served[listed].min()
        return merged

    def blended(self, tables: np.ndarray, known: list[Hashable], history: History | None) -> np.ndarray:
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
        return self.weights.as_array() @ signals + 1e-3 * self.popularity


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

    def __call__(self, basket: Sequence[Hashable], k: int, history: History | None = None) -> list:
        blend = self.blend
        lists = self._lists(basket)
        named = (candidates(lists, self.popular) | set(history or {}) | set(basket)) & blend.position.keys()
        facts = {p: (float(blend.popular[blend.position[p]]), bool(blend.cold[blend.position[p]])) for p in named}
        retrieval = ListedRetrieval(blend.weights, lists, facts, self.popular)
        lists |= self._lists(retrieval.shortlist(basket, history))
        return top_k(retrieval.ids, retrieval.scores(basket, history), basket, k)

    def _lists(self, products: Iterable[Hashable]) -> dict[Hashable, Neighbours]:
        products = [p for p in dict.fromkeys(products) if p in self.blend.position]
        self.lists |= {n.product: n for n in neighbours_of(self.blend, [p for p in products if p not in self.lists],
                                                          self.k)}
        return {p: self.lists[p] for p in products}
