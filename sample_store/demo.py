"""`pairwell demo`: install, sync and fine-tune against the loopback sample store, then serve (dev only)."""

from __future__ import annotations

import logging
import sys
import time
from urllib.parse import urlencode

import click
from flask import current_app
from sqlalchemy import func, select

from core.assistant.replies import admits_assistant
from core.recommendations.serving import finish_rebuilds
from core.shopify import shops
from core.shopify.signatures import signed_app_proxy_query
from core.storage.models import Conversation, ModelVersion, Order, OrderLine, Product, SyncRun, Variant, db
from shopify_app import migrations
from worker.tasks import enqueue_pipeline

from .catalog import MERCHANT_ASSISTANT, MERCHANT_POLICIES, generate_store
from .server import SampleShopify
from .storefront import StorefrontPreview

DEMO_TRAINING = {"batch_tokens": 1024, "learning_rate": 5e-4, "epochs": 1, "eval_examples": 48}


def run_demo(*, port: int, serve: bool, train_minutes: float = 0) -> dict:
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
    # The admin's pages get their session tokens from the sample admin's App Bridge; Train now stays short.
    app.config["APP_BRIDGE_URL"] = f"{shopify.origin}/app-bridge.js"
    app.config["ADMIN_TRAINING"] = {**DEMO_TRAINING, "time_budget_seconds": (train_minutes or 4) * 60}
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
    counts = store_counts(shop.id)
    elapsed = time.perf_counter() - started
    click.echo(f"Installed {shop.domain} (token expires {shop.access_token_expires_at:%H:%M} UTC, refreshable).")
    click.echo(f"Sync run #{run.id} {run.status}: {counts['products']} products, {counts['variants']} variants, "
               f"{counts['orders']} orders, {counts['order_lines']} line items in {elapsed:.1f}s")
    if run.status != "succeeded":
        raise click.ClickException(f"sync failed: {run.error}")
    shop.policies = {**MERCHANT_POLICIES, **shop.policies}  # as the merchant would enter them in the admin
    shop.assistant = shop.assistant or MERCHANT_ASSISTANT
    db.session.commit()
    click.echo(f"Policies: {', '.join(sorted(shop.policies))}")
    if train_minutes > 0:
        fine_tune(shop, train_minutes)
    scripted_conversation(app, shop, store)
    if serve:
        from waitress import serve as waitress_serve

        from core.readiness import warm_up

        warm_up(app)
        preview = StorefrontPreview(store, shop=shopify.shop, app_url=f"http://127.0.0.1:{port}",
                                    api_secret=app.config["SHOPIFY_API_SECRET"])
        preview.start()
        product = next(p for p in store.products if p.status == "ACTIVE")
        click.echo(f"Serving Pairwell on http://127.0.0.1:{port} (Ctrl-C to stop).")
        click.echo(f"The admin, as the sample store's Shopify admin opens it: {shopify.origin}/admin/apps/pairwell")
        click.echo(f"The storefront preview (the theme block through the App Proxy): "
                   f"{preview.origin}/products/{product.handle}")
        click.echo("Ask for recommendations as the storefront does (a signed App Proxy request):\n"
                   f"  curl \"$(.venv/bin/pairwell proxy-url {shopify.shop} {product.id})\"")
        try:
            waitress_serve(app, host="127.0.0.1", port=port, threads=8)
        finally:
            preview.stop()
    finish_rebuilds()
    shopify.stop()
    return counts


def fine_tune(shop, minutes: float) -> None:
    """Datasets → LoRA fine-tune within the budget → GGUF → verify; then the base and the tuned model side by
    side on the same held-out cart."""
    click.echo(f"Fine-tuning for up to {minutes:g} minutes (datasets, LoRA, merge, GGUF, llama.cpp check, "
               "deploy gate)...")
    stages = logging.StreamHandler(sys.stdout)  # each stage says when it starts, as it starts
    stages.setFormatter(logging.Formatter("  %(message)s"))
    # The pipeline's stages, and the complements' progress within the retrieval each stage builds.
    loggers = [logging.getLogger(name) for name in ("worker", "core.model", "core.recommendations.complements")]
    for logger in loggers:
        logger.addHandler(stages)
        logger.setLevel(logging.INFO)
    try:
        run = enqueue_pipeline(shop, hyperparameters={**DEMO_TRAINING, "time_budget_seconds": minutes * 60})
    finally:
        for logger in loggers:
            logger.removeHandler(stages)
    if run.status != "succeeded":
        raise click.ClickException(f"training run #{run.id} failed in {run.stage}: {run.error}")
    model = db.session.scalars(db.select(ModelVersion).where(ModelVersion.training_run_id == run.id)).one()
    click.echo(f"Model v{model.version}: {model.gguf_path} ({model.size_bytes / 1e6:.0f} MB, {model.quantization}), "
               f"eval loss {run.eval_loss:.3f}, {run.tokens_per_second:.0f} tokens/s")
    check = model.metrics["verification"]
    click.echo(f"\nHeld-out prompt: {check['prompt']}")
    for label, ranked, mass in (("Base model", check["base_ranked"], check["base_label_mass"]),
                                ("Fine-tuned", check["ranked"], check["label_mass"])):
        click.echo(f"\n{label} ({100 * mass:.0f}% of its next-token probability on the candidates' letters), "
                   f"its first {len(ranked)}:\n" + "\n".join(f"  {i}. {line}" for i, line in enumerate(ranked, 1)))
    gate = model.metrics.get("gate")
    if gate:
        click.echo(f"\nDeploy gate: {gate['reason']}.")
    if model.status == "deployed":
        serves = (gate or {}).get("serves")
        ranks = "ranks every block" if serves is None else \
            f"ranks the blocks of {', '.join(serves)} requests (the retrieval's list serves the rest)" if serves \
            else "ranks no block (every block shows the retrieval's list)"
        words = "words the assistant's replies that pass every check" if admits_assistant(model) else \
            "leaves the assistant's replies to the facts"
        click.echo(f"\nModel v{model.version} is live on the embedded llama.cpp host: it {ranks} and {words}; "
                   "storefront blocks for the best-sellers are precomputed.")
    else:
        click.echo(f"\nModel v{model.version} is not live: the storefront shows the retrieval's list with reasons "
                   "from the store's own facts.")


def scripted_conversation(app, shop, store) -> None:
    """A short chat with the support assistant through the signed App Proxy route, as a shopper would have it:
    a stock question, a sold-out size, a policy, and a request for a person."""
    sizes = next(p for p in store.products if p.status == "ACTIVE" and p.variant_axis == "Size"
                 and all(v.inventory_quantity for v in p.variants))
    sold_out = next((p, v) for p in store.products for v in p.variants if p.status == "ACTIVE"
                    and not v.inventory_quantity)
    questions = [f"Do you have the {sizes.title} in {sizes.variants[1].title}?",
                 f"Is the {sold_out[0].title} in {sold_out[1].title} in stock?",
                 "What's your return policy?", "Can I talk to a person?"]
    session = f"demo-{time.time_ns()}"
    click.echo("\nThe support assistant (POST /apps/pairwell/chat, signed as Shopify's App Proxy signs it):")
    with app.test_client() as client:
        for question in questions:
            url = "/proxy/chat?" + signed_app_proxy_query(shop.domain, app.config["SHOPIFY_API_SECRET"])
            started = time.perf_counter()
            reply = client.post(url, json={"session_id": session, "message": question}).json
            took = time.perf_counter() - started
            turn = db.session.scalars(db.select(Conversation).where(Conversation.session_id == session)).one()
            source = turn.messages[-1]["source"]
            click.echo(f"  Shopper:   {question}")
            click.echo(f"  Assistant: {reply['reply']}")
            products = ", ".join(p["title"] for p in reply["products"])
            click.echo(f"             [{reply['strategy']}, from the {source}, {took:.2f}s"
                       + (f"; shows {products}" if products else "")
                       + (f"; hands off to {reply['handoff_url'].split('?')[0]}" if reply["handoff"] else "") + "]")
            db.session.expire_all()


def store_counts(shop_id: int) -> dict[str, int]:
    return {model.__tablename__: db.session.scalar(select(func.count()).select_from(model)
                                                   .where(model.shop_id == shop_id))
            for model in (Product, Variant, Order, OrderLine)}
