"""train_router as a tracked job run: a bad row already in the loss table is skipped, counted, and reported."""

from __future__ import annotations

import pytest

from jobs.loss_table import load_loss_table
from jobs.runs import create_run, get_run
from store.db import session_scope
from store.queries import active_experts, ensure_prompts, upsert_losses
from store.schema import Expert, ExpertLoss
from tests.conftest import make_settings

EXPERTS = {"a": 0.2, "b": 0.6, "c": 1.0}


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
