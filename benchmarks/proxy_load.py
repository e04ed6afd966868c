"""Storefront load: the App Proxy route under gunicorn on loopback.

    python benchmarks/proxy_load.py [--gguf instance/artifacts/<shop>/<run>/model-v1.q8_0.gguf]

Installs the sample store into a fresh SQLite database, serves the app with gunicorn (2 workers), then
  - cold path: first requests for distinct products (the model ranking by its letters when --gguf is given,
    else the retrieval and its ranking head), one at a time, latency per request, once each worker has built
    the shop's retrieval;
  - cached path: ApacheBench (`ab`, Debian apache2-utils) with 50 concurrent connections on a signed URL.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

SECRET = "benchmark-secret-long-enough-for-hs256"
CREDENTIALS = {"SHOPIFY_API_KEY": "benchmark-client-id", "SHOPIFY_API_SECRET": SECRET,
               "PAIRWELL_ENCRYPTION_KEY": "YmVuY2htYXJrLWtleS1vZi10aGlydHktdHdvLWJ5dGU="}


def signed_url(base: str, shop: str, **params) -> str:
    from core.shopify.signatures import signed_app_proxy_query

    return f"{base}/proxy/recommendations?{signed_app_proxy_query(shop, SECRET, **params)}"


def install_sample_store(env: dict, gguf: Path | None) -> tuple[str, list[int]]:
    from core.shopify import shops
    from core.storage.models import ModelVersion, Product, db
    from sample_store.server import SampleShopify
    from shopify_app import create_app, migrations

    app = create_app({"SQLALCHEMY_DATABASE_URI": env["DATABASE_URL"], **CREDENTIALS,
                      "REDIS_URL": None, "BULK_POLL_SECONDS": 0.05})
    with app.app_context():
        migrations.upgrade()
        with SampleShopify(api_key=app.config["SHOPIFY_API_KEY"], api_secret=SECRET) as store:
            app.config["SHOPIFY_ADMIN_ORIGIN"] = store.origin
            app.test_client().get(f"/?shop={store.shop}&id_token={store.session_token()}")
            shop = shops.get_shop(store.shop)
        if gguf:
            db.session.add(ModelVersion(shop_id=shop.id, version=1, gguf_path=str(gguf.resolve()), quantization="q8_0",
                                        size_bytes=gguf.stat().st_size, sha256="-", base_model="benchmark",
                                        status="deployed"))
            db.session.commit()
        products = list(db.session.scalars(db.select(Product.id).where(Product.shop_id == shop.id,
                                                                       Product.status == "ACTIVE")))
        return shop.domain, products


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path)
    parser.add_argument("--cold", type=int, default=20, help="distinct uncached products to time")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pairwell-load-"))
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{workdir / 'load.db'}", **CREDENTIALS,
           "PAIRWELL_PROXY_LIMIT_PER_IP": "100000000", "PAIRWELL_PROXY_LIMIT_PER_SHOP": "100000000",
           "PAIRWELL_MODEL_CALLS_PER_SHOP": "100000000",
           "PAIRWELL_MODEL_BUDGET_SECONDS": "5"}
    env.pop("REDIS_URL", None)
    shop, products = install_sample_store(env, args.gguf)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "4",
                               "-b", f"127.0.0.1:{port}", "--log-level", "warning", "shopify_app.wsgi:app"],
                              env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                requests.get(base + "/", timeout=10)
                break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still booting
                time.sleep(0.2)
        for product in products[-8:]:  # each worker builds the shop's retrieval (and its ranking head) once
            requests.get(signed_url(base, shop, product_id=product), timeout=120)
        cold, sources = [], {}
        for product in products[:args.cold]:
            started = time.perf_counter()
            body = requests.get(signed_url(base, shop, product_id=product), timeout=30).json()
            cold.append(time.perf_counter() - started)
            sources[body["source"]] = sources.get(body["source"], 0) + 1
        cold.sort()
        print(f"cold path ({sources}): p50 {statistics.median(cold) * 1000:.0f} ms, "
              f"p90 {cold[int(len(cold) * 0.9) - 1] * 1000:.0f} ms, "
              f"p95 {cold[int(len(cold) * 0.95) - 1] * 1000:.0f} ms, max {cold[-1] * 1000:.0f} ms")
        if shutil.which("ab") is None:
            print("cached path skipped: ApacheBench (`ab`, Debian apache2-utils) is not installed")
            return

        url = signed_url(base, shop, product_id=products[0])
        for _ in range(20):  # both workers fill their in-process cache
            requests.get(url, timeout=30)
        output = subprocess.run(["ab", "-q", "-k", "-c", str(args.concurrency), "-n", str(args.requests), url],
                                capture_output=True, text=True, check=True).stdout
        rate = re.search(r"Requests per second:\s+([\d.]+)", output).group(1)
        p50 = re.search(r"\s50%\s+(\d+)", output).group(1)
        p99 = re.search(r"\s99%\s+(\d+)", output).group(1)
        failed = re.search(r"Failed requests:\s+(\d+)", output).group(1)
        non2xx = re.search(r"Non-2xx responses:\s+(\d+)", output)
        print(f"cached path, {args.concurrency} concurrent, {args.requests} requests: {rate} req/s, "
              f"p50 {p50} ms, p99 {p99} ms, failed {failed}, non-2xx {non2xx.group(1) if non2xx else 0}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
