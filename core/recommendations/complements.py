"""What goes with what, read from product text and learned from the store's own orders: the part of retrieval
that knows a product nobody has bought yet.

Co-purchase and EASE know only products with orders; plain text similarity finds more of the same (another
sleeping bag for a sleeping bag). `Complements` is a small two-tower model over the sentence encoder's vectors:
one linear map reads the basket's products as a shopper's need, the other reads a candidate as what meets it,
and their cosine scores the pair. Trained on every pair of products bought together in the store's orders
(the other pairs of a batch of BATCH are the negatives), it learns which kinds go with which, and scores a new
product by its text alone: a new sleeping bag gets the store's pads and stoves once its orders say so. Both
maps start at the identity, so before training it is text similarity, and it moves only as far as the
orders take it (Online Retail buys similar designs together; the sample store buys kinds that complete each
other). The constants were chosen on the validation split of the training period of both (docs/evaluation.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from core.embeddings import SemanticIndex

log = logging.getLogger(__name__)

STEPS = 600  # batches of BATCH pairs, about 3 × 200,000: on the validation splits, HR@10 of text similarity →
# the complements 0.151 → 0.160 on Online Retail (best match), 0.070 → 0.627 on the sample store (whole basket);
# 2 × 100,000 pairs left the sample store at 0.430
BATCH = 1024  # pairs a step, or four for each product a small catalog has bought (the rest would repeat)
LEARNING_RATE = 3e-4  # 1e-3 moves further from text similarity and lost on Online Retail (0.145 against 0.160)
TEMPERATURE = 0.05
MIN_BASKETS = 100  # fewer multi-product orders than this teach nothing a new product can use
SAY_EVERY_SECONDS = 10.0  # a progress line this often: no stage of a job is silent for long
MAX_SECONDS = 60.0  # a huge store's training stops here (Online Retail's 600 steps take about 20 s on 2 cores)


class Complements:
    """The trained model: the asking map (`weight`, `bias`: a basket product's text vector → its need) and each
    catalog product's `offered` vector (unit length, rows in `index.ids` order). Only the few basket products
    are mapped per request, so a store keeps one extra vector a product, not two."""

    def __init__(self, index: SemanticIndex, weight: np.ndarray, bias: np.ndarray, offered: np.ndarray,
                 trained: dict):
        self.index, self.weight, self.bias, self.offered, self.trained = index, weight, bias, offered, trained

    def matches(self, basket: Sequence, columns: np.ndarray | None = None, *,
                readings: tuple[bool, bool] = (True, True)) -> tuple[np.ndarray, np.ndarray]:
        """The fit of each catalog product (or of the catalog positions `columns`) with the basket: with its
        best-matched product (a basket mixes needs), and with the basket as a whole (its products' mean need);
        zeros when no product of it is known, and for a reading `readings` (best, whole) leaves out: the best
        match over a large catalog costs a product of the basket a catalog."""
        offered = self.offered if columns is None else self.offered[columns]
        best, whole = (np.zeros(len(offered), dtype=np.float32) for _ in range(2))
        rows = [self.index.position[p] for p in basket if p in self.index.position]
        if not rows:
            return best, whole
        asking = self.index.vectors[rows] @ self.weight.T + self.bias
        asking /= np.maximum(np.linalg.norm(asking, axis=1, keepdims=True), 1e-9)
        if readings[0]:
            best = (asking @ offered.T).max(axis=0)
        if readings[1]:
            need = asking.mean(axis=0)
            whole = offered @ (need / max(float(np.linalg.norm(need)), 1e-9))
        return best, whole


def _pairs(baskets: list[np.ndarray], count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` (a, b) pairs of products bought together: a basket drawn by its size, then two of its products."""
    sizes = np.array([len(b) for b in baskets], dtype=np.int64)
    chosen = rng.choice(len(baskets), count, p=sizes / sizes.sum())
    starts = np.concatenate([[0], np.cumsum(sizes[:-1])])
    flat = np.concatenate(baskets)
    first = rng.integers(0, sizes[chosen])
    second = (first + rng.integers(1, sizes[chosen])) % sizes[chosen]
    return np.stack([flat[starts[chosen] + first], flat[starts[chosen] + second]], axis=1)


def fit_complements(baskets: Sequence[Sequence], index: SemanticIndex, *, seed: int = 0,
                    progress: Callable[[Iterable], Iterable] = lambda batches: batches) -> Complements | None:
    """The model trained on the products bought together in `baskets` (catalog products only); None for a store
    with fewer than MIN_BASKETS orders of two catalog products or more. `progress` wraps the batches (a bar)."""
    import torch  # here, not at the top: the web process imports retrieval long before it fits a model
    # At most 50 products a basket, as recommenders.py's MAX_BASKET reads one (that module imports this one).
    rows = [np.array([index.position[p] for p in dict.fromkeys(b) if p in index.position][:50], dtype=np.int64)
            for b in baskets]
    rows = [r for r in rows if len(r) >= 2]
    if len(rows) < MIN_BASKETS:
        return None
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    vectors = torch.from_numpy(index.vectors)
    towers = [torch.nn.Linear(vectors.shape[1], vectors.shape[1]) for _ in range(2)]
    for tower in towers:
        torch.nn.init.eye_(tower.weight)
        torch.nn.init.zeros_(tower.bias)
    optimiser = torch.optim.AdamW([w for t in towers for w in t.parameters()], lr=LEARNING_RATE, weight_decay=1e-4)
    batch_size = min(BATCH, 4 * len(np.unique(np.concatenate(rows))))
    pairs = torch.from_numpy(_pairs(rows, STEPS * batch_size, rng))
    started, steps, loss = time.monotonic(), 0, torch.tensor(float("nan"))
    said = started
    log.info("complements: learning what goes with what from %d orders (%d steps)", len(rows), STEPS)
    for batch in progress(pairs[torch.randperm(len(pairs), generator=generator)].split(batch_size)):
        if time.monotonic() - started > MAX_SECONDS:
            break
        asking, offered = (torch.nn.functional.normalize(tower(vectors[batch[:, side]]), dim=-1)
                           for side, tower in enumerate(towers))
        logits = asking @ offered.T / TEMPERATURE
        # A product drawn twice in a batch is no negative of itself.
        repeated = (batch[:, 1][None, :] == batch[:, 1][:, None]) & ~torch.eye(len(batch), dtype=torch.bool)
        loss = torch.nn.functional.cross_entropy(logits.masked_fill(repeated, -1e9), torch.arange(len(batch)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        steps += 1
        if time.monotonic() - said > SAY_EVERY_SECONDS:
            said = time.monotonic()
            log.info("complements: %d of %d steps, loss %.3f", steps, STEPS, float(loss.detach()))
    asking, offering = towers
    with torch.no_grad():
        offered = torch.nn.functional.normalize(offering(vectors), dim=-1).numpy()
        weight, bias = asking.weight.numpy().copy(), asking.bias.numpy().copy()
    return Complements(index, weight, bias, offered, {"baskets": len(rows), "steps": steps,
                                                      "loss": round(float(loss.detach()), 4),
                                                      "seconds": round(time.monotonic() - started, 1)})
