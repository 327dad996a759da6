"""Alembic environment: migrates the database named by thalamus settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from store.db import normalize_url
from store.schema import Base
from store.settings import Settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return normalize_url(config.attributes.get("url") or Settings().db_url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
