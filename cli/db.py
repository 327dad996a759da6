"""The database schema."""

from __future__ import annotations

from cli._common import Group, verb
from store.settings import Settings


def upgrade(settings: Settings) -> str | None:
    """Apply Alembic migrations (SQLite and PostgreSQL).

    Returns the revision the database is at.
    """
    from store.migrate import current_revision
    from store.migrate import upgrade as run_upgrade

    run_upgrade(settings)
    return current_revision(settings)


GROUP = Group("db", "database schema (apply migrations)", (
    verb("upgrade", upgrade, show=lambda revision: print(f"database at revision {revision}")),
))
