"""Large catalog (issue #13): `pairwell evaluate` on 1.5M order lines, 270k orders, 70k products; time and memory.

    .venv/bin/python benchmarks/large_catalog.py                  # generate once into /tmp/pairwell-large, evaluate
    .venv/bin/python benchmarks/large_catalog.py --generate-only  # just write the files
    .venv/bin/python benchmarks/large_catalog.py --scale 0.02     # a quick round, in /tmp/pairwell-large-0.02

The files are the sample store (`sample_store/catalog.py`) scaled up, the same for the same seed: products are
item types × models × vendors × editions × colours, launched over time (the newest have little history);
orders are two years of use-cases ("backpacking stove kit", winter ones in winter) with single-item orders,
multi-use-case big ones, noise, and a power-law popularity within each item type (a few best-sellers, a long
tail of rarely bought products) and customers (a quarter of the orders are guests'). `orders.parquet` has one
row per order line (order_id, product_id, created_at, quantity, title, customer_id), `products.parquet` every
product (product_id, title), sold or not.

Measured: the wall time of `pairwell evaluate` on those files, run as a subprocess, and its peak resident
memory (ru_maxrss of the largest child process), against the goal of 15 minutes and 8 GB on the 2-core
machine. The figures go into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from sample_store.catalog import (
    CONSUMABLES,
    DEFAULT_END,
    ITEM_TYPES,
    MODELS,
    ORDER_ID_BASE,
    PRODUCT_ID_BASE,
    USE_CASES,
    VENDORS,
)

ROOT = Path(__file__).resolve().parents[1]
EDITIONS = ["", "II", "III", "IV", "Lite", "Plus", "Max", "SL", "XT", "Evo", "Air"]
COLOURS = ["", "Slate", "Ember", "Olive", "Glacier", "Sand", "Moss", "Dusk", "Cobalt", "Rust", "Juniper", "Storm",
           "Canyon"]
DAYS = 730  # two years of orders, ending at the sample store's "now"
LAUNCHED_BEFORE = 0.55  # share of the catalog on sale from the first day; the rest launches during the period
POPULARITY = 1.0  # exponent of the power law within an item type
SINGLE, NOISE, CONSUMABLE_MORE = 0.3, 0.15, 0.3  # single-item orders; an unrelated item; more of a consumable
CORE, EXTRA = 0.85, 0.35  # chance of each core / extra item type of a use-case
USE_CASES_PER_ORDER, BIG_ORDERS = 0.45, 0.03  # geometric number of use-cases in an order; share of big orders
ROW_GROUP = 200_000
CUSTOMERS_PER_ORDER, GUESTS = 0.25, 0.25  # the customer base as a share of the orders; the share of guest orders
GENERATOR = 2  # bump when the generator changes: files with another version are regenerated


def make_products(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """`count` products spread over the item types, ids in launch order, a popularity weight each."""
    types = list(ITEM_TYPES)
    shares = rng.uniform(0.5, 1.5, len(types))
    per_type = np.maximum(np.floor(shares / shares.sum() * count).astype(int), 3)
    per_type[np.argsort(-shares)[:max(count - per_type.sum(), 0)]] += 1
    start = DEFAULT_END.timestamp() - DAYS * 86400
    space = len(VENDORS) * len(MODELS) * len(EDITIONS) * len(COLOURS)
    kind, titles, launch, weight = [], [], [], []
    for t, (item_type, n) in enumerate(zip(types, per_type)):
        combos = np.arange(space)
        model_words = [m in item_type.split() for m in MODELS]  # no "Trail Trail Runners"
        combos = combos[~np.array(model_words)[combos // len(VENDORS) % len(MODELS)]]
        combo = rng.choice(combos, n, replace=False)
        for c in combo:
            vendor, model = VENDORS[c % len(VENDORS)], MODELS[c // len(VENDORS) % len(MODELS)]
            edition = EDITIONS[c // (len(VENDORS) * len(MODELS)) % len(EDITIONS)]
            colour = COLOURS[c // (len(VENDORS) * len(MODELS) * len(EDITIONS))]
            title = " ".join(filter(None, (vendor, model, item_type, edition)))
            titles.append(f"{title} - {colour}" if colour else title)
        rank = rng.permutation(n)
        on_sale = (rng.random(n) < LAUNCHED_BEFORE) | (rank < 3)  # the best-sellers are established products
        days = np.where(on_sale, -rng.uniform(0, 3 * 365, n), rng.uniform(0, DAYS, n))
        launch.append(start + days * 86400)
        weight.append(1 / (rank + 1.0) ** POPULARITY)
        kind.append(np.full(n, t))
    launch = np.concatenate(launch).astype(np.int64)
    by_launch = np.argsort(launch, kind="stable")
    return {"type": np.concatenate(kind)[by_launch], "launch": launch[by_launch],
            "weight": np.concatenate(weight)[by_launch], "title": np.array(titles, dtype=object)[by_launch]}


def order_times(rng: np.random.Generator, count: int) -> np.ndarray:
    """Sorted UTC seconds over the period: the store grows (twice the orders at the end) and peaks in summer."""
    start = DEFAULT_END.timestamp() - DAYS * 86400
    times = np.empty(0)
    while len(times) < count:
        x = -1 + np.sqrt(1 + 3 * rng.random(2 * count))  # density ∝ 1 + x on [0, 1]
        t = start + x * DAYS * 86400
        summer = np.cos(2 * np.pi * ((t / 86400) % 365.25 - 190) / 365.25)  # peak around 10 July
        times = np.concatenate([times, t[rng.random(len(t)) < (1 + 0.3 * summer) / 1.3]])
    return np.sort(times[:count]).astype(np.int64)


def basket_types(rng: np.random.Generator, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each order's item types: (order, item type, position in the order) per line, before picking products."""
    n, types = len(times), {t: i for i, t in enumerate(ITEM_TYPES)}
    month = times.astype("datetime64[s]").astype("datetime64[M]").astype(int) % 12 + 1
    winter = np.isin(month, (11, 12, 1, 2, 3))
    single = rng.random(n) < SINGLE
    uses = np.where(single, 1, rng.geometric(USE_CASES_PER_ORDER, n))
    uses += np.where(~single & (rng.random(n) < BIG_ORDERS), rng.integers(4, 16, n), 0)  # stocking up for a trip
    slot_order = np.repeat(np.arange(n), uses)
    slot_rank = np.arange(len(slot_order)) - np.repeat(np.cumsum(uses) - uses, uses)
    names = list(USE_CASES)
    base = np.array([USE_CASES[u][0] for u in names], dtype=float)
    cold = np.array([USE_CASES[u][3] for u in names])
    use_case = np.empty(len(slot_order), dtype=int)
    for in_winter, factor in ((True, 2.5), (False, 0.4)):
        slots = winter[slot_order] == in_winter
        p = base * np.where(cold, factor, 1)
        use_case[slots] = rng.choice(len(names), slots.sum(), p=p / p.sum())

    orders, kinds, positions = [], [], []

    def emit(slots: np.ndarray, item_type: int, position: np.ndarray | int) -> None:
        orders.append(slot_order[slots])
        kinds.append(np.full(len(slots), item_type))
        positions.append(slot_rank[slots] * 256 + position)

    for u, name in enumerate(names):
        _, core, extras, _ = USE_CASES[name]
        members = [types[t] for t in core + extras]
        slots = np.flatnonzero((use_case == u) & single[slot_order])
        pick = rng.integers(0, len(members), len(slots))
        for j, item_type in enumerate(members):
            emit(slots[pick == j], item_type, j * 4)
        slots = np.flatnonzero((use_case == u) & ~single[slot_order])
        empty = np.ones(len(slots), dtype=bool)
        for j, item_type in enumerate(members):
            chosen = rng.random(len(slots)) < (CORE if j < len(core) else EXTRA)
            empty &= ~chosen
            emit(slots[chosen], item_type, j * 4)
        emit(slots[empty], members[0], 0)
    noisy = np.flatnonzero(~single & (rng.random(n) < NOISE))
    orders.append(noisy)
    kinds.append(rng.integers(0, len(types), len(noisy)))
    positions.append(np.full(len(noisy), 1 << 40))
    order, kind, position = (np.concatenate(a) for a in (orders, kinds, positions))
    consumable = np.isin(kind, [types[t] for t in CONSUMABLES])
    more = np.flatnonzero(consumable & (rng.random(len(kind)) < CONSUMABLE_MORE))
    more = np.repeat(more, rng.integers(1, 4, len(more)))  # a few flavours, sizes, packs
    return (np.concatenate([order, order[more]]), np.concatenate([kind, kind[more]]),
            np.concatenate([position, position[more] + 1]))


def pick_products(rng: np.random.Generator, products: dict, kind: np.ndarray, when: np.ndarray) -> np.ndarray:
    """A product of each line's item type, by popularity, among those launched before the order."""
    picked = np.empty(len(kind), dtype=np.int64)
    for t in range(len(ITEM_TYPES)):
        lines, ids = np.flatnonzero(kind == t), np.flatnonzero(products["type"] == t)  # ids in launch order
        on_sale = np.searchsorted(products["launch"][ids], when[lines], side="right")
        cumulative = np.cumsum(products["weight"][ids])
        draw = rng.random(len(lines)) * cumulative[on_sale - 1]
        picked[lines] = ids[np.minimum(np.searchsorted(cumulative, draw, side="right"), on_sale - 1)]
    return picked


def generate(out_dir: Path, orders: int, products: int, seed: int) -> dict:
    """Write orders.parquet and products.parquet; return the figures of what was written."""
    rng = np.random.default_rng(seed)
    catalog = make_products(rng, products)
    times = order_times(rng, orders)
    order, kind, position = basket_types(rng, times)
    product = pick_products(rng, catalog, kind, times[order])
    lines = np.lexsort((position, order))  # orders by time, lines in the order they went into the cart
    order, kind, product = order[lines], kind[lines], product[lines]
    _, first = np.unique(order * len(catalog["type"]) + product, return_index=True)  # one line per product
    keep = np.sort(first)
    order, kind, product = order[keep], kind[keep], product[keep]
    consumable = np.isin(kind, [i for i, t in enumerate(ITEM_TYPES) if t in CONSUMABLES])
    quantity = np.where(consumable, rng.integers(1, 5, len(kind)), 1 + (rng.random(len(kind)) < 0.04))
    # Who ordered: a quarter of orders are guests'; the rest are spread over a customer base where a few
    # customers order often and most once or twice (no repeat-purchase pattern: this measures cost, not quality).
    customer_of = (CUSTOMERS_PER_ORDER * orders * rng.random(orders) ** 2).astype(np.int64)
    customer_of[rng.random(orders) < GUESTS] = -1

    out_dir.mkdir(parents=True, exist_ok=True)
    ids = pc.cast(pa.array(PRODUCT_ID_BASE + 1 + np.arange(len(catalog["type"]))), pa.string())
    titles = pa.array(catalog["title"].tolist(), pa.string())
    pq.write_table(pa.table({"product_id": ids, "title": titles}), out_dir / "products.parquet")
    schema = pa.schema([("order_id", pa.string()), ("product_id", pa.string()),
                        ("created_at", pa.timestamp("s", tz="UTC")), ("quantity", pa.int32()), ("title", pa.string()),
                        ("customer_id", pa.string())])
    with pq.ParquetWriter(out_dir / "orders.parquet", schema) as writer:
        for at in tqdm(range(0, len(order), ROW_GROUP), desc="orders.parquet", unit="row group", leave=False):
            rows = slice(at, at + ROW_GROUP)
            chosen = pa.array(product[rows])
            writer.write_table(pa.table({
                "order_id": pc.cast(pa.array(ORDER_ID_BASE + 1 + order[rows]), pa.string()),
                "product_id": ids.take(chosen),
                "created_at": pa.array(times[order[rows]], pa.timestamp("s", tz="UTC")),
                "quantity": pa.array(quantity[rows], pa.int32()),
                "title": titles.take(chosen),
                "customer_id": pc.cast(pa.array(customer_of[order[rows]], mask=customer_of[order[rows]] < 0),
                                       pa.string()),
            }, schema=schema))

    size = np.bincount(order, minlength=orders)
    sales = np.bincount(product, minlength=len(catalog["type"]))
    recent = catalog["launch"] > DEFAULT_END.timestamp() - 90 * 86400
    return {"lines": len(order), "orders": int((size > 0).sum()), "products": len(sales),
            "customers": int(len(np.unique(customer_of[customer_of >= 0]))),
            "guest_orders": round(float((customer_of < 0).mean()), 3),
            "products_sold": int((sales > 0).sum()), "mean_products_per_order": round(float(size.mean()), 2),
            "single_item_orders": round(float((size == 1).mean()), 3),
            "products_per_order_p50_p90_p99_max": np.percentile(size, (50, 90, 99, 100)).astype(int).tolist(),
            "products_under_10_sales": int((sales < 10).sum()), "products_never_sold": int((sales == 0).sum()),
            "launched_last_90_days": int(recent.sum()),
            "launched_last_90_days_median_sales": int(np.median(sales[recent])) if recent.any() else 0,
            "orders_mb": round((out_dir / "orders.parquet").stat().st_size / 1e6, 1),
            "products_mb": round((out_dir / "products.parquet").stat().st_size / 1e6, 1)}


def evaluate(out_dir: Path) -> tuple[int, float, float]:
    """Run `pairwell evaluate` on the files, its output streaming through: exit code, seconds, peak RSS in GB."""
    command = [str(Path(sys.executable).parent / "pairwell"), "evaluate", "--orders", str(out_dir / "orders.parquet"),
               "--products", str(out_dir / "products.parquet"), "--out", str(out_dir / "report.json")]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    code = subprocess.run(command, cwd=ROOT).returncode
    elapsed = time.perf_counter() - started
    return code, elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=270_000)
    parser.add_argument("--products", type=int, default=70_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0, help="Multiply orders and products (0.05: a quick run).")
    parser.add_argument("--out-dir", type=Path, help="Default: /tmp/pairwell-large (-SCALE when scaled).")
    parser.add_argument("--generate-only", action="store_true")
    args = parser.parse_args()

    args.out_dir = args.out_dir or Path("/tmp/pairwell-large" + (f"-{args.scale:g}" if args.scale != 1 else ""))
    params = {"orders": round(args.orders * args.scale), "products": round(args.products * args.scale),
              "seed": args.seed, "generator": GENERATOR}
    saved = args.out_dir / "params.json"
    files = [args.out_dir / name for name in ("orders.parquet", "products.parquet")]
    previous = json.loads(saved.read_text()) if saved.exists() else {}
    if previous.get("params") == params and all(f.exists() for f in files):
        figures = previous["figures"]
        print(f"reusing {args.out_dir} (generated in {figures['generation_s']} s)")
    else:
        saved.unlink(missing_ok=True)  # an interrupted run leaves no files that look complete
        started = time.perf_counter()
        figures = generate(args.out_dir, params["orders"], params["products"], params["seed"])
        figures["generation_s"] = round(time.perf_counter() - started, 1)
        saved.write_text(json.dumps({"params": params, "figures": figures}, indent=2))
    print(json.dumps(figures, indent=2))
    if args.generate_only:
        return

    code, elapsed, peak_gb = evaluate(args.out_dir)
    print(f"\nlines {figures['lines']:,}  orders {figures['orders']:,}  products {figures['products']:,}  "
          f"orders.parquet {figures['orders_mb']} MB")
    print(f"generation: {figures['generation_s']} s")
    print(f"evaluate: {elapsed:.1f} s ({elapsed / 60:.1f} min), exit code {code}  peak RSS: {peak_gb:.2f} GB")
    ok = code == 0 and elapsed <= 15 * 60 and peak_gb <= 8
    print(f"within 15 min and 8 GB: {'yes' if ok else 'no'}")
    sys.exit(code)


if __name__ == "__main__":
    main()
