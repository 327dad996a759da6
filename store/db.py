"""Engines and sessions for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from store.settings import Settings

_ENGINES: dict[str, Engine] = {}


def normalize_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever spelling the user gave."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def get_engine(settings: Settings) -> Engine:
    """One engine per URL per process (never shared across a fork: see ``dispose_engines``)."""
    url = normalize_url(settings.db_url)
    engine = _ENGINES.get(url)
    if engine is None:
        if url.startswith("sqlite"):
            settings.ensure_home()
            engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            # A bounded connect: during an outage requests fail (503) instead of hanging on SYN retries.
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                                   connect_args={"connect_timeout": 10})
        _ENGINES[url] = engine
    return engine


def dispose_engines() -> None:
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


def session_factory(settings: Settings) -> sessionmaker[Session]:
    return sessionmaker(get_engine(settings), expire_on_commit=False)


@contextlib.contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """A transaction: committed on success, rolled back on any error."""
    session = session_factory(settings)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def forget_engines_after_fork() -> None:
    """In a forked child: drop the parent's pooled connections without closing them (they are the parent's)."""
    for engine in _ENGINES.values():
        engine.dispose(close=False)
    _ENGINES.clear()
