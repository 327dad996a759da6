"""Computed losses (jobs/refresh_losses.py): each local expert scores sampled prompts once per version."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import select, update

from experts.local import LocalExpert
from jobs.refresh_losses import refresh_losses
from store.db import session_scope
from store.queries import ensure_prompts, prompt_hash, upsert_losses
from store.schema import Expert, ExpertLoss, Request
from tests.conftest import make_masked_lm, make_settings

PROMPTS = ["def add(a, b): return a + b", "the cat sat on the mat", "a contract binds both parties",
           "import os and print the path", "whisk two eggs with sugar"]
SAMPLED = PROMPTS[:3]  # the last two were routed but not sampled for labelling


@pytest.fixture(scope="module")
def mlm_uri(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: str) -> str:
    return make_masked_lm(tmp_path_factory.mktemp("refresh") / "mlm", tiny_backbone, 16, seed=3)


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, mlm_uri: str, thalamus_env: None):  # type: ignore[no-untyped-def]
    """A local expert, an external one and a retired local one; five routed prompts, three of them sampled."""
    from store.migrate import upgrade

    database = {"database_url": request.getfixturevalue("pg_url")} if request.param == "postgres" else {}
    settings = make_settings(tmp_path / "home", **database)
    upgrade(settings)
    with session_scope(settings) as session:
        session.add_all([Expert(name="mlm", kind="masked-lm", uri=mlm_uri, attributes={}),
                         Expert(name="api", kind="external", attributes={}),
                         Expert(name="old-mlm", kind="masked-lm", uri=mlm_uri, attributes={}, status="retired")])
        hashes = ensure_prompts(session, PROMPTS)
        session.add_all([Request(id=str(uuid.uuid4()), prompt_hash=h, expert="api", sampled=p in SAMPLED)
                         for p, h in zip(PROMPTS, hashes, strict=True)])
    return settings


def _computed(settings) -> dict[tuple[str, int], float]:  # type: ignore[no-untyped-def]
    """(prompt text, expert version) → loss of every computed row; only ``mlm`` may have any."""
    texts = {prompt_hash(p): p for p in PROMPTS}
    with session_scope(settings) as session:
        rows = session.execute(select(ExpertLoss.prompt_hash, ExpertLoss.expert, ExpertLoss.expert_version,
                                      ExpertLoss.loss).where(ExpertLoss.source == "computed")).tuples().all()
    assert {expert for _, expert, _, _ in rows} <= {"mlm"}
    return {(texts[h], version): loss for h, _, version, loss in rows}


def _expected(mlm_uri: str, prompts: list[str]) -> list[float]:
    return LocalExpert.load("mlm", "masked-lm", mlm_uri).losses(prompts)


def test_each_sampled_prompt_is_scored_once_by_each_active_local_expert(settings, mlm_uri: str) -> None:  # type: ignore[no-untyped-def]
    calls: list[tuple[float, str]] = []
    result = refresh_losses(settings, progress=lambda f, m: calls.append((f, m)), batch_size=2)
    assert result == {"rows_written": 3, "by_expert": {"mlm": 3}, "experts": ["mlm"], "skipped": 0,
                      "skipped_by_expert": {}}
    computed = _computed(settings)
    assert set(computed) == {(p, 1) for p in SAMPLED}
    assert [computed[(p, 1)] for p in SAMPLED] == pytest.approx(_expected(mlm_uri, SAMPLED), rel=1e-5)
    assert [m for _, m in calls] == ["mlm: 2/3 prompts scored", "mlm: 3/3 prompts scored",
                                     "scored 3 (prompt, expert) pairs"]
    assert [f for f, _ in calls] == pytest.approx([2 / 3, 1.0, 1.0])

    again = refresh_losses(settings)  # idempotent: nothing is pending any more
    assert (again["rows_written"], again["by_expert"]) == (0, {"mlm": 0})
    assert _computed(settings) == computed


def test_a_new_expert_version_rescores_its_stale_rows(settings, mlm_uri: str) -> None:  # type: ignore[no-untyped-def]
    unsampled = PROMPTS[3]  # scored at version 1 once (say, before its request aged out): stale at version 2
    with session_scope(settings) as session:
        upsert_losses(session, [{"prompt_hash": prompt_hash(unsampled), "expert": "mlm", "expert_version": 1,
                                 "source": "computed", "loss": 5.0}])
    assert refresh_losses(settings)["rows_written"] == 3
    with session_scope(settings) as session:
        session.execute(update(Expert).where(Expert.name == "mlm").values(version=2))
    result = refresh_losses(settings)
    assert result["rows_written"] == 4 and result["by_expert"] == {"mlm": 4}
    computed = _computed(settings)
    assert set(computed) == {(p, v) for p in [*SAMPLED, unsampled] for v in (1, 2)}  # old rows are kept
    assert computed[(unsampled, 1)] == 5.0
    assert computed[(unsampled, 2)] == pytest.approx(_expected(mlm_uri, [unsampled])[0], rel=1e-5)


def test_limit_caps_each_run(settings) -> None:  # type: ignore[no-untyped-def]
    assert refresh_losses(settings, limit=2)["rows_written"] == 2
    assert refresh_losses(settings, limit=2)["rows_written"] == 1
    assert refresh_losses(settings, limit=2)["rows_written"] == 0
    assert len(_computed(settings)) == 3


def test_losses_above_the_experts_bound_are_skipped_counted_and_retried(settings) -> None:  # type: ignore[no-untyped-def]
    # A random 30k-word masked-LM's loss is near ln(30522) ≈ 10 nats, far above a bound of 0.5.
    with session_scope(settings) as session:
        session.execute(update(Expert).where(Expert.name == "mlm").values(attributes={"max_loss": 0.5}))
    for _ in range(2):  # nothing was written, so the next run tries the same prompts again
        result = refresh_losses(settings)
        assert result == {"rows_written": 0, "by_expert": {"mlm": 0}, "experts": ["mlm"], "skipped": 3,
                          "skipped_by_expert": {"mlm": 3}}
    assert _computed(settings) == {}
