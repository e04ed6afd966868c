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

from core.embeddings import SemanticIndex, catalog_index
from core.llm.model_hosts import Ranker, rank_with_gguf
from core.llm.prompts import PROMPT_CART
from core.recommendations.history import Basket, Item, split_by_time
from core.recommendations.neighbours import ServedFromLists
from core.recommendations.ranking_head import fit_ranking_head
from core.recommendations.recommenders import (
    COLD_START_CO_PURCHASES,
    EASE,
    HISTORY_GRID,
    CoPurchase,
    CustomerHistories,
    History,
    Purchases,
    Recommender,
    Semantic,
    Weights,
    fit_blend,
    fit_item_knn,
    fit_type_copurchase,
)
from core.recommendations.serving import Shelf, one_of_a_kind, rerank

KS = (4, 10)
ORDER_COLUMNS = ("order_id", "product_id", "created_at", "quantity", "title", "customer_id")
# The simple baselines the served list must beat, each tuned on the training period's validation split; ratios
# are taken against the best of those present, metric by metric.
BASELINES = ("co-purchase", "item-kNN", "co-purchase + history", "item-kNN + history", "type-level co-purchase")
SERVED = "blend (served)"  # with its ranking head, where one serves
ONE_OF_A_KIND = "blend (served), one of a kind in 4"  # the storefront's complementary block
BLOCK = 4  # the storefront block's places
BLEND_ALONE = "blend alone"  # without the head: the paired comparison
FROM_LISTS = "blend (served), from neighbour lists"  # as the storefront merges them (neighbours.py)
LISTED_CASES = 1000  # cases the lists are scored on, paired with the served blend on the same ones ...
LISTED_SECONDS = 180.0  # ... as many as this allows (a 70,000-product catalog's lists take 0.1 s a product)
Progress = Callable[[Iterable, str], Iterable]  # wraps a phase's loop (a progress bar in the CLI)


def _quiet(items: Iterable, label: str) -> Iterable:
    return items


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
                    skip_products: set[str] = frozenset(), progress: Progress = _quiet,
                    ) -> tuple[list[Basket], dict[str, str]]:
    """Baskets (oldest first, each with its customer when a customer column is mapped) and product titles (each
    product's most common one, when a title column is mapped). Rows with quantity ≤ 0, orders whose id starts
    with `skip_orders` (cancellations) and listed non-product codes are dropped."""
    name = {key: columns.get(key, key) for key in ORDER_COLUMNS}
    baskets: dict[str, Basket] = {}
    titles: dict[str, Counter] = defaultdict(Counter)
    for row in progress(_rows(path), f"reading {path.name}"):
        order, product = str(row[name["order_id"]]), str(row[name["product_id"]]).strip()
        quantity = row.get(name["quantity"])
        if (quantity is not None and float(quantity) <= 0) or product in skip_products or \
                (skip_orders and order.startswith(skip_orders)):
            continue
        created = row[name["created_at"]]
        created = created if isinstance(created, datetime) else datetime.fromisoformat(str(created))
        customer = str(row.get(name["customer_id"]) or "").strip() or None
        basket = baskets.setdefault(order, Basket(order, created, [], customer))
        if product not in basket.products:
            basket.products.append(product)
        if row.get(name["title"]):
            titles[product][str(row[name["title"]]).strip()] += 1
    ordered = sorted(baskets.values(), key=lambda b: (b.created_at, b.order_id))
    return ordered, {p: counts.most_common(1)[0][0] for p, counts in titles.items()}


def load_product_file(path: Path, columns: dict[str, str]) -> dict[str, str]:
    """Product titles: what the semantic recommender embeds and the model reads."""
    product, title = columns.get("product_id", "product_id"), columns.get("title", "title")
    return {str(row[product]).strip(): str(row[title]).strip() for row in _rows(path) if row.get(title)}


def load_product_types(path: Path, columns: dict[str, str]) -> dict[str, str]:
    """Product types (a category column mapped as `product_type`), from a product or an order file."""
    product, kind = columns.get("product_id", "product_id"), columns.get("product_type", "product_type")
    return {str(row[product]).strip(): str(row[kind]).strip() for row in _rows(path) if row.get(kind)}


# --- The model as a recommender ----------------------------------------------------------------------

def fine_tune_on_orders(train: list[Basket], shelf: Shelf, workdir: Path, *,
                        minutes: float, baskets: int = 4000, seed: int = 0) -> tuple[Path, dict]:
    """The sampled, time-budgeted training mode for big order files on a CPU: recommendation examples from
    `baskets` sampled training orders (candidates from the same blend that serves), LoRA on SmolLM2-135M
    for `minutes`, merged and exported to GGUF. Returns the GGUF and what it was trained on."""
    import json

    from core.model.base_model import prepare_base_model
    from core.model.datasets import PairStats, basket_examples, dedupe_and_balance
    from core.model.export import convert_to_gguf, merge_adapter
    from core.model.training import TrainConfig
    from core.model.training import train as train_lora

    rng = random.Random(seed)
    orders = [b.products for b in train]
    stats = PairStats(orders, shelf.catalog)
    sampled = [b[:PROMPT_CART + 2] for b in rng.sample(orders, min(baskets, len(orders)))]
    examples = dedupe_and_balance(basket_examples(sampled, stats, shelf.catalog, rng, per_basket=1,
                                                  retrieve=shelf.retrieval), rng)
    dataset = workdir / "dataset"
    dataset.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", examples[64:]), ("eval.jsonl", examples[:64])):
        (dataset / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    base = prepare_base_model(workdir / "artifacts")
    summary = train_lora(base, dataset, workdir / "training",
                         TrainConfig(epochs=1, time_budget_seconds=minutes * 60, eval_examples=64), progress_bar=True)
    gguf = convert_to_gguf(merge_adapter(base, workdir / "training" / "adapter", workdir / "merged"),
                           workdir / "model.q8_0.gguf")
    return gguf, {"base": "SmolLM2-135M-Instruct", "sampled_orders": len(sampled), "examples_built": len(examples) - 64,
                  "examples_trained": summary["train_examples"],  # those within the trainer's max_length tokens
                  "minutes": minutes, "steps": summary["steps"],
                  "tokens": summary["tokens"], "best_eval_loss": summary["best_eval_loss"],
                  "stopped": summary["stopped"]}


class OneOfAKind:
    """The storefront's complementary block as a recommender: the served ranking with at most one product of a
    type in its first BLOCK places, unless shoppers buy several (`one_of_a_kind`), the rest after."""

    def __init__(self, recommender: Recommender, shelf: Shelf):
        self.recommender, self.shelf = recommender, shelf

    def __call__(self, basket: list, k: int, history: History | None = None) -> list:
        ranked = self.recommender(basket, len(self.shelf.sellable), history)
        block = one_of_a_kind(self.shelf, ranked, BLOCK)
        return (block + [p for p in ranked if p not in block])[:k]


class ModelReRank:
    """What the storefront serves (`core.recommendations.serving.rerank`) as a recommender: the basket's last product
    is the one viewed, the rest the cart. Keeps the mean probability the model put on the candidates' letters."""

    def __init__(self, rank: Ranker, shelf: Shelf):
        self.rank, self.shelf = rank, shelf
        self.asked, self.label_mass = 0, 0.0

    def __call__(self, basket: list, k: int, history: History | None = None) -> list:
        result = rerank(self.rank, self.shelf, basket[-1], list(basket[:-1]), k, history=history)
        self.asked += 1
        self.label_mass += result.label_mass
        return result.products

    @property
    def mean_label_mass(self) -> float:
        return round(self.label_mass / max(self.asked, 1), 4)


# --- Metrics -----------------------------------------------------------------------------------------------

@dataclass
class Case:
    context: list[str]
    target: str
    history: History = field(default_factory=dict)  # what the order's customer had bought before it


def leave_one_out(test: list[Basket], rng: random.Random, limit: int | None,
                  histories: CustomerHistories | None = None) -> list[Case]:
    """One case a test basket of two products or more: one hidden at random, the rest the context, and the
    customer's earlier orders (of any period: the store knows them when the order is placed) from
    `histories`."""
    cases = [Case([p for p in b.products if p != target], target,
                  histories.before(b.customer, b.created_at) if histories else {})
             for b in test if len(b.products) >= 2 for target in [rng.choice(b.products)]]
    return rng.sample(cases, limit) if limit and len(cases) > limit else cases


def bootstrap(values: list[float], rng: random.Random, rounds: int = 1000) -> tuple[float, float]:
    if not values:
        return (0.0, 0.0)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(rounds))
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


class Relevance:
    """An automatic stand-in for the seeds' hand score of a recommendation set for the viewed product (3 = all
    related, 2 = mostly, 1 = mostly not): a product is related when orders of the whole period bought it with
    the viewed product at least twice as often as chance (lift ≥ 2, two orders or more), or its text is close
    in meaning (cosine ≥ 0.6)."""

    def __init__(self, baskets: list[Basket], index: SemanticIndex | None, lift: float = 2.0, similar: float = 0.6):
        self.together = CoPurchase(b.products for b in baskets)
        self.index, self.lift, self.similar = index, lift, similar

    def __call__(self, basket: list[str], shown: list[str]) -> float:
        viewed = basket[-1]
        related = [(self.together.together(viewed, p) >= 2 and self.together.lift(viewed, p) >= self.lift) or
                   self.similarity(viewed, p) >= self.similar for p in shown]
        share = sum(related) / max(len(related), 1)
        return 3.0 if share == 1 else 2.0 if share >= 0.5 else 1.0

    def similarity(self, a: str, b: str) -> float:
        if self.index is None or a not in self.index.position or b not in self.index.position:
            return 0.0
        return float(self.index.vectors[self.index.position[a]] @ self.index.vectors[self.index.position[b]])


def score(recommender: Recommender, cases: Iterable[Case], catalog: set[str], rng: random.Random,
          slices: dict[str, Callable[[Case], bool]], relevance: Relevance | None = None,
          gains: list[float] | None = None, types: dict[str, str] | None = None) -> dict:
    """The recommender's report on `cases`; each case's NDCG@10 is appended to `gains`, for paired comparisons.
    With product `types`, the share of lists whose first BLOCK products hold two of one type."""
    repeated = 0
    hits = {k: [] for k in KS}
    ndcg = {k: [] for k in KS}
    shown, invented, duplicates, latency, relevant = set(), 0, 0, [], []
    per_slice: dict[str, list[float]] = {name: [] for name in slices}
    for case in cases:
        started = time.perf_counter()
        ranked = recommender(case.context, max(KS), case.history)
        latency.append(time.perf_counter() - started)
        invented += sum(p not in catalog for p in ranked)
        duplicates += len(ranked) - len(set(ranked))
        shown.update(ranked)
        kinds = [types[p] for p in ranked[:BLOCK] if p in (types or {})]
        repeated += len(kinds) != len(set(kinds))
        if relevance:
            relevant.append(relevance(case.context, ranked[:4]))
        for k in KS:
            top = ranked[:k]
            hits[k].append(float(case.target in top))
            ndcg[k].append(1 / math.log2(top.index(case.target) + 2) if case.target in top else 0.0)
        for name, belongs in slices.items():
            if belongs(case):
                per_slice[name].append(float(case.target in ranked[:10]))
    scored = len(latency)  # `cases` may be a progress bar
    shown_total = max(scored * max(KS), 1)
    report = {"cases": scored}
    for k in KS:
        mean = sum(hits[k]) / max(len(hits[k]), 1)
        report[f"hr@{k}"] = round(mean, 4)
        report[f"hr@{k}_ci"] = [round(x, 4) for x in bootstrap(hits[k], rng)]
        report[f"recall@{k}"] = report[f"hr@{k}"]  # one hidden product a case: recall equals hit rate
        report[f"ndcg@{k}"] = round(sum(ndcg[k]) / max(len(ndcg[k]), 1), 4)
    report["ndcg@10_ci"] = [round(x, 4) for x in bootstrap(ndcg[10], rng)]
    if gains is not None:
        gains.extend(ndcg[10])
    report["coverage"] = round(len(shown & catalog) / max(len(catalog), 1), 4)
    report["out_of_catalog_rate"] = round(invented / shown_total, 4)
    report["duplicate_rate"] = round(duplicates / shown_total, 4)
    if types:
        report["same_type_lists@4"] = round(repeated / max(scored, 1), 4)
    report["latency_ms_p50"] = round(sorted(latency)[len(latency) // 2] * 1000, 3) if latency else None
    if relevant:
        report["relevance@4"] = round(sum(relevant) / len(relevant), 3)
    if isinstance(recommender, ModelReRank):
        # How much of its next-token probability the model gave the candidates' letters (1: it answers as trained).
        report["label_mass"] = recommender.mean_label_mass
    for name, values in per_slice.items():
        report[f"{name}_hr@10"] = round(sum(values) / len(values), 4) if values else None
        report[f"{name}_cases"] = len(values)
    return report


def compare_recommenders(baskets: list[Basket], titles: dict[str, str] | None = None, *, test_fraction: float = 0.2,
                         cases_limit: int | None = 5000, seed: int = 0, rank: Ranker | None = None,
                         model_cases: int = 300, train_minutes: float = 0, workdir: Path | None = None,
                         types: dict[str, str] | None = None, progress: Progress = _quiet) -> dict:
    """Every recommender on the same time split and the same hidden products. The baselines (BASELINES) are
    tuned as the blend is, on the newest 15% of the training orders, never the test split: item-kNN's
    normalisation, shrinkage and neighbourhood, and with customers its history weight; with product `types`,
    type-level co-purchase for the cold-start slice. With titles, the semantic recommender and the served blend
    too, with its ranking head (trained on the same validation split) and without it (`BLEND_ALONE`, paired on
    the same cases), and as the storefront serves it, merged from neighbour lists (`FROM_LISTS`, paired on the
    first LISTED_CASES cases, as many as LISTED_SECONDS allow); with a model (`rank`), the blend it re-ranks, on
    the first `model_cases` cases (with the blend on the same cases, for a paired comparison)."""
    rng = random.Random(seed)
    train, test = split_by_time(baskets, test_fraction)
    catalog = {p for b in baskets for p in b.products}
    histories = CustomerHistories(baskets)
    typed = {p: types[p] for p in sorted(catalog) if (types or {}).get(p)}
    index = shelf = blend = None
    if titles:
        items = {p: Item(p, titles.get(p, p), typed.get(p, ""), "") for p in sorted(catalog)}  # as serving embeds
        index = catalog_index(items, lambda chunks: progress(chunks, "embedding titles"))

        def history(i: int) -> History:
            return histories.before(train[i].customer, train[i].created_at)

        blend = fit_blend([b.products for b in train], index, seed=seed, history=history,
                          progress=lambda cases: progress(cases, "choosing the blend's weights"))
        blend.head = fit_ranking_head([b.products for b in train], index, blend, history=history, types=typed,
                                      seed=seed, progress=lambda bs: progress(bs, "training the ranking head"))
        shelf = Shelf.everything({p: item.title for p, item in items.items()}, blend, typed)
        copurchase, ease = blend.copurchase, blend.ease  # the blend's own, fitted on the same training orders
    else:
        purchases = Purchases(b.products for b in train)
        copurchase, ease = CoPurchase(purchases), EASE(purchases)
    knn = fit_item_knn([b.products for b in train], seed=seed,
                       history=lambda i: histories.before(train[i].customer, train[i].created_at),
                       progress=lambda settings: progress(settings, "choosing item-kNN's setting"))
    recommenders: dict[str, Recommender] = {"popularity": copurchase.popularity, "co-purchase": copurchase,
                                            "item-kNN": knn, "EASE": ease}
    cases = leave_one_out(test, rng, cases_limit, histories)
    with_history = any(case.history for case in cases)
    if blend is not None:
        recommenders["semantic"] = Semantic(index)
        if with_history:
            # Fair to the baseline: co-purchase given the same history, its weight the best of those settings on
            # the blend's own validation cases (a tie keeps no history).
            alone = [Weights(copurchase=1.0, semantic=0.0, cold_start=0.0, ease=0.0, history=h) for h in HISTORY_GRID]
            recommenders["co-purchase + history"] = blend.reweighted(
                max(alone, key=lambda w: blend.tried.get(w, (0, 0.0))))
    if with_history:
        recommenders["item-kNN + history"] = knn.with_history(knn.validation["history_weight"]) \
            if knn.validation else knn
    if typed:
        recommenders["type-level co-purchase"] = fit_type_copurchase([b.products for b in train], typed, seed=seed)
    if blend is not None:
        recommenders[BLEND_ALONE] = blend.alone()
        recommenders[SERVED] = blend
        if typed:
            recommenders[ONE_OF_A_KIND] = OneOfAKind(blend, shelf)
    popular = {p for p, _ in copurchase.items.most_common(max(len(copurchase.items) // 5, 1))}
    slices = {
        "long_tail": lambda c: c.target not in popular,
        "cold_start": lambda c: copurchase.co_purchases(c.target) < COLD_START_CO_PURCHASES,
    }
    relevance = Relevance(baskets, index)
    results, gains = {}, {}
    for name, recommender in recommenders.items():
        results[name] = score(recommender, progress(cases, name), catalog, random.Random(seed), slices, relevance,
                              gains.setdefault(name, []), typed)
    if blend is not None:  # each product's lists cost a catalog scoring: the first cases, LISTED_SECONDS at most
        listed = _for_at_most(cases[:LISTED_CASES], LISTED_SECONDS)
        results[FROM_LISTS] = score(ServedFromLists(blend), progress(listed, FROM_LISTS), catalog,
                                    random.Random(seed), slices, relevance, gains.setdefault(FROM_LISTS, []), typed)
    trained_on = None
    if train_minutes and shelf is not None:
        gguf, trained_on = fine_tune_on_orders(train, shelf, workdir, minutes=train_minutes, seed=seed)
        rank = rank_with_gguf(gguf)
    if rank is not None and shelf is not None:
        sample = cases[:model_cases]
        model_recommenders = {
            "blend (model cases)": blend,
            "blend + model re-rank": ModelReRank(rank, shelf),
        }
        for name, recommender in model_recommenders.items():
            results[name] = score(recommender, progress(sample, name), catalog, random.Random(seed), slices,
                                  relevance)
    return {
        "split": {"train_orders": len(train), "test_orders": len(test), "test_fraction": test_fraction,
                  "split_at": test[0].created_at.isoformat() if test else None, "catalog": len(catalog),
                  "cases_with_history": sum(bool(case.history) for case in cases),
                  "seed": seed},
        **({"blend": {"weights": vars(blend.weights), "validation": blend.validation},
            "ranking_head": {**(blend.head.card() if blend.head else {"serves": [], "why": "too few orders to train"}),
                             "ndcg@10_against_blend_alone": paired_ratio(gains[SERVED], gains[BLEND_ALONE],
                                                                         random.Random(seed))},
            "neighbour_lists": {"ndcg@10_against_served": paired_ratio(
                gains[FROM_LISTS], gains[SERVED][:len(gains[FROM_LISTS])], random.Random(seed))}} if blend else {}),
        "baselines": {
            "item-kNN": knn.validation,
            "type-level co-purchase": getattr(recommenders.get("type-level co-purchase"), "validation", None)
            if typed else "not run: the products carry no type",
        },
        "recommenders": results,
        "against_best_baseline": against_best(results),
        "against_co_purchase": {name: ratios(result, results["co-purchase"]) for name, result in results.items()
                                if name in ("item-kNN", "EASE", "co-purchase + history", "item-kNN + history",
                                            SERVED)},
        **({"against_co_purchase_with_history": ratios(results[SERVED], results["co-purchase + history"])}
           if "co-purchase + history" in results else {}),
        **({"model_trained_on": trained_on} if trained_on else {}),
    }


def _for_at_most(items: list, seconds: float) -> Iterable:
    """The items, in order, until `seconds` have passed since the first."""
    started = time.monotonic()
    for item in items:
        if time.monotonic() - started > seconds:
            return
        yield item


def against_best(results: dict) -> dict:
    """For HR@10, NDCG@10 and cold-start HR@10: the best baseline by that metric, its score, and the served list's
    score and ratio to it (when there is a served list)."""
    best = {}
    for metric in ("hr@10", "ndcg@10", "cold_start_hr@10"):
        scored = [name for name in BASELINES if name in results and results[name][metric] is not None]
        if not scored:
            continue
        name = max(scored, key=lambda n: results[n][metric])  # a tie names the first in BASELINES
        best[metric] = {"baseline": name, "baseline_score": results[name][metric]}
        if SERVED in results and results[SERVED][metric] is not None:
            best[metric] |= {"served_score": results[SERVED][metric], "ratio": round(
                results[SERVED][metric] / results[name][metric], 3) if results[name][metric] else None}
    return best


def paired_ratio(candidate: list[float], baseline: list[float], rng: random.Random, rounds: int = 1000) -> dict:
    """The candidate's mean over the baseline's on the same cases, and its 95% interval by resampling cases."""
    if not candidate or not sum(baseline):
        return {"ratio": None, "ci": None, "cases": len(candidate)}
    pairs = list(zip(candidate, baseline, strict=True))
    ratios = []
    for _ in range(rounds):
        drawn = rng.choices(pairs, k=len(pairs))
        ratios.append(sum(a for a, _ in drawn) / max(sum(b for _, b in drawn), 1e-12))
    ratios.sort()
    return {"ratio": round(sum(candidate) / sum(baseline), 3), "cases": len(pairs),
            "ci": [round(ratios[int(0.025 * rounds)], 3), round(ratios[int(0.975 * rounds) - 1], 3)]}


def ratios(result: dict, baseline: dict) -> dict:
    """How many times the baseline's HR@10 and NDCG@10 a recommender scores."""
    return {metric: round(result[metric] / baseline[metric], 3) if baseline[metric] else None
            for metric in ("hr@10", "ndcg@10")}


def hits_at(recommender: Recommender, cases: Iterable[Case], k: int) -> list[float]:
    return [float(case.target in recommender(case.context, k, case.history)[:k]) for case in cases]


def scores_below(candidate: list[float], baseline: list[float], rng: random.Random, rounds: int = 1000) -> bool:
    """Whether the candidate's hit rate is below the baseline's beyond noise: the paired per-case differences'
    bootstrap 95% interval lies wholly below zero. A few dozen held-out orders cannot tell 0.30 from 0.31."""
    differences = [a - b for a, b in zip(candidate, baseline, strict=True)]
    return bool(differences) and bootstrap(differences, rng, rounds)[1] < 0


def markdown(report: dict) -> str:
    lines = ["| recommender | cases | HR@4 | HR@10 (95% CI) | NDCG@10 (95% CI) | coverage | long-tail HR@10 "
             "| cold-start HR@10 | relevance@4 | out-of-catalog | letter mass | p50 ms |", "|---" * 12 + "|"]
    for name, r in report["recommenders"].items():
        mass = f"{r['label_mass']:.3f}" if "label_mass" in r else "–"
        lines.append(f"| {name} | {r['cases']} | {r['hr@4']:.3f} | {r['hr@10']:.3f} ({r['hr@10_ci'][0]:.3f}–"
                     f"{r['hr@10_ci'][1]:.3f}) | {r['ndcg@10']:.3f} ({r['ndcg@10_ci'][0]:.3f}–"
                     f"{r['ndcg@10_ci'][1]:.3f}) | {r['coverage']:.3f} | {r['long_tail_hr@10'] or 0:.3f} "
                     f"| {r['cold_start_hr@10'] or 0:.3f} | {r.get('relevance@4', 0):.2f} "
                     f"| {r['out_of_catalog_rate']:.3f} | {mass} | {r['latency_ms_p50']} |")
    notes = []
    labels = {"hr@10": "HR@10", "ndcg@10": "NDCG@10", "cold_start_hr@10": "cold-start HR@10"}
    for metric, best in report.get("against_best_baseline", {}).items():
        against = "" if "served_score" not in best else f"; {SERVED} {best['served_score']:.3f}, " + (
            f"{best['ratio']}× it" if best["ratio"] else "no ratio to a baseline that finds none")
        notes.append(f"Best baseline by {labels[metric]}: {best['baseline']} ({best['baseline_score']:.3f}){against}")
    repeats = {name: r["same_type_lists@4"] for name, r in report["recommenders"].items() if "same_type_lists@4" in r}
    if repeats:
        notes.append("Lists with two products of one type in their first 4: "
                     + ", ".join(f"{name} {share:.3f}" for name, share in repeats.items()))
    if head := report.get("ranking_head"):
        lift = head["ndcg@10_against_blend_alone"]
        within = f" (95% CI {lift['ci'][0]}–{lift['ci'][1]})" if lift["ci"] else ""
        judged = "; ".join(f"{kind} {judged['ndcg@10_gain']:+.4f}"
                           + (f" ± {judged['standard_error']}" if judged.get("standard_error") else "")
                           + f" on {judged['cases']}" for kind, judged in head.get("slices", {}).items()
                           if judged["cases"])
        notes.append(f"Ranking head: NDCG@10 {lift['ratio']}× the blend alone{within} on the same {lift['cases']} "
                     f"cases; it serves {', '.join(head['serves']) or 'no slice'}"
                     + (f" (NDCG@10 gain ± its standard error on the judged validation cases; a slice is served "
                           f"when its gain is over 1.96 standard errors: {judged})" if judged
                        else f" ({head.get('why', 'no slice measured')})"))
    if listed := report.get("neighbour_lists"):
        lift = listed["ndcg@10_against_served"]
        within = f" (95% CI {lift['ci'][0]}–{lift['ci'][1]})" if lift["ci"] else ""
        notes.append(f"Served from the neighbour lists, as the storefront merges them: NDCG@10 {lift['ratio']}× "
                     f"the served blend{within} on the same {lift['cases']} cases")
    baselines = report.get("baselines", {})
    if knn := baselines.get("item-kNN"):
        notes.append(f"item-kNN chosen on {knn['cases']} validation cases: {_setting(knn['setting'])} (HR@10 "
                     f"{knn['hr@10']}, cosine {knn['cosine_hr@10']}); history weight {knn['history_weight']} "
                     f"(HR@10 {knn['hr@10_with_history']})")
    if isinstance(kind := baselines.get("type-level co-purchase"), dict):
        notes.append(f"type-level co-purchase chosen on {kind['cases']} validation cases"
                     f"{' (cold start)' if kind['cold_start'] else ''}: {_setting(kind['setting'])}, "
                     f"{'with' if kind['same_type'] else 'without'} the same type (HR@10 {kind['hr@10']})")
    elif kind:
        notes.append(f"type-level co-purchase: {kind}")
    return "\n".join(lines + [""] + [f"- {note}" for note in notes] if notes else lines)


def _setting(setting: dict) -> str:
    return f"alpha {setting['alpha']}, shrink {setting['shrink']}, " + \
        (f"{setting['keep']} neighbours" if setting["keep"] else "all neighbours")


SHOP_EVALUATION_CASES = 2000
SHOP_MODEL_CASES = 60  # the live model re-ranks this many test cases (llama.cpp on the worker's CPU or GPU)


def evaluate_shop(shop) -> dict:
    """`pairwell evaluate SHOP` with the live model's rows, for the admin's Evaluate now (`core/storage/reports.py`)."""
    from core.recommendations.serving import live_model
    from core.storage import reports

    live = live_model(shop)
    model = Path(live.gguf_path) if live and Path(live.gguf_path).exists() else None

    def scored() -> dict:
        report = run(shop=shop, cases=SHOP_EVALUATION_CASES, model_cases=SHOP_MODEL_CASES, model_file=model)
        report.pop("markdown", None)
        return report

    return reports.produce(shop, "recommenders", scored, model_version=live.version if model else None)


def run(*, shop=None, orders_file: Path | None = None, products_file: Path | None = None, columns: str = "",
        skip_orders_prefix: str | None = None, skip_products: str = "", test_fraction: float = 0.2,
        cases: int = 5000, model_file: Path | None = None, train_minutes: float = 0.0, model_cases: int = 300,
        progress: Progress = _quiet) -> dict:
    """`pairwell evaluate`: a shop's synced orders (a Shop) or an order file, optionally with a product file,
    a fine-tuned GGUF or a time budget to fine-tune one first. The report carries its own markdown table."""
    import tempfile

    mapping = dict(pair.split("=", 1) for pair in columns.split(",") if "=" in pair)
    if orders_file:
        skip = {p.strip() for p in skip_products.split(",") if p.strip()}
        baskets, titles = load_order_file(orders_file, mapping, skip_orders=skip_orders_prefix, skip_products=skip,
                                          progress=progress)
        source = str(orders_file)
        types = load_product_types(products_file or orders_file, mapping) if "product_type" in mapping else {}
    else:
        from core.recommendations.history import load_baskets, load_catalog

        catalog = load_catalog(shop.id)
        baskets = [Basket(b.order_id, b.created_at, [str(p) for p in b.products], b.customer)
                   for b in load_baskets(shop.id, catalog)]
        titles = {str(p): item.title for p, item in catalog.items()}
        types = {str(p): item.product_type for p, item in catalog.items() if item.product_type}
        source = shop.domain
    if products_file:
        titles |= load_product_file(products_file, mapping)
    report = compare_recommenders(
        baskets, titles, test_fraction=test_fraction, cases_limit=cases, model_cases=model_cases,
        rank=rank_with_gguf(model_file) if model_file else None, train_minutes=train_minutes,
        workdir=Path(tempfile.mkdtemp(prefix="pairwell-evaluate-")) if train_minutes else None, types=types,
        progress=progress)
    report["source"] = source
    report["markdown"] = markdown(report)
    return report
