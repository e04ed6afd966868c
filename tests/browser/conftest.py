"""Browser fixtures: the app served on a loopback port (`live_app`), the sample store's storefront preview in
front of it (`storefront`), and a Chromium page that fails its test on any console or page error (`page`).

Chromium is Debian's (`/usr/bin/chromium`, installed by `make test`): Playwright's own browser download cannot
run here. Nothing outside 127.0.0.1 can be reached either, so every browser context routes requests for other
hosts away before they leave: product photos on cdn.shopify.com get a placeholder image (the preview's
`placeholder_image`), anything else is aborted at once (the page then logs a console error, which fails the
test: a page that reaches out to the internet is a finding). No test ever waits on the network.

Contract (admin browser tests use these names):
- `live_app` (per module): `.url` (http://127.0.0.1:PORT), `.app` (the Flask app), `.shopify` (the
  SampleShopify it installed from), `.shop` (the installed, synced `core.storage.models.Shop`, detached: read its
  columns; query the database inside `with live_app.app.app_context():`), `.store` (the sample catalog).
- `storefront`: the running `StorefrontPreview` for `live_app` (`.origin`, `.proxy_mode`, `.proxy_delay`,
  `.block_settings`, `.proxy_path`, `.theme_font`, `.product_url(product)`); those five are back to normal
  after each test.
- `browser` (per session) and `page`: a Playwright sync `Page` in a fresh context (1280×900). Console errors
  and page errors fail the test at teardown unless they match a regex in `page.allowed_console_errors`
  or in `@pytest.mark.allow_console_errors("regex", ...)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask import Flask

from core.readiness import warm_up
from core.shopify.signatures import signed_app_proxy_query
from core.storage.models import Base, Shop, db
from sample_store.catalog import SampleStore
from sample_store.server import LoopbackServer, SampleShopify
from sample_store.storefront import PROXY_PREFIX, StorefrontPreview, placeholder_image
from shopify_app import create_app
from tests.conftest import API_KEY, API_SECRET, finish_background_jobs

CHROMIUM = Path("/usr/bin/chromium")
SHOP = "outdoor-test.myshopify.com"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def pytest_configure(config):
    config.addinivalue_line("markers", "allow_console_errors(*patterns): console errors this test expects")


# --- The app on a real port ---------------------------------------------------------------------------------

@dataclass
class LiveApp:
    url: str
    app: Flask
    shopify: SampleShopify
    shop: Shop
    store: SampleStore

    def flush_events(self) -> None:
        """Wait until the storefront events the app has received are in the database."""
        with self.app.app_context():
            writer = self.app.extensions.get("pairwell_events")
            if writer is not None:
                assert writer.flush(timeout=10), "storefront events were not stored"


def empty_tables(app: Flask) -> None:
    with app.app_context():
        db.session.remove()
        with db.engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                connection.execute(table.delete())
        db.engine.dispose()


@pytest.fixture(scope="module")
def live_app(database_url, store):
    """Pairwell served by werkzeug in a thread, installed into the sample shop and synced, its encoder and
    retrieval index already loaded (a first storefront request would otherwise outlast the block's budget).
    One per module: the suite runs twice (SQLite, Postgres), and an install and sync take a few seconds."""
    with SampleShopify(store, api_key=API_KEY, api_secret=API_SECRET, shop=SHOP) as shopify:
        app = create_app({
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": database_url,
            "SHOPIFY_API_KEY": API_KEY,
            "SHOPIFY_API_SECRET": API_SECRET,
            "SHOPIFY_APP_URL": "http://127.0.0.1",  # the real port below, once the server has one
            "SHOPIFY_ADMIN_ORIGIN": shopify.origin,
            "REDIS_URL": None,
            "BULK_POLL_SECONDS": 0.01,
            "PROXY_LIMIT_PER_IP": 100_000,  # every shopper here is 127.0.0.1
        })
        server = LoopbackServer(app)
        url = app.config["SHOPIFY_APP_URL"] = server.start()
        try:
            # Each request in the server thread has its own app context (and database session); this one is the
            # fixture's, closed before any test runs.
            with app.app_context():
                shop = install(app, shopify)
            shopify.app_url = url  # from now on the sample admin opens the app and webhooks reach it
            yield LiveApp(url=url, app=app, shopify=shopify, shop=shop, store=store)
        finally:
            server.stop()
            finish_background_jobs()
            empty_tables(app)


def install(app: Flask, shopify: SampleShopify) -> Shop:
    """Install as the Shopify admin does (embedded entry with a session token: token exchange and full sync),
    then warm what the storefront would wait for."""
    client = app.test_client()
    response = client.get(f"/?shop={shopify.shop}&id_token={shopify.session_token()}&embedded=1")
    assert response.status_code == 200, response.get_data(as_text=True)
    warm_up(app).join()
    product = next(p for p in shopify.store.products if p.status == "ACTIVE")
    warm = client.get("/proxy/recommendations?" + signed_app_proxy_query(shopify.shop, API_SECRET,
                                                                         product_id=product.id))
    assert warm.status_code == 200, warm.get_data(as_text=True)
    shop = db.session.scalars(db.select(Shop).where(Shop.domain == shopify.shop)).one()
    db.session.expunge(shop)  # loaded columns stay readable once the fixture's session is gone
    return shop


# --- The storefront preview ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def storefront_server(live_app):
    with StorefrontPreview(live_app.store, shop=live_app.shopify.shop, app_url=live_app.url,
                           api_secret=API_SECRET) as preview:
        yield preview


@pytest.fixture
def storefront(storefront_server):
    """The module's preview, its proxy and block settings back to normal after each test."""
    yield storefront_server
    storefront_server.proxy_mode, storefront_server.proxy_delay = "ok", 0.0
    storefront_server.block_settings = {}
    storefront_server.proxy_path = PROXY_PREFIX
    storefront_server.theme_font = "dawn"


# --- Chromium -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests drive Debian's Chromium "
                    "(scripts/install-test-packages installs it; `make test` runs that).", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


def keep_local(context) -> None:
    """Requests to hosts other than loopback never leave: a placeholder for CDN photos, an abort otherwise."""
    def outside(route):
        url = route.request.url
        if urlsplit(url).hostname == "cdn.shopify.com" and route.request.resource_type == "image":
            route.fulfill(status=200, body=placeholder_image(url), content_type="image/svg+xml")
        else:
            route.abort("blockedbyclient")

    context.route(lambda url: urlsplit(url).hostname not in LOCAL_HOSTS, outside)


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    keep_local(context)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(
        f"console error: {message.text} ({message.location.get('url', '')})"))
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.allowed_console_errors = [p for marker in request.node.iter_markers("allow_console_errors")
                                   for p in marker.args]
    yield page
    context.close()
    unexpected = [e for e in errors if not any(re.search(p, e) for p in page.allowed_console_errors)]
    if unexpected:
        pytest.fail("the page logged errors:\n" + "\n".join(unexpected), pytrace=False)
