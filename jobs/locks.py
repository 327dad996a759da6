"""Exclusive job locks: a PostgreSQL advisory lock, or a file lock in THALAMUS_HOME for SQLite."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator

from sqlalchemy import text

from jobs.errors import JobLocked
from store.db import get_engine
from store.settings import Settings


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def exclusive(settings: Settings, name: str, key: str | None = None) -> Iterator[None]:
    """Hold the lock ``name`` (or ``name`` for ``key``: one lock per key, e.g. per expert) for the
    duration; raise JobLocked at once if another holder has it."""
    held = f"another {name} run is in progress" if key is None else f"another {name} run for {key!r} is in progress"
    if key is not None:
        name = f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if settings.is_sqlite:
        settings.ensure_home()
        with open(settings.home / f".{name}.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JobLocked(held) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    with get_engine(settings).connect() as connection:
        got = connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _key(name)}).scalar()
        connection.commit()
        if not got:
            raise JobLocked(held)
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _key(name)})
            connection.commit()
