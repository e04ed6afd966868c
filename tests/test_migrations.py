"""Migrations round-trip on this database and match the models exactly."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from core.storage.models import Base
from shopify_app import migrations

from .conftest import scratch_database


def test_upgrade_downgrade_upgrade_and_no_autogenerate_diff(database_url):
    url = scratch_database(database_url, "pairwell_migrations")
    engine = create_engine(url)
    try:
        migrations.upgrade(database_url=url)
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        migrations.downgrade("base", database_url=url)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrations.upgrade(database_url=url)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()
