"""Offline evaluation: hide one product of each test basket, ask a recommender for K from the rest, rank
against the whole catalog. Time split, HitRate/Recall/NDCG@K, coverage, slices, bootstrap intervals.

Works on a shop's synced orders or on files (CSV/Parquet) such as the UCI Online Retail set."""

from __future__ import annotations

import csv
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

KS = (4, 10)
ORDER_COLUMNS = ("order_id", "product_id", "created_at", "quantity", "title")


@dataclass
class Basket:
    order_id: str
    created_at: datetime
    products: list[str] = field(default_factory=list)


# --- Loading ------------------------------------------------------------------------------------------

def _rows(path: Path) -> Iterable[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=65536):
            yield from batch.to_pylist()
    else:
        with path.open(newline="", encoding="utf-8") as data:
            yield from csv.DictReader(data)


def load_order_file(path: Path, columns: dict[str, str], *, skip_orders: str | None = None,
                    skip_products: set[str] = frozenset()) -> tuple[list[Basket], dict[str, str]]:
    """Baskets (oldest first) and product titles (each product's most common one, when a title column is
    mapped). Rows with quantity ≤ 0, orders whose id starts with `skip_orders` (cancellations) and listed
    non-product codes are dropped."""
    name = {key: columns.get(key, key) for key in ORDER_COLUMNS}
    baskets: dict[str, Basket] = {}
    titles: dict[str, Counter] = defaultdict(Counter)
    for row in _rows(path):
        order, product = str(row[name["order_id"]]), str(row[name["product_id"]]).strip()
        quantity = row.get(name["quantity"])
        if (quantity is not None and float(quantity) <= 0) or product in skip_products or \
                (skip_orders and order.startswith(skip_orders)):
            continue
        created = row[name["created_at"]]
        created = created if isinstance(created, datetime) else datetime.fromisoformat(str(created))
        basket = baskets.setdefault(order, Basket(order, created))
        if product not in basket.products:
            basket.products.append(product)
        if row.get(name["title"]):
            titles[product][str(row[name["title"]]).strip()] += 1
    ordered = sorted(baskets.values(), key=lambda b: (b.created_at, b.order_id))
    return ordered, {p: counts.most_common(1)[0][0] for p, counts in titles.items()}


def split_by_time(baskets: list[Basket], test_fraction: float) -> tuple[list[Basket], list[Basket]]:
    cut = int(len(baskets) * (1 - test_fraction))
    return baskets[:cut], baskets[cut:]


# --- Recommenders ----------------------------------------------------------------------------------------

Recommender = Callable[[list[str], int], list[str]]


class Popularity:
    """The most-bought products: what any store can show without knowing the basket."""

    def __init__(self, train: list[Basket]):
        counts = Counter(p for b in train for p in b.products)
        self.ranking = [p for p, _ in counts.most_common()]

    def __call__(self, basket: list[str], k: int) -> list[str]:
        seen = set(basket)
        return [p for p in self.ranking if p not in seen][:k]


class CoPurchase:
    """Item-to-item co-occurrence ("customers also bought"), scored by cosine, popularity as the tie-breaker
    and filler."""

    def __init__(self, train: list[Basket], max_basket: int = 50):
        self.items: Counter = Counter()
        self.pairs: dict[str, Counter] = defaultdict(Counter)
        for basket in train:
            products = basket.products[:max_basket]  # a 500-line wholesale order says little about pairs
            self.items.update(products)
            for a in products:
                row = self.pairs[a]
                for b in products:
                    if a != b:
                        row[b] += 1
        self.popularity = Popularity(train)

    def co_purchases(self, product: str) -> int:
        return sum(self.pairs[product].values())

    def __call__(self, basket: list[str], k: int) -> list[str]:
        scores: Counter = Counter()
        for a in basket:
            for b, together in self.pairs.get(a, {}).items():
                scores[b] += together / math.sqrt(self.items[a] * self.items[b])
        seen = set(basket)
        ranked = [p for p, _ in scores.most_common() if p not in seen][:k]
        return ranked + [p for p in self.popularity(basket + ranked, k) if p not in ranked][:k - len(ranked)]


# --- Metrics -----------------------------------------------------------------------------------------------

@dataclass
class Case:
    context: list[str]
    target: str


def leave_one_out(test: list[Basket], rng: random.Random, limit: int | None) -> list[Case]:
    cases = [Case([p for p in b.products if p != target], target)
             for b in test if len(b.products) >= 2 for target in [rng.choice(b.products)]]
    return rng.sample(cases, limit) if limit and len(cases) > limit else cases


def bootstrap(values: list[float], rng: random.Random, rounds: int = 1000) -> tuple[float, float]:
    if not values:
        return (0.0, 0.0)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(rounds))
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


def score(recommender: Recommender, cases: list[Case], catalog: set[str], rng: random.Random,
          slices: dict[str, Callable[[Case], bool]]) -> dict:
    hits = {k: [] for k in KS}
    ndcg = {k: [] for k in KS}
    shown, invented, duplicates, latency = set(), 0, 0, []
    per_slice: dict[str, list[float]] = {name: [] for name in slices}
    for case in cases:
        started = time.perf_counter()
        ranked = recommender(case.context, max(KS))
        latency.append(time.perf_counter() - started)
        invented += sum(p not in catalog for p in ranked)
        duplicates += len(ranked) - len(set(ranked))
        shown.update(ranked)
        for k in KS:
            top = ranked[:k]
            hits[k].append(float(case.target in top))
            ndcg[k].append(1 / math.log2(top.index(case.target) + 2) if case.target in top else 0.0)
        for name, belongs in slices.items():
            if belongs(case):
                per_slice[name].append(float(case.target in ranked[:10]))
    shown_total = max(len(cases) * max(KS), 1)
    report = {"cases": len(cases)}
    for k in KS:
        mean = sum(hits[k]) / max(len(hits[k]), 1)
        report[f"hr@{k}"] = round(mean, 4)
        report[f"hr@{k}_ci"] = [round(x, 4) for x in bootstrap(hits[k], rng)]
        report[f"recall@{k}"] = report[f"hr@{k}"]  # one hidden product a case: recall equals hit rate
        report[f"ndcg@{k}"] = round(sum(ndcg[k]) / max(len(ndcg[k]), 1), 4)
    report["coverage"] = round(len(shown & catalog) / max(len(catalog), 1), 4)
    report["out_of_catalog_rate"] = round(invented / shown_total, 4)
    report["duplicate_rate"] = round(duplicates / shown_total, 4)
    report["latency_ms_p50"] = round(sorted(latency)[len(latency) // 2] * 1000, 3) if latency else None
    for name, values in per_slice.items():
        report[f"{name}_hr@10"] = round(sum(values) / len(values), 4) if values else None
        report[f"{name}_cases"] = len(values)
    return report


def evaluate(baskets: list[Basket], *, test_fraction: float = 0.2, cases_limit: int | None = 5000,
             seed: int = 0) -> dict:
    """Every recommender on the same time split and the same hidden products."""
    rng = random.Random(seed)
    train, test = split_by_time(baskets, test_fraction)
    catalog = {p for b in baskets for p in b.products}
    copurchase = CoPurchase(train)
    recommenders: dict[str, Recommender] = {"popularity": copurchase.popularity, "co-purchase": copurchase}
    cases = leave_one_out(test, rng, cases_limit)
    popular = {p for p, _ in copurchase.items.most_common(max(len(copurchase.items) // 5, 1))}
    slices = {
        "long_tail": lambda c: c.target not in popular,
        "cold_start": lambda c: copurchase.co_purchases(c.target) < 10,
    }
    return {
        "split": {"train_orders": len(train), "test_orders": len(test), "test_fraction": test_fraction,
                  "split_at": test[0].created_at.isoformat() if test else None, "catalog": len(catalog),
                  "seed": seed},
        "recommenders": {name: score(r, cases, catalog, random.Random(seed), slices)
                         for name, r in recommenders.items()},
    }


def markdown(report: dict) -> str:
    lines = ["| recommender | HR@4 | HR@10 (95% CI) | NDCG@10 | coverage | long-tail HR@10 | cold-start HR@10 "
             "| out-of-catalog | p50 ms |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["recommenders"].items():
        lines.append(f"| {name} | {r['hr@4']:.3f} | {r['hr@10']:.3f} ({r['hr@10_ci'][0]:.3f}–{r['hr@10_ci'][1]:.3f}) "
                     f"| {r['ndcg@10']:.3f} | {r['coverage']:.3f} | {r['long_tail_hr@10'] or 0:.3f} "
                     f"| {r['cold_start_hr@10'] or 0:.3f} | {r['out_of_catalog_rate']:.3f} | {r['latency_ms_p50']} |")
    return "\n".join(lines)
