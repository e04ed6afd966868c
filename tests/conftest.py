"""Fixtures: the app on the database named by DATABASE_URL (make test runs SQLite and Postgres), migrated
once, emptied between tests; and the loopback sample Shopify that the app installs into and syncs from."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from core.storage.models import Base, db
from sample_store.catalog import generate_store
from sample_store.server import SampleShopify
from shopify_app import create_app, migrations

API_KEY = "test-client-id"
API_SECRET = "test-client-secret-long-enough-for-hs256"


@pytest.fixture(scope="session")
def database_url(tmp_path_factory) -> str:
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    migrations.upgrade(database_url=url)
    return url


@pytest.fixture(autouse=True)
def one_rate_limit_window(monkeypatch):
    """The rate limits count in fixed one-minute windows: hold each test inside the window it starts in, so a
    test that fills a limit never straddles a minute boundary (however slow the machine)."""
    from core.storage import cache

    started = time.time()
    monkeypatch.setattr(cache, "clock", lambda: started)


def finish_background_jobs(timeout: float = 180) -> None:
    """Wait for the jobs a test started on in-process threads (Sync now, Train now, a roll back and its
    precompute): their rows must not outlive the test's tables. Eager Celery tasks overlapping on two threads
    can leave Celery's process-wide "inside a task" flag set (each restores the value it found); once they have
    all ended no task is running, so clear it, or a later test's `.get()` is refused."""
    from celery.result import _set_task_join_will_block

    from worker.tasks import JOB_THREAD

    for thread in threading.enumerate():
        if thread.name.startswith(JOB_THREAD):
            thread.join(timeout)
    _set_task_join_will_block(False)


@pytest.fixture(scope="session")
def store():
    return generate_store(seed=11, orders=400)


@pytest.fixture
def shopify(store):
    with SampleShopify(store, api_key=API_KEY, api_secret=API_SECRET, shop="outdoor-test.myshopify.com") as server:
        yield server


@pytest.fixture
def app(database_url, shopify):
    app = create_app({
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SHOPIFY_API_KEY": API_KEY,
        "SHOPIFY_API_SECRET": API_SECRET,
        "SHOPIFY_APP_URL": "https://pairwell.test",
        "SHOPIFY_ADMIN_ORIGIN": shopify.origin,
        "REDIS_URL": None,
        "BULK_POLL_SECONDS": 0.01,
    })
    with app.app_context():
        yield app
        finish_background_jobs()
        db.session.remove()
        with db.engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                connection.execute(table.delete())
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def installed_shop(client, shopify):
    """The sample shop after a real embedded install (token exchange + full sync)."""
    response = client.get(f"/?shop={shopify.shop}&id_token={shopify.session_token()}")
    assert response.status_code == 200, response.get_data(as_text=True)
    from core.shopify import shops

    return shops.get_shop(shopify.shop)


def scratch_database(database_url: str, name: str) -> str:
    """A second, empty database beside the test one (for migration round trips)."""
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///")).with_name(f"{name}.db")
        path.unlink(missing_ok=True)
        return f"sqlite:///{path}"
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return database_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A randomly initialised two-layer Llama with SmolLM2's real tokenizer: the pipeline, fast."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from core.model.base_model import smollm2_gguf

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tiny_base, tmp_path_factory) -> Path:
    """The tiny model as a GGUF, through the real converter, for the real llama.cpp runtime."""
    from core.model.export import convert_to_gguf

    return convert_to_gguf(tiny_base, tmp_path_factory.mktemp("gguf") / "tiny.q8_0.gguf")
