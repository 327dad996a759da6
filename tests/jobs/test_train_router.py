"""The production training job at the default settings, on traffic logged through the daemon."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.conftest import make_masked_lm, make_settings

WORDS = ("alpha", "garden", "kernel", "river", "invoice", "theorem", "protein", "weather", "market", "poem")
PROMPTS = [f"Request {i}: tell me about the {WORDS[i % 10]} and the {WORDS[(i // 10) % 10]} near item {i * 7}."
           for i in range(300)]


@pytest.fixture(params=["sqlite", "postgresql"])
def default_settings(request: pytest.FixtureRequest, tmp_path: Path, tiny_backbone: str, thalamus_env: None):  # type: ignore[no-untyped-def]
    """Every setting at its default except the home, the database and the (tiny) backbone."""
    from store.db import session_scope
    from store.migrate import upgrade
    from store.schema import Expert

    database = {"database_url": request.getfixturevalue("pg_url")} if request.param == "postgresql" else {}
    settings = make_settings(tmp_path / "home", backbone=tiny_backbone, **database)
    upgrade(settings)
    with session_scope(settings) as session:
        for name, hidden, seed in (("small-mlm", 16, 1), ("large-mlm", 32, 2)):
            uri = make_masked_lm(tmp_path / name, tiny_backbone, hidden, seed)
            session.add(Expert(name=name, kind="masked-lm", uri=uri, attributes={"params": hidden * 1e6}))
    return settings


def test_default_settings_train_on_most_non_holdout_prompts(default_settings) -> None:  # type: ignore[no-untyped-def]
    """Label sampling and the validation split must not pick the same prompts: at the defaults
    (label share 0.1, validation share 0.1) a shared hash put every labelled prompt in validation."""
    from fastapi.testclient import TestClient

    from daemon.app import create_app
    from jobs.refresh_losses import refresh_losses
    from jobs.train_router import train_router
    from store.db import session_scope
    from store.schema import Request
    from store.settings import Settings

    settings = default_settings
    assert settings.label_share == Settings.model_fields["label_share"].default
    with TestClient(create_app(settings)) as client:  # leaving it flushes the request log
        for prompt in PROMPTS:
            assert client.post("/v1/route", json={"prompt": prompt}).status_code == 200
    with session_scope(settings) as session:
        sampled = session.scalar(select(func.count()).select_from(Request).where(Request.sampled.is_(True)))
    assert 20 <= sampled <= 45, f"{sampled} of {len(PROMPTS)} prompts sampled at label share {settings.label_share}"

    refresh_losses(settings)
    metrics = train_router(settings)["metrics"]
    assert metrics["n_train"] + metrics["n_holdout"] == sampled
    assert metrics["n_fit"] + metrics["n_val"] == metrics["n_train"] and metrics["n_val"] >= 1
    assert metrics["n_fit"] >= 0.7 * metrics["n_train"], metrics
