"""The retrieval recommenders, shared by training (candidates), serving (candidates and fallback), the deploy
gate and evaluation (the baselines), so all of them measure and serve the same thing.

- Popularity: the most-bought products.
- CoPurchase: item-to-item co-occurrence ("customers also bought"): cosine to rank, lift to filter training
  examples, counts for reasons.
- ItemKNN: co-purchase with its normalisation, shrinkage and neighbourhood chosen on validation
  (`fit_item_knn`): the tuned baseline evaluation measures the served list against.
- TypeCoPurchase: product types bought together, ranked within type by popularity: the cold-start baseline.
- EASE: Steck's closed-form linear item model ("Embarrassingly Shallow Autoencoders", WWW 2019).
- Semantic: sentence-embedding similarity of product text; knows products nobody has bought together yet.
- History: what the signed-in customer bought before, the newest counting most (a wholesaler reorders; a
  hiker who bought a stove last month needs its fuel).
- Blend: what serves. EASE, co-purchase, semantic similarity and the customer's history, with weights chosen
  on the newest part of the store's own training orders (`fit_blend`), so each store gets the mix its data
  supports. A learned ranking head re-orders its top products (ranking_head.py), and the fine-tuned
  model re-ranks its top candidates (serving.py `rerank`).

A recommender is called with a basket (product ids), K and the customer's history (`bought_before`; None for
a guest), and returns up to K other product ids, best first. Only the Blend reads the history.
Purchases are sparse matrices, so a catalog of 70,000 products and 1.5 million order lines fits in memory.
"""

from __future__ import annotations

import copy
import random
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from scipy import sparse
from scipy.linalg import lapack

from core.embeddings import SemanticIndex
from core.recommendations.complements import Complements, fit_complements

COLD_START_CO_PURCHASES = 10  # fewer training co-purchases than this and co-purchase cannot judge a product
EASE_LAMBDA = 50.0  # Steck's suggestion; 20–800 tried on the Online Retail validation split, 50 was best
EASE_ITEMS = 8000  # the dense inverse is n² memory and n³ time: the most-bought 8,000 carry nearly all the signal
MAX_BASKET = 50  # a 500-line wholesale order says little of pairs
HISTORY_HALF_LIFE_DAYS = 60.0  # a purchase counts half as much two months on (no decay: 0.334 against 0.336 on
# the Online Retail validation split)

History = Mapping[Hashable, float]  # product → the customer's recency-weighted purchases of it
Recommender = Callable[[Sequence[Hashable], int, History | None], list]


class Purchases:
    """Training baskets as a sparse basket × product matrix, products ordered by purchases, most first."""

    def __init__(self, baskets: Iterable[Sequence[Hashable]], max_basket: int = MAX_BASKET):
        baskets = [list(dict.fromkeys(b))[:max_basket] for b in baskets]
        self.items = Counter(p for b in baskets for p in b)
        self.ids = [p for p, _ in self.items.most_common()]
        self.position = {p: i for i, p in enumerate(self.ids)}
        self.counts = np.array([self.items[p] for p in self.ids], dtype=np.float32)
        self.n = len(baskets)
        rows = np.repeat(np.arange(len(baskets)), [len(b) for b in baskets])
        columns = np.fromiter((self.position[p] for b in baskets for p in b), dtype=np.int64, count=len(rows))
        self.matrix = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, columns)),
                                        shape=(len(baskets), len(self.ids)))


def _as_purchases(baskets: Iterable[Sequence[Hashable]] | Purchases) -> Purchases:
    return baskets if isinstance(baskets, Purchases) else Purchases(baskets)


class Popularity:
    """The most-bought products: what any store can show without knowing the basket."""

    def __init__(self, counts: Counter):
        self.ranking = [p for p, _ in counts.most_common()]

    def __call__(self, basket: Sequence[Hashable], k: int, history: History | None = None) -> list:
        seen = set(basket)
        return [p for p in self.ranking[:k + len(seen)] if p not in seen][:k]


class CoPurchase:
    """Item co-occurrence over training baskets: how often two products were bought together."""

    def __init__(self, baskets: Iterable[Sequence[Hashable]] | Purchases):
        purchases = _as_purchases(baskets)
        self.ids, self.position, self.items, self.n = purchases.ids, purchases.position, purchases.items, purchases.n
        together = (purchases.matrix.T @ purchases.matrix).tocsr()
        together.setdiag(0)
        together.eliminate_zeros()
        self.counts = together
        self.totals = np.asarray(together.sum(axis=1)).ravel()
        scale = sparse.diags(1 / np.sqrt(np.maximum(purchases.counts, 1)))
        self.similar = (scale @ together @ scale).tocsr()  # cosine
        self.popularity = Popularity(self.items)

    def together(self, a: Hashable, b: Hashable) -> int:
        if a not in self.position or b not in self.position:
            return 0
        return int(self.counts[self.position[a], self.position[b]])

    def lift(self, a: Hashable, b: Hashable) -> float:
        together = self.together(a, b)
        return together * self.n / (self.items[a] * self.items[b]) if together else 0.0

    def co_purchases(self, product: Hashable) -> int:
        return int(self.totals[self.position[product]]) if product in self.position else 0

    def bought_with(self, product: Hashable) -> dict[Hashable, int]:
        """Every product bought with `product`, and how often."""
        if product not in self.position:
            return {}
        row = self.counts[self.position[product]]
        return {self.ids[i]: int(c) for i, c in zip(row.indices, row.data, strict=True)}

    def scores(self, basket: Sequence[Hashable]) -> np.ndarray:
        """Each product's summed similarity (cosine) with the basket's products, over `ids`."""
        rows = [self.position[p] for p in basket if p in self.position]
        if not rows:
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.asarray(self.similar[rows].sum(axis=0)).ravel()

    def __call__(self, basket: Sequence[Hashable], k: int, history: History | None = None) -> list:
        scores = self.scores(basket)
        ranked = [p for p in top_k(self.ids, scores, basket, k) if scores[self.position[p]] > 0]
        return ranked + self.popularity(list(basket) + ranked, k - len(ranked))


@dataclass(frozen=True)
class Neighbours:
    """How item-kNN weighs a pair: together(i, j) / (cnt(i)^alpha · cnt(j)^(1 - alpha) + shrink) for a
    candidate i of the basket's product j (cnt: training purchases), each j keeping its `keep` best candidates
    (None: all). alpha ½, no shrink, all kept is CoPurchase's cosine; alpha 0 is P(i | j), 1 favours rare i."""
    alpha: float = 0.5
    shrink: float = 0.0
    keep: int | None = None


COSINE = Neighbours()
NEIGHBOUR_GRID = [Neighbours(alpha, shrink, keep) for alpha in (0.0, 0.25, 0.5, 0.75, 1.0)
                  for shrink in (0.0, 2.0, 10.0, 50.0) for keep in (None, 100, 20)]


class ItemKNN(CoPurchase):
    """Item-kNN co-purchase: each product's summed `setting`-weighted co-purchases with the basket's products,
    plus `history_weight` times the customer's earlier purchases (each part scaled to its best); what scores
    nothing is filled by popularity. `fit_item_knn` chooses both on validation."""

    def __init__(self, baskets: Iterable[Sequence[Hashable]] | Purchases, setting: Neighbours = COSINE,
                 history_weight: float = 0.0):
        super().__init__(baskets)
        self.bought = np.array([self.items[p] for p in self.ids], dtype=np.float64)
        self.history_weight = history_weight
        self.validation: dict | None = None  # what `fit_item_knn` chose and how it did
        self.tried: dict[Neighbours, tuple[int, float]] = {}  # every setting's validation (hits, NDCG gain)
        self.tuned(setting)

    def with_history(self, weight: float) -> ItemKNN:
        """The same item-kNN, adding the customer's earlier purchases at `weight`."""
        other = copy.copy(self)
        other.history_weight = weight
        return other

    def tuned(self, setting: Neighbours) -> ItemKNN:
        """Re-weigh the pairs by `setting`, in place (the counts stay)."""
        self.setting = setting
        pairs = self.counts.tocoo()
        weights = pairs.data / (self.bought[pairs.col] ** setting.alpha * self.bought[pairs.row] ** (1 - setting.alpha)
                                + setting.shrink)
        if setting.keep is not None and len(weights):
            # Keep each row's `keep` largest: sort by row, then weight, and drop what ranks past `keep` in its row.
            order = np.lexsort((-weights, pairs.row))
            starts = np.searchsorted(pairs.row[order], np.arange(len(self.ids)))
            weights[order[np.arange(len(order)) - starts[pairs.row[order]] >= setting.keep]] = 0
        self.similar = sparse.csr_matrix((weights.astype(np.float32), (pairs.row, pairs.col)), shape=self.counts.shape)
        self.similar.eliminate_zeros()
        return self

    def scores(self, basket: Sequence[Hashable], history: History | None = None) -> np.ndarray:
        scores = super().scores(basket)
        if self.history_weight and history:
            bought = np.zeros(len(self.ids), dtype=np.float32)
            for product, weight in history.items():
                if product in self.position:
                    bought[self.position[product]] = weight
            scores = scores / max(float(scores.max(initial=0)), 1e-9) + \
                self.history_weight * bought / max(float(bought.max(initial=0)), 1e-9)
        return scores

    def __call__(self, basket: Sequence[Hashable], k: int, history: History | None = None) -> list:
        scores = self.scores(basket, history)
        ranked = [p for p in top_k(self.ids, scores, basket, k) if scores[self.position[p]] > 0]
        return ranked + self.popularity(list(basket) + ranked, k - len(ranked))


class TypeCoPurchase:
    """Type-level co-purchase, for the products co-purchase cannot judge: the product types bought together in
    the training baskets (item-kNN over types, weighed by `setting`; with `same_type`, a type also goes with
    itself, as often as baskets held two products of it). Every typed product takes its type's score and is
    ranked within its type by popularity (training purchases; never-bought products last), so a new product is
    known by its type alone. `types`: product → type, for the typed products only."""

    def __init__(self, baskets: Iterable[Sequence[Hashable]], types: Mapping[Hashable, str],
                 setting: Neighbours = COSINE, same_type: bool = False):
        baskets = [list(dict.fromkeys(p for p in b if p in types))[:MAX_BASKET] for b in baskets]
        bought = Counter(p for b in baskets for p in b)
        self.types, self.ids = types, sorted(types, key=lambda p: -bought[p])
        self.position = {p: i for i, p in enumerate(self.ids)}
        self.kinds = ItemKNN([[types[p] for p in b] for b in baskets])
        self.kind_of = np.array([self.kinds.position.get(types[p], -1) for p in self.ids], dtype=np.int64)
        repeats = Counter(kind for b in baskets for kind, n in Counter(types[p] for p in b).items() if n >= 2)
        self.repeats = np.array([repeats[kind] for kind in self.kinds.ids], dtype=np.float32)
        self.validation: dict | None = None  # what `fit_type_copurchase` chose and how it did
        self.tuned(setting, same_type)

    def tuned(self, setting: Neighbours, same_type: bool) -> TypeCoPurchase:
        self.setting, self.same_type = setting, same_type
        self.kinds.tuned(setting)
        if same_type:
            self.kinds.similar = (self.kinds.similar + sparse.diags(
                self.repeats / (self.kinds.bought + setting.shrink))).tocsr()
        return self

    def scores(self, basket: Sequence[Hashable]) -> np.ndarray:
        kinds = self.kinds.scores([self.types[p] for p in basket if p in self.types])
        if not len(kinds):  # no typed product was ever bought
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.where(self.kind_of >= 0, kinds[self.kind_of], 0.0)

    def __call__(self, basket: Sequence[Hashable], k: int, history: History | None = None) -> list:
        return top_k(self.ids, self.scores(basket), basket, k)  # ties: the more bought first


TYPE_GRID = [(Neighbours(alpha, shrink), same) for alpha in (0.0, 0.5, 1.0) for shrink in (0.0, 10.0)
             for same in (False, True)]


class EASE:
    """Item weights B = I - P / diag(P) with P = (XᵀX + λI)⁻¹ over the training baskets, zero diagonal. Only
    the `max_items` most-bought products take part (the dense inverse); the rest are left to co-purchase,
    semantics and popularity."""

    def __init__(self, baskets: Iterable[Sequence[Hashable]] | Purchases, lam: float = EASE_LAMBDA,
                 max_items: int = EASE_ITEMS):
        purchases = _as_purchases(baskets)
        self.ids = purchases.ids[:max_items]
        self.position = {p: i for i, p in enumerate(self.ids)}
        self.popularity = Popularity(purchases.items)
        if not self.ids:  # a store with no orders yet: nothing to weigh
            self.weights = self.diagonal = np.zeros((0, 0), dtype=np.float32)
            return
        x = purchases.matrix[:, :len(self.ids)]
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += lam
        # XᵀX + λI is symmetric positive definite: invert it through its Cholesky factor, in place (half
        # the work of a general inverse, and no second n × n copy).
        inverse, failed = lapack.spotrf(gram, lower=True, overwrite_a=True)
        if not failed:
            inverse, failed = lapack.spotri(inverse, lower=True, overwrite_c=True)
        if failed:
            raise np.linalg.LinAlgError(f"EASE: the Gram matrix is not positive definite ({failed})")
        upper = np.triu_indices_from(inverse, 1)
        inverse[upper] = inverse.T[upper]  # spotri fills the lower triangle only
        self.diagonal = np.diag(inverse).copy()  # P's: B[i, j] = B[j, i] P[i, i] / P[j, j] (neighbours.py)
        inverse /= -self.diagonal
        np.fill_diagonal(inverse, 0.0)
        self.weights = inverse

    def scores(self, basket: Sequence[Hashable]) -> np.ndarray:
        rows = [self.position[p] for p in basket if p in self.position]
        return self.weights[rows].sum(axis=0) if rows else np.zeros(len(self.ids), dtype=np.float32)

    def __call__(self, basket: Sequence[Hashable], k: int, history: History | None = None) -> list:
        scores = self.scores(basket)
        ranked = top_k(self.ids, scores, basket, k) if scores.any() else []
        return ranked + self.popularity(list(basket) + ranked, k - len(ranked))


class Semantic:
    """Products most like the basket's, by the best cosine similarity to any of its products."""

    def __init__(self, index: SemanticIndex):
        self.index = index

    def __call__(self, basket: Sequence[Hashable], k: int, history: History | None = None) -> list:
        return top_k(self.index.ids, self.index.similarities(basket), basket, k)


def bought_before(orders: Iterable[tuple[datetime, Sequence[Hashable]]], now: datetime) -> dict[Hashable, float]:
    """A customer's history as the Blend reads it: each product they bought in `orders` (time, products),
    weighted by recency (halved every HISTORY_HALF_LIFE_DAYS) and summed over their orders."""
    weights: Counter = Counter()
    for when, products in orders:
        decay = 0.5 ** (max((now - when).total_seconds(), 0.0) / 86400 / HISTORY_HALF_LIFE_DAYS)
        for product in set(products):
            weights[product] += decay
    return dict(weights)


class CustomerHistories:
    """Every customer's orders, to ask what one had bought before a moment (`before`): the history an order's
    customer brought to it, for choosing weights and for evaluation. `orders`: history.Basket (customer,
    created_at, products); a guest's (customer None) are nobody's history."""

    def __init__(self, orders: Iterable):
        self.orders: dict[Hashable, list[tuple[datetime, Sequence[Hashable]]]] = defaultdict(list)
        for order in orders:
            if order.customer is not None:
                self.orders[order.customer].append((order.created_at, order.products))
        for kept in self.orders.values():
            kept.sort(key=lambda order: order[0])

    def before(self, customer: Hashable | None, now: datetime) -> dict[Hashable, float]:
        kept = self.orders.get(customer, []) if customer is not None else []
        return bought_before(kept[:bisect_left(kept, now, key=lambda order: order[0])], now)


@dataclass(frozen=True)
class Weights:
    """How much each signal counts: EASE and co-purchase (each scaled to the basket's best), semantic
    similarity, semantic again for products co-purchase knows too little about, popularity, the customer's
    history (scaled to its best), and the complements learned from the store's orders (complements.py):
    with each product's best match in the basket, or with the basket as a whole (`whole_basket`)."""
    copurchase: float = 0.25
    semantic: float = 0.4
    cold_start: float = 0.5
    popularity: float = 0.0
    ease: float = 1.0
    history: float = 0.25
    complement: float = 0.0
    whole_basket: bool = False

    def as_array(self) -> np.ndarray:
        """Over `Blend.signals`' rows (the complements' weight falls on one of their two rows)."""
        whole = float(self.whole_basket)
        return np.array([self.ease, self.copurchase, self.semantic, self.cold_start, self.popularity, self.history,
                         (1 - whole) * self.complement, whole * self.complement], dtype=np.float32)


# The defaults serve stores with too few orders to choose their own: what `fit_blend` chose on Online Retail
# before the history signal, and the history weight it chose with it (docs/evaluation.md).
DEFAULT_WEIGHTS = Weights()
HISTORY_GRID = (0.0, 0.25, 0.5, 1.0)
# (weight, whole basket); 0.25 was never chosen on Online Retail's or the sample store's validation split
COMPLEMENT_GRID = ((0.0, False), (0.5, False), (1.0, False), (0.5, True), (1.0, True))
WEIGHT_GRID = [Weights(c, s, cold, pop, ease, history, *complement) for ease in (1.0, 0.0)
               for c in (0.0, 0.25, 0.5, 1.0) for s in (0.0, 0.05, 0.1, 0.2, 0.4) for cold in (0.0, 0.25, 0.5, 1.0)
               for pop in (0.0, 0.1) for history in HISTORY_GRID for complement in COMPLEMENT_GRID]
MIN_VALIDATION_CASES = 100
COLD_START_FLOOR = 0.15  # new products must get shown: the 0.10 goal, with room for a new period's noise


TEXT_ROWS = [2, 3, 6, 7]  # `Blend.signals`' rows read from product text (semantic and the complements)


class Blend:
    """The served retrieval, over the catalog's products (`ids`): EASE + co-purchase + semantic similarity
    (more of it for cold-start products) + popularity + the customer's history + the learned complements (where
    the store's orders trained them), by `weights`; a tiny popularity prior breaks ties."""

    def __init__(self, baskets: Iterable[Sequence[Hashable]] | Purchases, index: SemanticIndex,
                 weights: Weights = DEFAULT_WEIGHTS, complements: Complements | None = None):
        purchases = _as_purchases(baskets)
        self.index, self.ids, self.position, self.weights = index, index.ids, index.position, weights
        self.complements = complements
        self.copurchase, self.ease = CoPurchase(purchases), EASE(purchases)
        # Purchases' columns → catalog positions (products no longer in the catalog have none).
        inside = [(i, index.position[p]) for i, p in enumerate(purchases.ids) if p in index.position]
        self._from, self._to = (np.array(side, dtype=np.int64) for side in zip(*inside, strict=True)) if inside \
            else (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        self._ease_from = self._from[self._from < len(self.ease.ids)]
        self._ease_to = self._to[self._from < len(self.ease.ids)]
        self.cold = np.ones(len(self.ids), dtype=np.float32)
        self.cold[self._to] = self.copurchase.totals[self._from] < COLD_START_CO_PURCHASES
        bought = np.zeros(len(self.ids), dtype=np.float32)
        bought[self._to] = np.log1p(purchases.counts[self._from])
        self.popular = bought / max(float(bought.max(initial=0)), 1.0)
        self.validation: dict | None = None  # how the weights did on the validation split (`fit_blend`)
        self.tried: dict[Weights, tuple[int, float]] = {}  # every setting's validation (hits, NDCG gain) there
        self.head = None  # the learned ranker over its top products (ranking_head.py), where one is trained
        # The same blend fitted on the training period's oldest part (`fit_blend`), until the head takes it.
        self.trial: Blend | None = None

    def reweighted(self, weights: Weights) -> Blend:
        """The same fitted signals under other weights (no refit), without the ranking head (it learned the
        order of these weights)."""
        other = self.alone()
        other.weights = weights
        return other

    def signals(self, basket: Sequence[Hashable], history: History | None = None, *,
                needed: np.ndarray | None = None) -> np.ndarray:
        """The eight signals (rows) for every catalog product (columns), as `Weights.as_array` weighs them: EASE,
        co-purchase, semantic, semantic for new products, popularity, history, and the complements (with each
        product's best match, with the whole basket; zeros without a trained model). `history`: the customer's
        earlier purchases (`bought_before`), if known. The text rows (TEXT_ROWS) cost a basket product a
        catalog: where `needed` (a bool a row) leaves them out they are zeros (`text_signals` reads a few)."""
        ease, copurchase, bought = (np.zeros(len(self.ids), dtype=np.float32) for _ in range(3))
        ease[self._ease_to] = self.ease.scores(basket)[self._ease_from]
        copurchase[self._to] = self.copurchase.scores(basket)[self._from]
        for product, weight in (history or {}).items():
            if product in self.position:
                bought[self.position[product]] = weight
        needed = np.ones(len(Weights().as_array()), dtype=bool) if needed is None else needed
        text = self.text_signals(basket, similar=bool(needed[2] or needed[3]),
                                 readings=(bool(needed[6]), bool(needed[7])))
        return np.stack([ease / max(float(ease.max(initial=0)), 1e-9),
                         copurchase / max(float(copurchase.max(initial=0)), 1e-9),
                         text[0], text[1], self.popular, bought / max(float(bought.max(initial=0)), 1e-9),
                         text[2], text[3]])

    def text_signals(self, basket: Sequence[Hashable], columns: np.ndarray | None = None, *, similar: bool = True,
                     readings: tuple[bool, bool] = (True, True)) -> np.ndarray:
        """The signals read from product text (`signals`' TEXT_ROWS: semantic, semantic for new products, the
        complements' best match and whole basket) for the catalog positions `columns` (all by default); zeros
        for those left out (`similar`, `readings`) and for the complements without a trained model."""
        count = len(self.ids) if columns is None else len(columns)
        similarity = self.index.similarities(basket, columns) if similar else np.zeros(count, dtype=np.float32)
        matched = self.complements.matches(basket, columns, readings=readings) if self.complements is not None \
            else (np.zeros(count, dtype=np.float32),) * 2
        return np.stack([similarity, similarity * (self.cold if columns is None else self.cold[columns]), *matched])

    def weighed(self, basket: Sequence[Hashable], history: History | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The signals and the blend's score of every catalog product, without the head. A text signal the
        weights leave out is not computed (the head reads them for its pool alone)."""
        weights = self.weights.as_array()
        signals = self.signals(basket, history, needed=weights != 0)
        return signals, weights @ signals + 1e-3 * self.popular

    def scores(self, basket: Sequence[Hashable], history: History | None = None) -> np.ndarray:
        signals, scores = self.weighed(basket, history)
        return scores if self.head is None else self.head.rescored(self, basket, history, signals, scores)

    def alone(self) -> Blend:
        """The same blend without its ranking head."""
        other = copy.copy(self)
        other.head = None
        return other

    def origins(self, basket: Sequence[Hashable], products: Iterable[Hashable],
                history: History | None = None) -> dict[Hashable, str]:
        """What put each product on the list: the signal that adds most to its score (EASE and co-purchase are
        both shoppers' baskets, so both read `co-purchase`; `history` is the customer's own)."""
        weighted = self.weights.as_array()[:, None] * self.weighed(basket, history)[0]
        names = ("co-purchase", "co-purchase", "semantic", "semantic", "popular", "history", "complement",
                 "complement")
        return {p: names[int(weighted[:, self.position[p]].argmax())] if p in self.position else "popular"
                for p in products}

    def __call__(self, basket: Sequence[Hashable], k: int, history: History | None = None) -> list:
        return top_k(self.ids, self.scores(basket, history), basket, k)


def validation_split(baskets: Sequence[Sequence[Hashable]], validation: float = 0.15, cases: int = 2000,
                     seed: int = 0) -> tuple[int, list[tuple[int, Hashable]]]:
    """The validation split of the time-ordered training `baskets` (each of distinct products), as the blend and
    the tuned baselines use it: fit on baskets[:cut], the oldest (1 - validation); up to `cases` leave-one-out
    cases (basket index, hidden product) from the rest, drawn with `seed`."""
    cut = int(len(baskets) * (1 - validation))
    rng = random.Random(seed)
    held_out = [(i, rng.choice(baskets[i])) for i in range(cut, len(baskets)) if len(baskets[i]) >= 2]
    return cut, rng.sample(held_out, min(cases, len(held_out)))


def fit_blend(baskets: Sequence[Sequence[Hashable]], index: SemanticIndex, *,
              history: Callable[[int], History] | None = None, validation: float = 0.15, cases: int = 2000,
              seed: int = 0, progress: Callable[[Iterable], Iterable] = lambda it: it) -> Blend:
    """The Blend with the weights that do best on this store's own newest orders: fitted on the oldest
    (1 - validation) of the time-ordered `baskets`, every setting in WEIGHT_GRID scores leave-one-out cases
    from the rest, each with its customer's earlier purchases (`history(i)` of basket i; none without it). The
    best HR@10 (then NDCG@10) among the settings that find at least COLD_START_FLOOR of the cold-start
    targets wins and is refitted on all baskets. A store with fewer than MIN_VALIDATION_CASES cases gets
    DEFAULT_WEIGHTS. The complements (complements.py) are learned on the same oldest part first, and again
    on all baskets. `progress` wraps the loop over cases and the complements' batches (progress bars)."""
    baskets = [list(dict.fromkeys(b)) for b in baskets]
    cut, held_out = validation_split(baskets, validation, cases, seed)
    if len(held_out) < MIN_VALIDATION_CASES:
        return Blend(baskets, index)
    learned = fit_complements(baskets[:cut], index, seed=seed, progress=progress)
    trial = Blend(baskets[:cut], index, complements=learned)
    # Without a trained model every complement setting scores as its weight 0 does: leave them out.
    settings = [w for w in WEIGHT_GRID if trial.complements is not None or not w.complement]
    grid = np.stack([w.as_array() for w in settings])
    gains, hits, cold_hits = np.zeros(len(settings)), np.zeros(len(settings)), np.zeros(len(settings))
    cold_cases = known_customers = 0
    for i, target in progress(held_out):
        context = [p for p in baskets[i] if p != target]
        if target not in trial.position:
            continue
        bought = history(i) if history else {}
        known_customers += bool(bought)
        signals = trial.signals(context, bought)
        # Only the best of each signal can reach a top 10: score those few hundred, not the catalog.
        pool = np.unique(np.concatenate([np.argpartition(-row, 100)[:100] if len(row) > 100 else np.arange(len(row))
                                         for row in signals] + [[trial.position[target]]]))
        pool = pool[~np.isin(pool, [trial.position[p] for p in context if p in trial.position])]
        target_at = np.flatnonzero(pool == trial.position[target])
        scores = grid @ signals[:, pool] + 1e-3 * trial.popular[pool]
        rank = (scores > scores[:, target_at]).sum(axis=1)
        hits += rank < 10
        gains += np.where(rank < 10, 1 / np.log2(rank + 2), 0.0)
        if trial.cold[trial.position[target]]:
            cold_cases += 1
            cold_hits += rank < 10
    default = settings.index(DEFAULT_WEIGHTS)  # a tie is no evidence to move from the defaults
    eligible = [i for i in range(len(settings)) if cold_hits[i] >= COLD_START_FLOOR * cold_cases]
    best = max(eligible or range(len(settings)), key=lambda i: (hits[i], round(gains[i], 6), i == default))
    blend = Blend(baskets, index, settings[best],
                  fit_complements(baskets, index, seed=seed, progress=progress) if learned is not None else None)
    blend.trial = trial.reweighted(blend.weights)  # what the ranking head learns over (ranking_head.py)
    blend.tried = {setting: (int(hits[i]), round(float(gains[i]), 6)) for i, setting in enumerate(settings)}
    blend.validation = {"cases": len(held_out), "hr@10": round(hits[best] / len(held_out), 4),
                        "cold_start_cases": cold_cases, "cases_with_history": known_customers,
                        "cold_start_hr@10": round(cold_hits[best] / cold_cases, 4) if cold_cases else None}
    return blend


def _ranks(scores: sparse.csr_matrix, context: sparse.csr_matrix, targets: np.ndarray) -> np.ndarray:
    """Where each case's target (a column; -1: unknown, never found) lands in ItemKNN's list, from the cases'
    scores (rows): positive scores first, then the rest by popularity (columns are ordered most bought first,
    which also breaks ties), the context (nonzero in `context`) left out."""
    scores = sparse.csr_matrix(scores)
    scores = (scores - scores.multiply(context > 0)).tocsr()
    scores.eliminate_zeros()
    rows = np.repeat(np.arange(scores.shape[0]), np.diff(scores.indptr))
    target = np.maximum(targets, 0)
    own = np.asarray(scores[np.arange(scores.shape[0]), target]).ravel()
    before = scores.indices < target[rows]
    ahead = np.bincount(rows[(scores.data > own[rows]) | ((scores.data == own[rows]) & before)],
                        minlength=scores.shape[0])
    # A target nobody scored comes after every scored product, at its popularity among the unscored.
    context_rows = np.repeat(np.arange(context.shape[0]), np.diff(context.indptr))
    unscored_before = target - np.bincount(rows[before], minlength=len(target)) - \
        np.bincount(context_rows[context.indices < target[context_rows]], minlength=len(target))
    ranks = np.where(own > 0, ahead, ahead + unscored_before)
    return np.where(targets >= 0, ranks, np.iinfo(np.int64).max)


def _scaled(matrix: sparse.csr_matrix) -> sparse.csr_matrix:
    """Each row divided by its largest value."""
    best = matrix.max(axis=1).toarray().ravel()
    return sparse.diags(1 / np.maximum(best, 1e-9)) @ matrix


def fit_item_knn(baskets: Sequence[Sequence[Hashable]], *, history: Callable[[int], History] | None = None,
                 validation: float = 0.15, cases: int = 2000, seed: int = 0,
                 grid: Sequence[Neighbours] = tuple(NEIGHBOUR_GRID),
                 progress: Callable[[Iterable], Iterable] = lambda it: it) -> ItemKNN:
    """Item-kNN tuned as `fit_blend` tunes the blend, on the same validation split of the time-ordered training
    `baskets`: fitted on the oldest part, every `grid` setting scores the same leave-one-out cases of the newest
    part; the best HR@10 (then NDCG@10; a tie keeps cosine) wins. Then, with the customers' earlier purchases
    (`history(i)` of basket i), the history weight: the best of HISTORY_GRID on the same cases (a tie keeps
    none). Refitted on all baskets. Too few validation cases: cosine, no history. `progress` wraps the loop
    over settings."""
    baskets = [list(dict.fromkeys(b)) for b in baskets]
    cut, held_out = validation_split(baskets, validation, cases, seed)
    if len(held_out) < MIN_VALIDATION_CASES:
        return ItemKNN(baskets)
    trial = ItemKNN(baskets[:cut])
    targets = np.array([trial.position.get(target, -1) for _, target in held_out], dtype=np.int64)
    contexts = sparse.lil_matrix((len(held_out), len(trial.ids)), dtype=np.float32)
    bought = sparse.lil_matrix((len(held_out), len(trial.ids)), dtype=np.float32)
    for row, (i, target) in enumerate(held_out):
        for product in baskets[i]:
            if product != target and product in trial.position:
                contexts[row, trial.position[product]] = 1
        for product, weight in (history(i) if history else {}).items():
            if product in trial.position:
                bought[row, trial.position[product]] = weight
    contexts, bought = contexts.tocsr(), _scaled(bought.tocsr())

    def judged(ranks: np.ndarray) -> tuple[int, float]:
        found = ranks < 10
        return int(found.sum()), round(float(np.where(found, 1 / np.log2(np.minimum(ranks, 10) + 2), 0).sum()), 6)

    tried = {setting: judged(_ranks(contexts @ trial.tuned(setting).similar, contexts, targets))
             for setting in progress(list(dict.fromkeys([COSINE, *grid])))}
    best = max(tried, key=lambda s: (*tried[s], s == COSINE))
    basket_scores = _scaled(contexts @ trial.tuned(best).similar)
    weighed = {weight: judged(_ranks(basket_scores + weight * bought, contexts, targets))
               for weight in (HISTORY_GRID if bought.nnz else (0.0,))}
    weight = max(weighed, key=lambda w: (*weighed[w], w == 0))
    knn = ItemKNN(baskets, best)
    knn.validation = {"cases": len(held_out), "setting": vars(best), "history_weight": weight,
                      "hr@10": round(tried[best][0] / len(held_out), 4),
                      "cosine_hr@10": round(tried[COSINE][0] / len(held_out), 4),
                      "hr@10_with_history": round(weighed[weight][0] / len(held_out), 4),
                      "cases_with_history": int(np.diff(bought.indptr).astype(bool).sum())}
    knn.tried = tried
    return knn


def fit_type_copurchase(baskets: Sequence[Sequence[Hashable]], types: Mapping[Hashable, str], *,
                        validation: float = 0.15, cases: int = 2000, seed: int = 0) -> TypeCoPurchase:
    """Type-level co-purchase tuned on the blend's validation split of the time-ordered training `baskets`: each
    TYPE_GRID setting scores the validation cases whose hidden product is cold start (fewer than
    COLD_START_CO_PURCHASES co-purchases in the fitting part; all cases if none is), the best HR@10 (then
    NDCG@10; a tie keeps cosine, no same type) wins and is refitted on all baskets."""
    baskets = [list(dict.fromkeys(b)) for b in baskets]
    cut, held_out = validation_split(baskets, validation, cases, seed)
    if len(held_out) < MIN_VALIDATION_CASES:
        return TypeCoPurchase(baskets, types)
    trial, fitted = TypeCoPurchase(baskets[:cut], types), CoPurchase(baskets[:cut])
    cold = [(i, t) for i, t in held_out if fitted.co_purchases(t) < COLD_START_CO_PURCHASES] or held_out
    tried = {}
    for setting, same_type in TYPE_GRID:
        trial.tuned(setting, same_type)
        ranked = [(trial([p for p in baskets[i] if p != target], 10), target) for i, target in cold]
        found = [shown.index(target) for shown, target in ranked if target in shown]
        tried[setting, same_type] = (len(found), round(sum(1 / np.log2(rank + 2) for rank in found), 6))
    best = max(tried, key=lambda s: (*tried[s], s == TYPE_GRID[0]))
    chosen = TypeCoPurchase(baskets, types, *best)
    chosen.validation = {"cases": len(cold), "cold_start": cold is not held_out, "setting": vars(best[0]),
                         "same_type": best[1], "hr@10": round(tried[best][0] / len(cold), 4)}
    return chosen


def top_k(ids: list, scores: np.ndarray, exclude: Iterable[Hashable], k: int) -> list:
    """The k best-scored ids outside `exclude`, best first (ties keep catalog order)."""
    excluded = set(exclude)
    want = min(k + len(excluded), len(ids))
    if want <= 0:
        return []
    best = np.argpartition(-scores, want - 1)[:want] if want < len(ids) else np.arange(len(ids))
    best = best[np.lexsort((best, -scores[best]))]
    return [ids[i] for i in best if ids[i] not in excluded][:k]
