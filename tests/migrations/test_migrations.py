"""Schema only through Alembic: upgrade on empty databases, and no drift from the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from store.db import get_engine
from store.migrate import current_revision
from store.schema import Base

TABLES = {"experts", "router_versions", "prompts", "requests", "expert_losses", "feedback", "job_runs", "activations",
          "shadow_decisions", "gate_decisions"}


def _check(settings) -> None:  # type: ignore[no-untyped-def]
    engine = get_engine(settings)
    assert TABLES <= set(inspect(engine).get_table_names())
    assert current_revision(settings) == "0004"
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


def _job_run_columns(settings) -> set[str]:  # type: ignore[no-untyped-def]
    return {column["name"] for column in inspect(get_engine(settings)).get_columns("job_runs")}


@pytest.mark.parametrize("backend", ["sqlite_settings", "pg_settings"])
def test_0002_heartbeat_columns_upgrade_and_downgrade(request, backend: str) -> None:  # type: ignore[no-untyped-def]
    """Rows written before 0002 get attempt 1; downgrading turns 'lost' (unknown to 0001 code) into 'failed'."""
    from alembic import command

    from store.migrate import alembic_config, upgrade

    settings = request.getfixturevalue(backend)
    config = alembic_config(settings)
    command.downgrade(config, "0001")
    assert current_revision(settings) == "0001"
    assert not {"heartbeat_at", "worker", "attempt", "retry_of"} & _job_run_columns(settings)
    insert = text("INSERT INTO job_runs (kind, params, \"trigger\", status, progress, created_at) "
                  "VALUES ('train_router', '{}', 'cli', :status, 0.0, CURRENT_TIMESTAMP)")
    with get_engine(settings).begin() as connection:
        connection.execute(insert, {"status": "running"})

    upgrade(settings)
    _check(settings)
    with get_engine(settings).begin() as connection:
        assert connection.execute(text("SELECT attempt, heartbeat_at, worker, retry_of FROM job_runs")).one() == (
            1, None, None, None)
        connection.execute(text("UPDATE job_runs SET status = 'lost'"))

    command.downgrade(config, "0001")
    assert not {"heartbeat_at", "worker", "attempt", "retry_of"} & _job_run_columns(settings)
    with get_engine(settings).connect() as connection:
        assert connection.execute(text("SELECT status FROM job_runs")).scalar_one() == "failed"
    upgrade(settings)
    _check(settings)
