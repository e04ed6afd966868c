"""The retrieval recommenders, shared by training (candidates), serving (candidates and fallback) and
evaluation (the baselines), so the three measure and serve the same thing.

- Popularity: the most-bought products.
- CoPurchase: item-to-item co-occurrence ("customers also bought"), cosine-normalised.
- Semantic: sentence-embedding similarity of product text; knows products nobody has bought together yet.
- Hybrid: co-purchase plus semantic similarity, with more say for semantics on products that have too
  little co-purchase history to be judged by it (cold start). The fine-tuned model re-ranks its top
  candidates (core/recommendations.py `rerank`).

A recommender is called with a basket (product ids) and K, and returns up to K other product ids, best first.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence

import numpy as np

from .embeddings import SemanticIndex, catalog_index

COLD_START_CO_PURCHASES = 10  # fewer training co-purchases than this and co-purchase cannot judge a product
SEMANTIC_WEIGHT = 0.3  # both chosen on a validation split carved from the training orders (docs/evaluation.md)
COLD_START_WEIGHT = 0.5

Recommender = Callable[[Sequence[Hashable], int], list]


class Popularity:
    """The most-bought products: what any store can show without knowing the basket."""

    def __init__(self, counts: Counter):
        self.ranking = [p for p, _ in counts.most_common()]

    def __call__(self, basket: Sequence[Hashable], k: int) -> list:
        seen = set(basket)
        return [p for p in self.ranking if p not in seen][:k]


class CoPurchase:
    """Item co-occurrence over training baskets: cosine scores for ranking, lift for filtering examples."""

    def __init__(self, baskets: Iterable[Sequence[Hashable]], max_basket: int = 50):
        self.items: Counter = Counter()
        self.pairs: dict[Hashable, Counter] = defaultdict(Counter)
        self.n = 0
        for basket in baskets:
            products = list(dict.fromkeys(basket))[:max_basket]  # a 500-line wholesale order says little of pairs
            self.n += 1
            self.items.update(products)
            for a in products:
                row = self.pairs[a]
                for b in products:
                    if a != b:
                        row[b] += 1
        self.popularity = Popularity(self.items)

    def together(self, a: Hashable, b: Hashable) -> int:
        return self.pairs[a][b] if a in self.pairs else 0

    def lift(self, a: Hashable, b: Hashable) -> float:
        together = self.together(a, b)
        return together * self.n / (self.items[a] * self.items[b]) if together else 0.0

    def co_purchases(self, product: Hashable) -> int:
        return sum(self.pairs[product].values()) if product in self.pairs else 0

    def scores(self, basket: Sequence[Hashable]) -> Counter:
        scores: Counter = Counter()
        for a in basket:
            for b, together in self.pairs.get(a, {}).items():
                scores[b] += together / math.sqrt(self.items[a] * self.items[b])
        return scores

    def __call__(self, basket: Sequence[Hashable], k: int) -> list:
        seen = set(basket)
        ranked = [p for p, _ in self.scores(basket).most_common() if p not in seen][:k]
        return ranked + [p for p in self.popularity(list(basket) + ranked, k - len(ranked))]


class EASE:
    """Steck's closed-form item model ("Embarrassingly Shallow Autoencoders", WWW 2019): item weights
    B = I - P / diag(P) with P = (XᵀX + λI)⁻¹ over the training baskets, zero diagonal. The dense inverse is
    O(n³) in time and n² in memory, so only the `max_items` most-bought items take part (they carry nearly all
    co-purchase signal); the rest are reached through popularity. `lam` is Steck's suggested λ≈50, untuned."""

    def __init__(self, baskets: Iterable[Sequence[Hashable]], lam: float = 50.0, max_items: int = 8000):
        baskets = [list(dict.fromkeys(b)) for b in baskets]
        counts = Counter(p for b in baskets for p in b)
        self.ids = [p for p, _ in counts.most_common(max_items)]
        self.position = {p: i for i, p in enumerate(self.ids)}
        rows = [[self.position[p] for p in b if p in self.position] for b in baskets]
        gram = np.zeros((len(self.ids), len(self.ids)), dtype=np.float64)
        for row in rows:
            if row:
                gram[np.ix_(row, row)] += 1.0
        gram[np.diag_indices_from(gram)] += lam
        inverse = np.linalg.inv(gram)
        self.weights = (-inverse / np.diag(inverse)).astype(np.float32)
        np.fill_diagonal(self.weights, 0.0)
        self.popularity = Popularity(counts)

    def scores(self, basket: Sequence[Hashable]) -> np.ndarray:
        rows = [self.position[p] for p in basket if p in self.position]
        return self.weights[rows].sum(axis=0) if rows else np.zeros(len(self.ids), dtype=np.float32)

    def __call__(self, basket: Sequence[Hashable], k: int) -> list:
        scores = self.scores(basket)
        ranked = top_k(self.ids, scores, basket, k) if scores.any() else []
        return ranked + self.popularity(list(basket) + ranked, k - len(ranked))


class Semantic:
    """Products most like the basket's, by the best cosine similarity to any of its products."""

    def __init__(self, index: SemanticIndex):
        self.index = index

    def __call__(self, basket: Sequence[Hashable], k: int) -> list:
        return top_k(self.index.ids, self.index.similarities(basket), basket, k)


class Hybrid:
    """Co-purchase (scaled to the basket's best) plus semantic similarity, the latter weighted up on
    products co-purchase knows too little about; popularity breaks ties."""

    def __init__(self, copurchase: CoPurchase, index: SemanticIndex, *, semantic_weight: float = SEMANTIC_WEIGHT,
                 cold_start_weight: float = COLD_START_WEIGHT):
        self.copurchase, self.index = copurchase, index
        self.ids = index.ids
        self.position = index.position
        self.semantic_weight = semantic_weight + cold_start_weight * np.array(
            [copurchase.co_purchases(p) < COLD_START_CO_PURCHASES for p in self.ids], dtype=np.float32)
        counts = np.array([copurchase.items[p] for p in self.ids], dtype=np.float32)
        self.prior = 1e-3 * np.log1p(counts) / max(float(np.log1p(counts.max(initial=0))), 1.0)

    def scores(self, basket: Sequence[Hashable]) -> np.ndarray:
        bought = np.zeros(len(self.ids), dtype=np.float32)
        for product, score in self.copurchase.scores(basket).items():
            if product in self.position:
                bought[self.position[product]] = score
        if bought.max(initial=0) > 0:
            bought /= bought.max()
        return bought + self.semantic_weight * self.index.similarities(basket) + self.prior

    def __call__(self, basket: Sequence[Hashable], k: int) -> list:
        return top_k(self.ids, self.scores(basket), basket, k)


def serving_retrieval(copurchase: CoPurchase, catalog: dict) -> Hybrid:
    """The recommender the storefront serves with (and so the one training's candidates and the deploy gate
    use): the hybrid of `copurchase` and the catalog's text embeddings. `catalog`: Items by product id."""
    return Hybrid(copurchase, catalog_index(catalog))


def top_k(ids: list, scores: np.ndarray, exclude: Iterable[Hashable], k: int) -> list:
    """The k best-scored ids outside `exclude`, best first (ties keep catalog order)."""
    excluded = set(exclude)
    best = np.argsort(-scores, kind="stable")[:k + len(excluded)]
    return [ids[i] for i in best if ids[i] not in excluded][:k]


def normalise(title: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", title.casefold()).split())


class TitleMatcher:
    """A name the model wrote → the catalog product it means: exact title, then normalised fuzzy match, then
    the closest embedding. None when nothing is close enough: that name was invented."""

    def __init__(self, titles: dict[Hashable, str], index: SemanticIndex | None = None, *, fuzzy: float = 0.9,
                 semantic: float = 0.85):
        self.titles, self.index, self.fuzzy, self.semantic = titles, index, fuzzy, semantic
        self.by_name = {normalise(t): p for p, t in titles.items()}

    def __call__(self, name: str, among: Sequence[Hashable] | None = None) -> Hashable | None:
        names = self.by_name if among is None else {normalise(self.titles[p]): p for p in among if p in self.titles}
        key = normalise(name)
        if key in names:
            return names[key]
        close = difflib.get_close_matches(key, names, n=1, cutoff=self.fuzzy)
        if close:
            return names[close[0]]
        if self.index is not None and key:
            return self.index.closest(name, list(names.values()), threshold=self.semantic)
        return None
