"""`pairwell demo` end to end, as a new user runs it (without the final serve)."""

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
