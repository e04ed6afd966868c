"""`pairwell demo`, a plugin command (the `flask.commands` entry point): the production CLI never imports the
sample store, and an install without the `demo` extra still starts, saying what the demo needs."""

from __future__ import annotations

import click
from flask.cli import with_appcontext


@click.command()
@click.option("--port", default=8000, type=int)
@click.option("--no-serve", is_flag=True, help="Stop after the summary instead of serving.")
@click.option("--train-minutes", type=float, default=4.0, show_default=True,
              help="Fine-tuning time budget; 0 skips training.")
@with_appcontext
def demo(port, no_serve, train_minutes):
    """Install into the sample store, sync it, fine-tune on it, export the GGUF, then serve the app locally."""
    try:
        from .demo import run_demo
    except ModuleNotFoundError as missing:
        raise click.ClickException(f"the demo needs the sample store's libraries ({missing.name} is missing): "
                                   "pip install -e '.[demo]'") from None
    run_demo(port=port, serve=not no_serve, train_minutes=train_minutes)
