"""`pairwell`: the command line (a Flask CLI group)."""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import FlaskGroup
from sqlalchemy import func, select

from . import create_app, migrations, shops
from .models import Order, OrderLine, Product, Variant, db

cli = FlaskGroup(create_app=create_app, add_default_commands=False,
                 help="Pairwell: AI 'pairs well with' recommendations for Shopify stores.")


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
    from worker.tasks import enqueue_full_sync

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
    """Serve the app with waitress (production: gunicorn 'shopify_app:create_app()')."""
    from waitress import serve as waitress_serve

    click.echo(f"Pairwell on http://{host}:{port}")
    waitress_serve(current_app._get_current_object(), host=host, port=port, threads=threads)


@cli.command()
@click.option("--queues", default="default,gpu", help="Comma-separated queues to consume.")
@click.option("--concurrency", default=1, type=int)
def worker(queues, concurrency):
    """Run a Celery worker (needs REDIS_URL)."""
    if not current_app.config["REDIS_URL"]:
        raise click.ClickException("Set REDIS_URL to run a worker; without it tasks run in-process.")
    celery = current_app.extensions["celery"]
    celery.worker_main(["worker", "-Q", queues, "-c", str(concurrency), "--loglevel=INFO"])


def store_counts(shop_id: int) -> dict[str, int]:
    return {model.__tablename__: db.session.scalar(select(func.count()).select_from(model)
                                                   .where(model.shop_id == shop_id))
            for model in (Product, Variant, Order, OrderLine)}


@cli.command()
@click.option("--port", default=8000, type=int)
@click.option("--no-serve", is_flag=True, help="Stop after the summary instead of serving.")
def demo(port, no_serve):
    """Install into the sample store, sync it, print a summary, then serve the app locally."""
    from .demo import run_demo

    run_demo(port=port, serve=not no_serve)
