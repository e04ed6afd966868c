"""`pairwell demo` end to end, as a new user runs it (without the final serve)."""

import sys

from click.testing import CliRunner

from sample_store.catalog import generate_store
from shopify_app.cli import cli

from .conftest import scratch_database


def test_demo_installs_syncs_and_summarises(database_url, monkeypatch, tmp_path):
    url = scratch_database(database_url, "pairwell_demo")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("PAIRWELL_BULK_POLL_SECONDS", "0.05")
    monkeypatch.setenv("PAIRWELL_ARTIFACTS", str(tmp_path))
    # Fine-tuning the real model takes minutes; the tiny-model chain test covers that path.
    result = CliRunner().invoke(cli, ["demo", "--no-serve", "--port", "8765", "--train-minutes", "0"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    store = generate_store()
    assert (f"{len(store.products)} products, {store.variant_count} variants, {len(store.orders)} orders, "
            f"{store.line_count} line items") in result.output
    assert "succeeded" in result.output
    assert "Policies: discounts, invoices, payment, returns, shipping" in result.output


def test_without_the_demo_extra_the_cli_starts_and_the_demo_says_what_it_needs(database_url, monkeypatch):
    """Production installs leave out the sample store's libraries: `pairwell` still runs, and `pairwell demo`
    names what is missing instead of a traceback."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setitem(sys.modules, "liquid", None)  # as if python-liquid were not installed
    for module in ("sample_store.demo", "sample_store.storefront"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    assert CliRunner().invoke(cli, ["--help"]).exit_code == 0
    result = CliRunner().invoke(cli, ["demo", "--no-serve"])
    assert result.exit_code == 1
    assert "liquid is missing" in result.output and "pip install -e '.[demo]'" in result.output
