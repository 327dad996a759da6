"""Run Alembic migrations programmatically (``thalamus db upgrade``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from store.db import normalize_url
from store.settings import Settings

_ROOT = Path(__file__).resolve().parent.parent


def alembic_config(settings: Settings) -> Config:
    config = Config(str(_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(_ROOT / "migrations"))
    config.attributes["url"] = normalize_url(settings.db_url)
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    settings.ensure_home()
    command.upgrade(alembic_config(settings), revision)


def current_revision(settings: Settings) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from store.db import get_engine

    with get_engine(settings).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
