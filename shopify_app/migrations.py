"""Alembic, driven from the app's own configuration (`pairwell db upgrade`, the demo, the tests)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from flask import current_app

from core.config import ROOT


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ROOT / "migrations"))
    url = database_url or current_app.config["SQLALCHEMY_DATABASE_URI"]
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(revision: str = "head", database_url: str | None = None) -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(revision: str = "-1", database_url: str | None = None) -> None:
    command.downgrade(alembic_config(database_url), revision)
