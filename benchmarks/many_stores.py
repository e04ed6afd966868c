"""Many stores, one web process: storefront blocks served from the neighbour lists in Postgres.

    python benchmarks/many_stores.py --database-url postgresql+psycopg://... [--stores 1000]
        [--products 1000-8000] [--checkpoints 1,100,1000]

Installs synthetic stores (a catalog of products with one variant in stock each, and every product's
neighbour lists as a worker's build stores them: 150 neighbours with their values and a complements vector),
then, at each checkpoint, starts a fresh web process (a restart) that asks one storefront block of that many
stores, cart empty or of two products, through the signed App Proxy route, and reports that process's latency
per first request (p50, p95, p99) and its resident memory after, with Postgres's bytes per store.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SECRET = "benchmark-secret-long-enough-for-hs256"
CREDENTIALS = {"SHOPIFY_API_KEY": "benchmark-client-id", "SHOPIFY_API_SECRET": SECRET,
               "PAIRWELL_ENCRYPTION_KEY": "YmVuY2htYXJrLWtleS1vZi10aGlydHktdHdvLWJ5dGU="}
KINDS = 40  # product types a synthetic store sells
ID_SPAN = 10_000_000  # product ids of store i: i * ID_SPAN + 1 ...


def app_for(url: str):
    from shopify_app import create_app

    return create_app({"SQLALCHEMY_DATABASE_URI": url, "REDIS_URL": None, "PROXY_LIMIT_PER_IP": 10**9, **CREDENTIALS})


NEIGHBOURS = 150  # a product's neighbours (the union of its top lists by six signals, which overlap)


def packed_lists(rng: np.random.Generator, ids: np.ndarray) -> np.ndarray:
    """Every product's neighbours as `Neighbours.pack` lays them out (NEIGHBOURS random products, a value by
    each signal, together counts and floors), one row of bytes a product, made for the whole catalog at once."""
    from core.recommendations.neighbours import COLUMNS

    count = len(ids)
    header = np.full((count, 1), NEIGHBOURS, dtype=np.int32)
    neighbours = ids[rng.integers(0, count, (count, NEIGHBOURS))]
    values = rng.random((count, NEIGHBOURS, len(COLUMNS)), dtype=np.float32)
    values[:, :, COLUMNS.index("new")] = values[:, :, COLUMNS.index("new")] < 0.1
    together = rng.integers(0, 5, (count, NEIGHBOURS), dtype=np.int32)
    floors = rng.random((count, 3), dtype=np.float32)
    return np.hstack([part.view(np.uint8).reshape(count, -1)
                      for part in (header, neighbours, values, together, floors)])


def install(url: str, first: int, last: int, sizes: tuple[int, int], seed: int) -> None:
    """Stores first..last-1: shops, products, variants, neighbour lists and their builds, with COPY."""
    from core.storage.models import db

    app = app_for(url)
    with app.app_context():
        raw = db.engine.raw_connection()
        cursor = raw.cursor()
        now = datetime.now(timezone.utc)
        for store in range(first, last):
            rng = np.random.default_rng(seed + store)
            count = int(rng.integers(sizes[0], sizes[1] + 1))
            ids = store * ID_SPAN + 1 + np.arange(count, dtype=np.int64)
            kinds = rng.integers(0, KINDS, count)
            cursor.execute("INSERT INTO shops (id, domain, access_token_encrypted, scopes, currency, policies, "
                           "assistant, schedule, experiment, reply_generation, installed_at, created_at) VALUES "
                           "(%s, %s, 'x', '', 'USD', '{}', '{}', '{}', '{}', 0, %s, %s)",
                           (store + 1, f"bench-{store}.myshopify.com", now, now))
            with cursor.copy("COPY products (shop_id, id, handle, title, description, product_type, vendor, tags, "
                             "status, published, total_inventory, updated_at) FROM STDIN") as copy:
                for product, kind in zip(ids.tolist(), kinds.tolist(), strict=True):
                    copy.write_row((store + 1, product, f"p-{product}", f"Kind {kind} item {product}", "",
                                    f"Kind {kind}", "", "[]", "ACTIVE", True, 5, now))
            with cursor.copy("COPY variants (shop_id, id, product_id, title, price, available_for_sale, "
                             "inventory_quantity) FROM STDIN") as copy:
                for product in ids.tolist():
                    copy.write_row((store + 1, product, product, "Default", "19.00", True, 5))
            popularity = rng.random(count).astype(np.float32)
            blobs = packed_lists(rng, ids)
            askings = rng.standard_normal((64, 384)).astype(np.float32)  # a pool: rows need not differ
            askings = [(a / np.linalg.norm(a)).tobytes() for a in askings]
            with cursor.copy("COPY neighbour_lists (shop_id, product_id, popularity, cold, lists, asking) "
                             "FROM STDIN") as copy:
                for at, product in enumerate(ids.tolist()):
                    copy.write_row((store + 1, product, float(popularity[at]), at % 10 == 0, blobs[at].tobytes(),
                                    askings[at % 64]))
            popular = [[int(ids[i]), float(popularity[i]), False] for i in np.argsort(-popularity)[:50]]
            cursor.execute("INSERT INTO retrieval_builds (shop_id, weights, several, popular, products, seconds, "
                           "built_at) VALUES (%s, '{}', '[]', %s, %s, 0, %s)",
                           (store + 1, json.dumps(popular), count, now))
            raw.commit()
            if (store + 1) % 50 == 0:
                print(f"  installed {store + 1} stores", flush=True)
        raw.close()


def serve(url: str, stores: int, seed: int) -> dict:
    """A fresh process's first block of `stores` stores drawn from those installed, one at a time: latency per
    request and the process's RSS after."""
    import resource

    from core.shopify.signatures import signed_app_proxy_query

    app = app_for(url)
    client = app.test_client()
    rng = random.Random(seed)
    latencies = []
    with app.app_context():
        from core.storage.models import db

        sizes = dict(db.session.execute(db.text("SELECT shop_id, products FROM retrieval_builds")).all())
    for store in rng.sample(range(len(sizes)), stores):
        count = sizes[store + 1]
        viewing, *cart = (store * ID_SPAN + 1 + rng.randrange(count) for _ in range(3))
        params = {"product_id": viewing, "limit": 4}
        if rng.random() < 0.5:
            params["cart"] = f"{cart[0]},{cart[1]}"
        query = signed_app_proxy_query(f"bench-{store}.myshopify.com", SECRET, **params)
        started = time.perf_counter()
        response = client.get(f"/proxy/recommendations?{query}")
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200 and len(response.json["products"]) == 4, response.get_data(as_text=True)
    latencies.sort()
    return {"stores": stores, "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def storage(url: str, stores: int) -> float:
    from core.storage.models import db

    with app_for(url).app_context():
        total = sum(db.session.execute(db.text(f"SELECT pg_total_relation_size('{table}')")).scalar()
                    for table in ("products", "variants", "neighbour_lists", "retrieval_builds"))
    return total / stores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="a Postgres database, empty unless --installed")
    parser.add_argument("--stores", type=int, default=1000)
    parser.add_argument("--products", default="1000-8000", help="each store's catalog size, drawn in this range")
    parser.add_argument("--checkpoints", default="1,100,1000", help="stores a fresh web process serves")
    parser.add_argument("--installed", action="store_true", help="the stores are there from an earlier run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve-only", type=int, help=argparse.SUPPRESS)  # the fresh process of a checkpoint
    args = parser.parse_args()
    if args.serve_only:
        print(json.dumps(serve(args.database_url, args.serve_only, args.seed)))
        return
    if not args.installed:
        from shopify_app import migrations

        with app_for(args.database_url).app_context():
            migrations.upgrade()
        started = time.monotonic()
        install(args.database_url, 0, args.stores, tuple(int(n) for n in args.products.split("-")), args.seed)
        print(f"{args.stores} stores installed in {time.monotonic() - started:.0f} s; Postgres holds "
              f"{storage(args.database_url, args.stores) / 2**20:.1f} MiB a store (catalog, stock and lists)")
    print("| stores served by a fresh process | first request p50 / p95 / p99 (ms) | RSS after (MiB) |")
    print("|---|---|---|")
    for checkpoint in sorted(int(c) for c in args.checkpoints.split(",") if int(c) <= args.stores):
        fresh = subprocess.run([sys.executable, __file__, "--database-url", args.database_url,
                                "--serve-only", str(checkpoint), "--seed", str(args.seed)],
                               capture_output=True, text=True, check=True)
        figures = json.loads(fresh.stdout.strip().splitlines()[-1])
        print(f"| {checkpoint} | {figures['p50_ms']:.1f} / {figures['p95_ms']:.1f} / {figures['p99_ms']:.1f} | "
              f"{figures['rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
