"""A cart's block from the neighbour lists with the ranking head, as a fresh web process answers it.

    python benchmarks/listed_head.py [--database-url URL] [--requests 300]

Installs the sample store (SQLite in a temporary folder unless --database-url names an empty database), then
has its lists built with a ranking head that serves every slice (the sample store's orders are too few to
train one as a store's build would: it is trained on fewer cases here, as tests/test_neighbours.py does).
A fresh ServingState (a restarted process: the head is read from the build on the first request) then
answers distinct signed App Proxy requests one at a time, none from the reply cache: product pages (the
served order, no head) and carts of two products (the head re-orders their pool from the lists, the rows'
types and the candidates' text vectors). Prints each kind's latency p50 / p95 / p99 and the first cart's.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SECRET = "benchmark-secret-long-enough-for-hs256"
CREDENTIALS = {"SHOPIFY_API_KEY": "benchmark-client-id", "SHOPIFY_API_SECRET": SECRET,
               "PAIRWELL_ENCRYPTION_KEY": "YmVuY2htYXJrLWtleS1vZi10aGlydHktdHdvLWJ5dGU="}


def percentiles(latencies: list[float]) -> dict:
    latencies = sorted(latencies)
    return {"requests": len(latencies), "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
            "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url")
    parser.add_argument("--requests", type=int, default=300, help="of each kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp(prefix='pairwell-head-')}/bench.db"

    from core.recommendations import ranking_head, serving
    from core.recommendations.serving import ServingState
    from core.shopify import shops
    from core.shopify.signatures import signed_app_proxy_query
    from core.storage.models import NeighbourList, RetrievalBuild, db
    from sample_store.catalog import generate_store
    from sample_store.server import SampleShopify
    from shopify_app import create_app, migrations

    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "REDIS_URL": None, "PROXY_LIMIT_PER_IP": 10**9,
                      "SHOPIFY_APP_URL": "https://pairwell.test", **CREDENTIALS})
    with app.app_context(), SampleShopify(generate_store(), api_key=CREDENTIALS["SHOPIFY_API_KEY"],
                                          api_secret=SECRET) as shopify:
        app.config["SHOPIFY_ADMIN_ORIGIN"] = shopify.origin
        migrations.upgrade()
        client = app.test_client()
        started = time.monotonic()
        query = urlencode({"shop": shopify.shop, "id_token": shopify.session_token(), "embedded": "1"})
        assert client.get(f"/?{query}").status_code == 200
        shop = shops.get_shop(shopify.shop)
        print(f"installed and synced in {time.monotonic() - started:.0f} s", flush=True)
        ranking_head.MIN_TRAINING_CASES, ranking_head.beyond_noise = 20, lambda gains, at_least=0: True
        serving.build_neighbour_lists(shop)
        build = db.session.get(RetrievalBuild, shop.id)
        print(f"lists built with a head of {len(build.head) / 1024:.0f} KiB (zlib)", flush=True)
        products = list(db.session.scalars(db.select(NeighbourList.product_id).where(
            NeighbourList.shop_id == shop.id)))
        rng = random.Random(args.seed)
        app.extensions["pairwell_serving"] = ServingState(app.config["INDEX_CACHE_MB"] * 2**20)  # a restart
        latencies: dict[str, list[float]] = {"cart of two": [], "product page": []}
        seen = set()
        while min(len(kind) for kind in latencies.values()) < args.requests:
            viewing, *cart = rng.sample(products, 3)
            kind = "cart of two" if len(latencies["cart of two"]) <= len(latencies["product page"]) else \
                "product page"
            params = {"product_id": viewing, "limit": 4, **({"cart": f"{cart[0]},{cart[1]}"}
                                                           if kind == "cart of two" else {})}
            key = json.dumps(params, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            signed = signed_app_proxy_query(shop.domain, SECRET, **params)
            asked = time.perf_counter()
            response = client.get(f"/proxy/recommendations?{signed}")
            latencies[kind].append(time.perf_counter() - asked)
            assert response.status_code == 200 and response.json["products"], response.get_data(as_text=True)
        print(json.dumps({"first cart (reads the head)_ms": round(1000 * latencies["cart of two"][0], 1),
                          **{kind: percentiles(values) for kind, values in latencies.items()}}, indent=1))


if __name__ == "__main__":
    main()
