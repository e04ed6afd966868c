"""`pairwell`: the command line (a Flask CLI group)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import click
from flask import current_app
from flask.cli import FlaskGroup
from sqlalchemy import select

from core.config import require_production
from core.shopify import shops
from core.storage.models import ModelVersion, db
from worker.tasks import PipelineError, enqueue_full_sync, enqueue_pipeline, enqueue_rollback

from . import create_app, migrations


def quiet_libraries() -> None:
    """A terminal run shows Pairwell's stage lines and bars, not the libraries' own loading bars and warnings
    (transformers and the Hub read these before their first use)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|peft|transformers)\.")


cli = FlaskGroup(create_app=create_app, add_default_commands=False,
                 help="Pairwell: AI 'pairs well with' recommendations for Shopify stores.",
                 callback=quiet_libraries)


@cli.group("db")
def db_group():
    """Database migrations."""


@db_group.command()
@click.argument("revision", default="head")
def upgrade(revision):
    """Apply migrations up to REVISION (default: head)."""
    migrations.upgrade(revision)
    click.echo(f"Database upgraded to {revision}.")


@db_group.command()
@click.argument("revision", default="-1")
def downgrade(revision):
    """Revert migrations down to REVISION (default: one step)."""
    migrations.downgrade(revision)
    click.echo(f"Database downgraded to {revision}.")


@cli.command()
@click.argument("shop")
def sync(shop):
    """Re-run a full sync of SHOP (reconcile with Shopify)."""
    record = shops.get_shop(shop)
    if record is None or not record.is_installed:
        raise click.ClickException(f"{shop} is not installed.")
    run = enqueue_full_sync(record)
    click.echo(f"sync run #{run.id}: {run.status} {run.counts}" + (f" ({run.error})" if run.error else ""))
    if run.status == "failed":
        sys.exit(1)


@cli.command()
@click.option("--host", default="127.0.0.1")
@click.option("--port", default=8000, type=int)
@click.option("--threads", default=8, type=int)
def serve(host, port, threads):
    """Serve the app with waitress (production: gunicorn 'shopify_app.wsgi:app')."""
    from waitress import serve as waitress_serve

    from core.readiness import warm_up

    require_production(current_app.config)
    warm_up(current_app._get_current_object())
    click.echo(f"Pairwell on http://{host}:{port}")
    waitress_serve(current_app._get_current_object(), host=host, port=port, threads=threads)


@cli.command()
@click.option("--queues", default="default,gpu", help="Comma-separated queues to consume.")
@click.option("--concurrency", default=1, type=int)
@click.option("--beat", is_flag=True, help="Also run the schedule (the sweeper that re-sends what the broker lost).")
def worker(queues, concurrency, beat):
    """Run a Celery worker (needs REDIS_URL)."""
    if not current_app.config["REDIS_URL"]:
        raise click.ClickException("Set REDIS_URL to run a worker; without it tasks run in-process.")
    require_production(current_app.config)
    celery = current_app.extensions["celery"]
    # --beat: this worker also runs the schedule (the sweeper); run exactly one such worker.
    celery.worker_main(["worker", "-Q", queues, "-c", str(concurrency), "--loglevel=INFO", *(["-B"] if beat else [])])


def _installed_shop(domain: str):
    shop = shops.get_shop(domain)
    if shop is None or not shop.is_installed:
        raise click.ClickException(f"{domain} is not installed.")
    return shop


def _run_chain(shop: str, **options):
    """The pipeline chain, or part of it, for an installed SHOP; says how the run ended."""
    try:
        run = enqueue_pipeline(_installed_shop(shop), **options)
    except PipelineError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"training run #{run.id}: {run.status} ({run.stage})" + (f": {run.error}" if run.error else ""))
    if run.status == "failed":
        sys.exit(1)
    return run


@cli.command()
@click.argument("shop")
@click.option("--conversations", type=click.Path(exists=True, dir_okay=False),
              help="Past support conversations to merge (CSV question,answer[,strategy] or JSONL messages).")
def dataset(shop, conversations):
    """Build the training datasets for SHOP from its synced orders, catalog and policies."""
    run = _run_chain(shop, conversations=conversations, last="build_datasets")
    for key, value in (run.dataset_stats or {}).items():
        click.echo(f"  {key}: {value}")


@cli.command()
@click.argument("shop")
@click.option("--minutes", type=float, default=None, help="Stop training after this many minutes.")
@click.option("--epochs", type=int, default=None)
@click.option("--learning-rate", type=float, default=None)
@click.option("--lora-r", type=int, default=None)
def train(shop, minutes, epochs, learning_rate, lora_r):
    """Build datasets and fine-tune a LoRA adapter for SHOP (resumes from a checkpoint when retried)."""
    options = {"epochs": epochs, "learning_rate": learning_rate, "lora_r": lora_r,
               "time_budget_seconds": minutes * 60 if minutes else None}
    _run_chain(shop, last="train", hyperparameters={k: v for k, v in options.items() if v is not None})


@cli.command("export")
@click.argument("shop")
@click.option("--quantization", type=click.Choice(["q8_0", "f16"]), default="q8_0")
def export_command(shop, quantization):
    """Merge SHOP's latest trained adapter, convert it to GGUF and verify it in llama.cpp."""
    run = _run_chain(shop, first="export", last="export", quantization=quantization)
    model = db.session.scalars(select(ModelVersion).where(ModelVersion.training_run_id == run.id)).first()
    if model is None:
        raise click.ClickException(f"run #{run.id} exported no model")
    click.echo(f"model v{model.version} ({model.status}): {model.gguf_path} "
               f"({model.size_bytes / 1e6:.1f} MB, sha256 {model.sha256[:12]})")


@cli.command("proxy-url")
@click.argument("shop")
@click.argument("product_id", type=int)
@click.option("--cart", default="", help="Comma-separated product ids in the cart.")
@click.option("--limit", default=4, type=int)
def proxy_url(shop, product_id, cart, limit):
    """Print a freshly signed App Proxy URL (valid 90 s) for SHOP's recommendations, as Shopify would send it."""
    from core.shopify.signatures import signed_app_proxy_query

    params = {"product_id": product_id, "limit": limit, **({"cart": cart} if cart else {})}
    query = signed_app_proxy_query(shop, current_app.config["SHOPIFY_API_SECRET"], **params)
    click.echo(f"{current_app.config['SHOPIFY_APP_URL']}/proxy/recommendations?{query}")


@cli.command()
@click.argument("shop")
@click.option("--rollback", "roll_back", is_flag=True, help="Bring back the previously live model version.")
@click.option("--force", is_flag=True, help="Deploy even a version the evaluation gate refused.")
def deploy(shop, roll_back, force):
    """Make SHOP's newest verified model live on the model host (Ollama or embedded), or roll back. The gate
    scores it first if it has not yet; a version the gate refused goes live only with --force."""
    if roll_back:
        model = enqueue_rollback(_installed_shop(shop))
        if model is None:
            raise click.ClickException(f"{shop} has no earlier model version to roll back to.")
    else:
        run = _run_chain(shop, first="gate", last="deploy", force=force)
        model = db.session.scalars(select(ModelVersion).where(ModelVersion.training_run_id == run.id)).one()
        if model.status != "deployed":
            raise click.ClickException(model.metrics.get("deploy", f"model v{model.version} was not deployed"))
    click.echo(f"model v{model.version} is {model.status} on {model.metrics.get('deployment', {}).get('host')}")


@cli.command()
@click.argument("shop", required=False)
@click.option("--orders", "orders_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV or Parquet with order_id, product_id, created_at (optional quantity, title, customer_id).")
@click.option("--products", "products_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV or Parquet with product_id, title.")
@click.option("--columns", default="", help="Our name=their column, comma-separated, e.g. order_id=InvoiceNo.")
@click.option("--skip-orders-prefix", default=None, help="Drop orders whose id starts with this (cancellations).")
@click.option("--skip-products", default="", help="Comma-separated product ids that are not products (postage).")
@click.option("--test-fraction", default=0.2, show_default=True, type=float)
@click.option("--cases", default=5000, show_default=True, type=int, help="Test baskets to score (sampled).")
@click.option("--model", "model_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A fine-tuned GGUF: also score the blend as the model re-ranks it, on the same cases.")
@click.option("--train-minutes", default=0.0, type=float,
              help="Fine-tune a model on sampled training orders for this long first, then score it.")
@click.option("--model-cases", default=300, show_default=True, type=int, help="Test cases the model rows score.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report here.")
def evaluate(shop, orders_file, products_file, columns, skip_orders_prefix, skip_products, test_fraction, cases,
             model_file, train_minutes, model_cases, out):
    """Score the recommenders on a shop's orders or on order files: hide one product per test basket."""
    import json

    from tqdm import tqdm

    from worker.tasks import run_offline_evaluation

    if not orders_file and not shop:
        raise click.UsageError("Name a SHOP or give --orders FILE.")
    report = run_offline_evaluation(
        shop=None if orders_file else _installed_shop(shop), orders_file=orders_file, products_file=products_file,
        columns=columns, skip_orders_prefix=skip_orders_prefix, skip_products=skip_products,
        test_fraction=test_fraction, cases=cases, model_file=model_file, train_minutes=train_minutes,
        model_cases=model_cases,
        progress=lambda items, label: tqdm(items, desc=label, leave=False, disable=None))
    source, split = report["source"], report["split"]
    click.echo(f"{source}: {split['train_orders']} training and {split['test_orders']} test "
               f"orders (split at {split['split_at']}), catalog {split['catalog']}, "
               f"{split['cases_with_history']} test cases with the customer's earlier orders")
    if "model_trained_on" in report:
        click.echo(f"model trained on: {json.dumps(report['model_trained_on'])}")
    if "blend" in report:
        click.echo(f"blend weights {json.dumps(report['blend']['weights'])}, chosen on the newest 15% of the "
                   f"training orders: {json.dumps(report['blend']['validation'])}")
    click.echo(report.pop("markdown"))
    for name, ratio in report["against_co_purchase"].items():
        click.echo(f"{name}: {ratio['hr@10']}× co-purchase's HR@10, {ratio['ndcg@10']}× its NDCG@10")
    if "against_co_purchase_with_history" in report:
        ratio = report["against_co_purchase_with_history"]
        click.echo(f"blend (served): {ratio['hr@10']}× the HR@10 of co-purchase + history, {ratio['ndcg@10']}× "
                   "its NDCG@10")
    if out:
        out.write_text(json.dumps(report, indent=2))
        click.echo(f"report: {out}")


@cli.command("evaluate-assistant")
@click.argument("shop")
@click.option("--model", "model_file", type=click.Path(exists=True, dir_okay=False),
              help="The fine-tuned GGUF to score (default: the shop's live version).")
@click.option("--base/--no-base", default=True, show_default=True, help="Also score the base model.")
@click.option("--questions", default=240, show_default=True, type=int, help="About this many held-out questions.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report here.")
def evaluate_assistant(shop, model_file, base, questions, out):
    """Score the support assistant on held-out questions from SHOP's catalog, policies and orders."""
    import json

    from worker.tasks import run_assistant_evaluation

    report = run_assistant_evaluation(shop=_installed_shop(shop), model_file=model_file, base=base, size=questions)
    click.echo(f"{report['questions']} questions: {json.dumps(report['kinds'])}")
    click.echo("| replies from | factual accuracy | forbidden claims | handoff P / R | BLEU | ROUGE-L | p50 / p95 s "
               "| model-worded | drafts: factual / forbidden |")
    click.echo("|---|---|---|---|---|---|---|---|---|")
    for label, row in report["results"].items():
        served, drafts = row["served"], row["drafts"] or {}
        click.echo(f"| {label} | {served['factual_accuracy']:.3f} | {served['forbidden_claim_rate']:.3f} | "
                   f"{row['handoff_precision']:.2f} / {row['handoff_recall']:.2f} | {served['bleu']:.1f} | "
                   f"{served['rouge_l']:.3f} | {row['latency_p50_s']:.2f} / {row['latency_p95_s']:.2f} | "
                   f"{row['model_worded_share'] if row['model_worded_share'] is not None else '-'} | "
                   f"{drafts.get('factual_accuracy', '-')} / {drafts.get('forbidden_claim_rate', '-')} |")
    if out:
        out.write_text(json.dumps(report, indent=2))
        click.echo(f"report: {out}")
