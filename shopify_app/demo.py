"""`pairwell demo`: the whole install-and-sync path against the loopback sample store."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import click
from flask import current_app

from . import migrations, shops
from .models import SyncRun, db
from .sample_store import SampleShopify, generate_store


def run_demo(*, port: int, serve: bool) -> dict:
    app = current_app._get_current_object()
    if app.config["REDIS_URL"]:
        raise click.ClickException("The demo runs tasks in-process: unset REDIS_URL.")
    started = time.perf_counter()
    migrations.upgrade()
    click.echo("Database migrated: " + app.config["SQLALCHEMY_DATABASE_URI"])

    store = generate_store()
    shopify = SampleShopify(store, api_key=app.config["SHOPIFY_API_KEY"], api_secret=app.config["SHOPIFY_API_SECRET"],
                            app_url=f"http://127.0.0.1:{port}")
    app.config["SHOPIFY_ADMIN_ORIGIN"] = shopify.start()
    click.echo(f"Sample store {shopify.shop} on {shopify.origin}: {len(store.products)} products, "
               f"{len(store.orders)} orders")

    # Install exactly as the Shopify admin does: load the embedded entry with a fresh session token.
    with app.test_client() as client:
        query = urlencode({"shop": shopify.shop, "id_token": shopify.session_token(), "embedded": "1"})
        response = client.get(f"/?{query}")
        if response.status_code != 200:
            raise click.ClickException(f"install failed: {response.status_code} {response.get_data(as_text=True)}")

    shop = shops.get_shop(shopify.shop)
    run = db.session.scalars(db.select(SyncRun).where(SyncRun.shop_id == shop.id).order_by(SyncRun.id.desc())).first()
    from .cli import store_counts

    counts = store_counts(shop.id)
    elapsed = time.perf_counter() - started
    click.echo(f"Installed {shop.domain} (token expires {shop.access_token_expires_at:%H:%M} UTC, refreshable).")
    click.echo(f"Sync run #{run.id} {run.status}: {counts['products']} products, {counts['variants']} variants, "
               f"{counts['orders']} orders, {counts['order_lines']} line items in {elapsed:.1f}s")
    if run.status != "succeeded":
        raise click.ClickException(f"sync failed: {run.error}")
    if serve:
        from waitress import serve as waitress_serve

        click.echo(f"Serving Pairwell on http://127.0.0.1:{port} (Ctrl-C to stop).")
        click.echo(f"Open it as the sample store's admin would: {shopify.origin}/admin/apps/pairwell")
        waitress_serve(app, host="127.0.0.1", port=port, threads=8)
    shopify.stop()
    return counts
