"""The production training job: at the default settings on traffic logged through the daemon, and as a
tracked run with a bad row already in the loss table (skipped, counted and reported)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from jobs.loss_table import load_loss_table
from jobs.runs import create_run, get_run
from store.db import session_scope
from store.queries import active_experts, ensure_prompts, upsert_losses
from store.schema import Expert, ExpertLoss
from tests.conftest import make_masked_lm, make_settings

EXPERTS = {"a": 0.2, "b": 0.6, "c": 1.0}
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



@pytest.fixture
def poisoned(pg_url: str, tmp_path, tiny_backbone: str, thalamus_env: None):  # type: ignore[no-untyped-def]
    """PostgreSQL with 12 prompts × 3 experts of good losses, then three poisoned rows written directly."""
    from store.migrate import upgrade

    settings = make_settings(tmp_path / "home", database_url=pg_url, backbone=tiny_backbone, train_epochs="1",
                             train_lora_layers="1", train_head_neighbors="0")
    upgrade(settings)
    with session_scope(settings) as session:
        session.add_all([Expert(name=name, kind="external", attributes={"max_loss": 50} if name == "c" else {})
                         for name in EXPERTS])
        hashes = ensure_prompts(session, [f"prompt number {i} about topic {i % 3}" for i in range(12)])
        upsert_losses(session, [{"prompt_hash": h, "expert": name, "expert_version": 1, "source": "reported",
                                 "loss": base + 0.01 * i}
                                for i, h in enumerate(hashes) for name, base in EXPERTS.items()])
        # What one request could store before losses were bounded, and rows nobody should have written.
        session.add_all([
            ExpertLoss(prompt_hash=hashes[0], expert="a", expert_version=1, source="computed", loss=1e308),
            ExpertLoss(prompt_hash=hashes[1], expert="b", expert_version=1, source="computed", loss=float("inf")),
            ExpertLoss(prompt_hash=hashes[2], expert="c", expert_version=1, source="computed", loss=60.0),  # > its max_loss
            ExpertLoss(prompt_hash=hashes[3], expert="b", expert_version=1, source="computed", loss=-1.0),
        ])
    return settings


def test_loss_table_skips_and_counts_rows_outside_the_bound(poisoned) -> None:  # type: ignore[no-untyped-def]
    with session_scope(poisoned) as session:
        table = load_loss_table(session, active_experts(session), poisoned.max_loss)
    assert table.skipped == {"a": 1, "b": 2, "c": 1}
    assert table.rows_read == {"reported": 36}
    assert all(m is not None and m < 1.2 for m in table.mean_losses())


def test_a_poisoned_row_does_not_stop_training_and_is_reported_as_skipped(poisoned) -> None:  # type: ignore[no-untyped-def]
    from workers.tasks import execute

    run_id = create_run(poisoned, "train_router", {}, trigger="test")
    execute(poisoned, run_id)
    run = get_run(poisoned, run_id)
    assert run is not None and run.status == "succeeded", run.error if run else None
    assert run.result["loss_rows"] == {"read": {"reported": 36}, "skipped": 4,
                                       "skipped_by_expert": {"a": 1, "b": 2, "c": 1}}
    assert run.result["version_id"]
