"""Schema only through Alembic: upgrade on empty databases, and no drift from the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from store.db import get_engine
from store.migrate import current_revision
from store.schema import Base

TABLES = {"experts", "router_versions", "prompts", "requests", "expert_losses", "feedback", "job_runs", "activations"}


def _check(settings) -> None:  # type: ignore[no-untyped-def]
    engine = get_engine(settings)
    assert TABLES <= set(inspect(engine).get_table_names())
    assert current_revision(settings) == "0001"
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_upgrade_head_on_empty_sqlite(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    _check(sqlite_settings)


def test_upgrade_head_on_empty_postgres(pg_settings) -> None:  # type: ignore[no-untyped-def]
    assert get_engine(pg_settings).dialect.name == "postgresql"
    _check(pg_settings)


def test_upgrade_is_idempotent(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    from store.migrate import upgrade

    upgrade(sqlite_settings)
    _check(sqlite_settings)
