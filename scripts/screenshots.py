"""Screenshots for README and docs: `.venv/bin/python scripts/screenshots.py [--out docs/screenshots]
[--train-minutes N]`.

Starts everything on loopback in about a minute, with nothing to set up (and no model training unless asked): the
app on
SQLite in a temporary folder, the sample store installed and synced through the embedded entry (token exchange
and bulk sync, as the Shopify admin does it), the storefront preview in front of the app's App Proxy; then opens
each target in Debian's Chromium (/usr/bin/chromium) and saves a PNG. Product photos live on
cdn.shopify.com, which cannot be reached here: they are drawn as placeholders (`placeholder_image`).

To add a page, append a Target: `url` builds its address from the running Env (`env.app_url`,
`env.storefront`, `env.shop`, `env.shopify.session_token()`), `ready` is a selector that is there once the page
shows what it should.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.readiness import warm_up  # noqa: E402
from core.storage.models import Shop, db  # noqa: E402
from sample_store.catalog import generate_store  # noqa: E402
from sample_store.demo import DEMO_TRAINING  # noqa: E402
from sample_store.server import LoopbackServer, SampleShopify  # noqa: E402
from sample_store.storefront import StorefrontPreview, placeholder_image  # noqa: E402
from shopify_app import create_app, migrations  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
API_KEY, API_SECRET = "screenshots-client-id", "screenshots-client-secret-long-enough-for-hs256"
DESKTOP, MOBILE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}


@dataclass
class Env:
    """What is running while the screenshots are taken."""
    app_url: str
    app: object
    shopify: SampleShopify
    storefront: StorefrontPreview
    shop: Shop


@dataclass
class Target:
    file: str
    url: Callable[[Env], str]
    viewport: dict
    ready: str | None = None  # a selector present once the page is complete
    full_page: bool = True


def best_seller(env: Env) -> str:
    """A product page with a full block: the sample store's first active product in stock."""
    product = next(p for p in env.shopify.store.products if p.status == "ACTIVE" and p.total_inventory)
    return env.storefront.product_url(product)


def admin(path: str) -> Callable[[Env], str]:
    """An admin page as the Shopify admin loads it (the bounce page gets the session token from App Bridge)."""
    return lambda env: f"{env.app_url}{path}?shop={env.shop.domain}&embedded=1" + (
        f"&product={best_seller_id(env)}" if path == "/recommendations" else "")


def best_seller_id(env: Env) -> int:
    return next(p for p in env.shopify.store.products if p.status == "ACTIVE" and p.total_inventory).id


TARGETS = [
    Target("storefront-desktop.png", best_seller, DESKTOP, ready="[data-pairwell-block].is-loaded"),
    Target("storefront-mobile.png", best_seller, MOBILE, ready="[data-pairwell-block].is-loaded"),
    Target("admin-home.png", admin("/"), DESKTOP, ready="#sync-runs tbody tr"),
    Target("admin-home-mobile.png", admin("/"), MOBILE, ready="#sync-runs tbody tr"),
    Target("admin-recommendations.png", admin("/recommendations"), DESKTOP, ready="#block-preview li"),
    Target("admin-models.png", admin("/models"), DESKTOP, ready="#evaluation tbody tr"),
    Target("admin-experiment.png", admin("/experiment"), DESKTOP, ready="#arms"),
    Target("admin-assistant.png", admin("/assistant"), DESKTOP, ready="details.conversation"),
]


def shop_activity(env: Env, browser, train_minutes: float) -> None:
    """Use the store before photographing its admin, so the pages show real data: shoppers browse the preview
    (the block's impressions, clicks and quick adds), ask the assistant, the merchant rates, pins and evaluates
    (and, with --train-minutes, trains the real base model through Train now)."""
    import requests

    context = browser.new_context(viewport=DESKTOP)
    keep_local(context)
    page = context.new_page()
    active = [p for p in env.shopify.store.products if p.status == "ACTIVE" and p.total_inventory][:12]
    for n, product in enumerate(active):
        page.goto(env.storefront.product_url(product))
        page.wait_for_selector("[data-pairwell-block].is-loaded", timeout=90_000)  # a busy machine builds the shelf
        if n % 3 == 0:  # a quick add from the block
            page.locator(".pairwell-block__item button").first.click()
            page.wait_for_timeout(300)
        if n % 4 == 1:  # a click through to a recommended product
            page.locator(".pairwell-block__item a").first.click()
            page.wait_for_load_state("load")
    context.close()
    chat = f"{env.storefront.origin}/apps/pairwell/chat"
    questions = (("screens-0001", "What's your return policy?"), ("screens-0002", "Can I talk to a person?"))
    for session, question in questions:
        requests.post(chat, json={"session_id": session, "message": question}, timeout=30).raise_for_status()

    def api(method: str, path: str, body: dict | None = None) -> dict:
        response = requests.request(method, f"{env.app_url}{path}", json=body, timeout=60,
                                    headers={"Authorization": f"Bearer {env.shopify.session_token()}"})
        response.raise_for_status()
        return response.json() if response.content else {}

    viewed = best_seller_id(env)
    shown = api("GET", f"/api/recommendations/{viewed}")["products"]
    for item, rating in zip(shown, (3, 3, 2), strict=False):
        api("POST", "/api/ratings", {"viewed_product_id": viewed, "product_id": item["id"], "rating": rating})
    api("POST", "/api/rules", {"kind": "exclude_pair", "product_id": viewed, "other_id": shown[-1]["id"]})
    if train_minutes:
        env.app.config["ADMIN_TRAINING"] = {**DEMO_TRAINING, "time_budget_seconds": train_minutes * 60}
        wait_for(lambda: api("POST", "/api/training-runs"), api, "/api/training-runs",
                 lambda answer: answer["training_runs"][0]["status"] not in ("queued", "running"))
    wait_for(lambda: api("POST", "/api/evaluations/recommenders"), api, "/api/evaluations/recommenders",
             lambda answer: answer["status"] != "running")


def wait_for(start: Callable, api: Callable, path: str, done: Callable[[dict], bool], limit: float = 1800) -> None:
    import time

    start()
    deadline = time.monotonic() + limit
    while not done(api("GET", path)):
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not finish in {limit:.0f} s")
        time.sleep(2)


@contextmanager
def running(workdir: Path) -> Iterator[Env]:
    """The app (served in a thread), the installed and synced sample shop, and the storefront preview."""
    database_url = f"sqlite:///{workdir / 'pairwell.db'}"
    migrations.upgrade(database_url=database_url)
    with SampleShopify(generate_store(), api_key=API_KEY, api_secret=API_SECRET) as shopify:
        app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "SHOPIFY_API_KEY": API_KEY,
                          "SHOPIFY_API_SECRET": API_SECRET, "SHOPIFY_APP_URL": "http://127.0.0.1",
                          "SHOPIFY_ADMIN_ORIGIN": shopify.origin, "REDIS_URL": None, "BULK_POLL_SECONDS": 0.05,
                          "PAIRWELL_ARTIFACTS": str(workdir / "artifacts"),
                          "APP_BRIDGE_URL": f"{shopify.origin}/app-bridge.js"})
        server = LoopbackServer(app)
        app_url = app.config["SHOPIFY_APP_URL"] = server.start()
        try:
            with app.app_context():
                response = app.test_client().get(f"/?shop={shopify.shop}&id_token={shopify.session_token()}"
                                                 "&embedded=1")
                if response.status_code != 200:
                    raise SystemExit(f"install failed: {response.status_code} {response.get_data(as_text=True)}")
                shop = db.session.scalars(db.select(Shop).where(Shop.domain == shopify.shop)).one()
                db.session.expunge(shop)
            warm_up(app).join()
            shopify.app_url = app_url
            with StorefrontPreview(shopify.store, shop=shopify.shop, app_url=app_url,
                                   api_secret=API_SECRET) as storefront:
                yield Env(app_url, app, shopify, storefront, shop)
        finally:
            server.stop()


def keep_local(context) -> None:
    """Nothing leaves loopback: CDN photos become placeholders, other outside requests are refused."""
    def outside(route):
        url = route.request.url
        if urlsplit(url).hostname == "cdn.shopify.com":
            route.fulfill(status=200, body=placeholder_image(url), content_type="image/svg+xml")
        else:
            route.abort("blockedbyclient")

    context.route(lambda url: urlsplit(url).hostname not in ("127.0.0.1", "localhost"), outside)


def capture(page, url: str, path: Path, *, ready: str | None = None, full_page: bool = True) -> Path:
    """Open `url`, wait until it is complete (its `ready` selector, the network quiet, images decoded), save a PNG."""
    page.goto(url, wait_until="load")
    if ready:
        page.wait_for_selector(ready, timeout=60_000)
    page.wait_for_load_state("networkidle")
    page.evaluate("Promise.all([...document.images].map((img) => img.decode().catch(() => {})))")
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--train-minutes", type=float, default=0.0,
                        help="Train the real base model through the admin's Train now first (the Models page then "
                             "shows its card); 0 photographs the admin without a model.")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: run scripts/install-test-packages (Debian's chromium).")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="pairwell-screenshots-") as workdir, running(Path(workdir)) as env, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        shop_activity(env, browser, args.train_minutes)
        for target in TARGETS:
            context = browser.new_context(viewport=target.viewport, device_scale_factor=1)
            keep_local(context)
            path = capture(context.new_page(), target.url(env), args.out / target.file, ready=target.ready,
                           full_page=target.full_page)
            context.close()
            print(f"saved {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        browser.close()


if __name__ == "__main__":
    main()
