"""The storefront's retrieval, precomputed: each product's nearest products by each retrieval signal, with their
scores, kept in the database, so that a web process answers a "pairs well with" block by merging a few short
lists and never builds (or keeps) a store's index.

A worker computes the lists from the served retrieval (`core.recommenders.Blend` with its ranking head) at
sync, at deploy and after catalog or order changes (`store`): for each product its top LISTED by EASE,
co-purchase (with the orders holding both), semantic similarity, semantic similarity among new products and
the learned complements, and the served order itself for the product alone (head included). A request reads
the lists of the viewed product and the cart (`load`) and merges them as the blend weighs its signals
(`ListedRetrieval`): EASE and co-purchase sum over the basket and are scaled to their best, text signals take
the basket's best (a product outside a list counts as the list's last score, the most it can have), the
customer's history and popularity are added, and the blend's own weights, chosen on the store's validation
split, weigh them. A basket of one product without history gets the served order exactly."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import delete, insert, select, update

from .models import NeighbourList, RetrievalBuild, Shop, db, locked_shop, utcnow
from .recommenders import Blend, History, Weights

LISTED = 40  # neighbours kept per signal: a block shows 4 of the served order's top after stock and rules
SIGNALS = ("served", "ease", "co-purchase", "semantic", "semantic if new", "complement")
POPULAR = 50  # the shop's best-sellers, kept with the build: they fill a list its neighbours leave short
STORED_IN = 500  # rows written per statement
SETTLE = timedelta(seconds=20)  # after a change, wait this long for the next before building (a sync sends many)
REQUEUE_AFTER = timedelta(minutes=15)  # a build sent this long ago and not done is sent again (its worker died)


@dataclass
class Neighbours:
    """One product's lists: `lists[signal]` is (product ids, scores), best first; `together` the orders holding
    the product and each of its co-purchase neighbours; `asking` its need as the complements read it (unit
    length; None without trained complements)."""
    product: int
    popularity: float
    cold: bool
    lists: dict[str, tuple[np.ndarray, np.ndarray]]
    together: np.ndarray
    asking: np.ndarray | None = None

    def pack(self) -> bytes:
        """Each list's length, then every id (int64), every score (float32) and the together counts (int32)."""
        counts = np.array([len(self.lists[s][0]) for s in SIGNALS], dtype=np.int32)
        ids = np.concatenate([self.lists[s][0] for s in SIGNALS]).astype(np.int64)
        scores = np.concatenate([self.lists[s][1] for s in SIGNALS]).astype(np.float32)
        return counts.tobytes() + ids.tobytes() + scores.tobytes() + self.together.astype(np.int32).tobytes()

    @classmethod
    def unpack(cls, product: int, popularity: float, cold: bool, packed: bytes, asking: bytes | None) -> Neighbours:
        counts = np.frombuffer(packed, dtype=np.int32, count=len(SIGNALS))
        total, at = int(counts.sum()), counts.nbytes
        ids = np.frombuffer(packed, dtype=np.int64, count=total, offset=at)
        scores = np.frombuffer(packed, dtype=np.float32, count=total, offset=at + ids.nbytes)
        together = np.frombuffer(packed, dtype=np.int32, offset=at + ids.nbytes + scores.nbytes)
        ends = np.cumsum(counts)
        lists = {s: (ids[end - n:end], scores[end - n:end]) for s, n, end in zip(SIGNALS, counts, ends, strict=True)}
        return cls(product, popularity, cold, lists, together,
                   np.frombuffer(asking, dtype=np.float32) if asking else None)


def _best(ids: Sequence[Hashable], scores: np.ndarray, k: int, positive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The k best (id, score) of a row, best first (ties by position); only scores above 0 with `positive`."""
    finite = np.isfinite(scores) & (scores > 0 if positive else True)
    candidates = np.flatnonzero(finite)
    if len(candidates) > k:
        candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
    candidates = candidates[np.lexsort((candidates, -scores[candidates]))]
    return np.array([ids[i] for i in candidates], dtype=np.int64), scores[candidates].astype(np.float32)


def neighbours_of(blend: Blend, k: int = LISTED,
                  progress: Callable[[Iterable], Iterable] = lambda products: products) -> Iterable[Neighbours]:
    """Every catalog product's lists over a fitted blend. `progress` wraps the products (a bar, a log line)."""
    ids, position = blend.ids, blend.position
    new = blend.cold.astype(bool)
    for product in progress(ids):
        at = position[product]
        basket = [product]
        ease, copurchase = np.zeros(len(ids), dtype=np.float32), np.zeros(len(ids), dtype=np.float32)
        ease[blend._ease_to] = blend.ease.scores(basket)[blend._ease_from]
        copurchase[blend._to] = blend.copurchase.scores(basket)[blend._from]
        similarity = blend.index.similarities(basket)
        complement = blend.complements.matches(basket, readings=(True, False))[0] \
            if blend.complements is not None else np.zeros(len(ids), dtype=np.float32)
        served = blend.scores(basket).astype(np.float32)
        for row in (ease, copurchase, similarity, complement, served):
            row[at] = -np.inf
        unseen = similarity.copy()
        unseen[~new] = -np.inf
        lists = {"served": _best(ids, served, k), "ease": _best(ids, ease, k, positive=True),
                 "co-purchase": _best(ids, copurchase, k, positive=True), "semantic": _best(ids, similarity, k),
                 "semantic if new": _best(ids, unseen, k), "complement": _best(ids, complement, k)}
        together = np.array([blend.copurchase.together(product, int(p)) for p in lists["co-purchase"][0]],
                            dtype=np.int32)
        asking = None
        if blend.complements is not None and product in blend.complements.index.position:
            complements = blend.complements
            need = complements.index.vectors[complements.index.position[product]] @ complements.weight.T + \
                complements.bias
            asking = (need / max(float(np.linalg.norm(need)), 1e-9)).astype(np.float32)
        yield Neighbours(int(product), float(blend.popular[at]), bool(new[at]), lists, together, asking)


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
             "several": sorted(several), "popular": [int(blend.ids[i]) for i in
                                                    np.argsort(-blend.popular, kind="stable")[:POPULAR]]}
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
    does not send it again while it builds: changed over SETTLE_SECONDS ago, or never built, or sent over
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

    def __init__(self, lists: dict[int, Neighbours], popular: list[int]):
        self.lists, self.popular = lists, popular

    def together(self, a: Hashable, b: Hashable) -> int:
        for first, second in ((a, b), (b, a)):
            if first in self.lists:
                ids, _ = self.lists[first].lists["co-purchase"]
                found = np.flatnonzero(ids == second)
                return int(self.lists[first].together[found[0]]) if len(found) else 0
        return 0

    def __call__(self, basket: Sequence[Hashable], k: int, history: History | None = None) -> list:
        scores: dict[int, float] = {}
        for product in basket:
            if product in self.lists:
                for p, score in zip(*self.lists[product].lists["co-purchase"], strict=True):
                    scores[int(p)] = scores.get(int(p), 0.0) + float(score)
        ranked = [p for p in sorted(scores, key=lambda p: (-scores[p], p)) if p not in basket][:k]
        return ranked + [p for p in self.popular if p not in basket and p not in ranked][:k - len(ranked)]


@dataclass
class ListedRetrieval:
    """The blend over the few products a request can show (`ids`: the lists' products, the customer's history,
    the best-sellers), merged from the basket products' lists as `Blend.signals` weighs them. It stands in for
    the Blend wherever the storefront reads one: `scores`, `position`, `cold`, `copurchase`."""
    weights: Weights
    lists: dict[int, Neighbours]  # the basket's products' and the candidates' own (for `together`)
    facts: dict[int, tuple[float, bool]]  # every candidate's popularity and newness
    popular: list[int]
    ids: list[int] = field(init=False)
    position: dict[int, int] = field(init=False)
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

    def _row(self, signal: str, product: int, floor: bool) -> np.ndarray:
        """A basket product's list as a row over `ids`; a product off the list gets the list's last score
        (`floor`: text signals, where that is the most it can have) or 0 (orders: it was never bought with)."""
        ids, scores = self.lists[product].lists[signal]
        row = np.full(len(self.ids), float(scores[-1]) if floor and len(scores) else 0.0, dtype=np.float32)
        at = [self.position.get(int(p), -1) for p in ids]
        inside = np.array([i >= 0 for i in at], dtype=bool)
        if inside.any():
            row[np.array(at)[inside]] = scores[inside]
        return row

    def scores(self, basket: Sequence[Hashable], history: History | None = None) -> np.ndarray:
        known = [p for p in basket if p in self.lists]
        if not known:
            return 1e-3 * self.popularity + self.weights.popularity * self.popularity
        if len(basket) == 1 and not history:  # the served order, head and all, then the rest by the blend
            merged = self.blended(known, history)
            ids, _ = self.lists[known[0]].lists["served"]
            top = float(np.max(merged, initial=0.0)) + 1
            for rank, p in enumerate(ids):
                if int(p) in self.position:
                    merged[self.position[int(p)]] = top + len(ids) - rank
            return merged
        return self.blended(known, history)

    def blended(self, known: list[int], history: History | None) -> np.ndarray:
        zeros = np.zeros(len(self.ids), dtype=np.float32)
        ease = sum((self._row("ease", p, False) for p in known), zeros)
        copurchase = sum((self._row("co-purchase", p, False) for p in known), zeros)
        similarity = np.max([np.maximum(self._row("semantic", p, True),
                                        self._row("semantic if new", p, False)) for p in known], axis=0)
        matched = np.array([self._row("complement", p, True) for p in known])
        asking = [self.lists[p].asking for p in known if self.lists[p].asking is not None]
        need = float(np.linalg.norm(np.mean(asking, axis=0))) if asking else 1.0
        bought = zeros.copy()
        for product, weight in (history or {}).items():
            if product in self.position:
                bought[self.position[product]] = weight
        signals = np.stack([ease / max(float(ease.max(initial=0)), 1e-9),
                            copurchase / max(float(copurchase.max(initial=0)), 1e-9),
                            similarity, similarity * self.cold, self.popularity,
                            bought / max(float(bought.max(initial=0)), 1e-9),
                            matched.max(axis=0), matched.mean(axis=0) / max(need, 1e-9)])
        return self.weights.as_array() @ signals + 1e-3 * self.popularity


def candidates(lists: dict[int, Neighbours], popular: Iterable[int]) -> set[int]:
    """Every product the basket's lists name, and the best-sellers."""
    named = {int(p) for n in lists.values() for ids, _ in n.lists.values() for p in ids}
    return named | set(popular)
