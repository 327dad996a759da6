"""Cold start (jobs/bootstrap.py): some router version is active before the first request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from jobs.bootstrap import ensure_active_router
from jobs.errors import JobInputError
from jobs.router_store import load_version
from store.db import session_scope
from store.queries import ensure_prompts, upsert_losses
from store.schema import Activation, Expert, RouterVersion
from tests.conftest import make_settings
from tests.helpers import row_counts

# Sorted by name, as active_experts lists them: big (7e9 params), mystery (size unknown), small (1e9).
EXPERTS = {"big": {"params": 7e9}, "mystery": {}, "small": {"params": 1e9}}


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, tiny_backbone: str, thalamus_env: None):  # type: ignore[no-untyped-def]
    """A migrated database with no expert and no router version yet."""
    from store.migrate import upgrade

    database = {"database_url": request.getfixturevalue("pg_url")} if request.param == "postgres" else {}
    settings = make_settings(tmp_path / "home", backbone=tiny_backbone, **database)
    upgrade(settings)
    return settings


def _add_experts(settings) -> None:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        session.add_all([Expert(name=name, kind="external", attributes=attributes)
                         for name, attributes in EXPERTS.items()])


def _predict(settings, version_id: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        router = load_version(session.get(RouterVersion, version_id))
    return router.predict(["any prompt at all", "another one"])


def test_without_experts_it_refuses_and_writes_nothing(settings) -> None:  # type: ignore[no-untyped-def]
    before = row_counts(settings)
    with pytest.raises(JobInputError, match="no experts are registered"):
        ensure_active_router(settings)
    assert row_counts(settings) == before
    assert not settings.routers_dir.exists() or not any(settings.routers_dir.iterdir())  # no bundle left


def test_without_data_the_cold_start_prefers_the_largest_expert(settings) -> None:  # type: ignore[no-untyped-def]
    _add_experts(settings)
    version_id = ensure_active_router(settings)
    with session_scope(settings) as session:
        version = session.get(RouterVersion, version_id)
        assert (version.status, version.parent_id, version.decided_by) == ("active", None, "system")
        assert version.expert_order == ["big", "mystery", "small"]
        assert {k: version.metrics[k] for k in ("cold_start", "observed_rows")} == {"cold_start": True,
                                                                                   "observed_rows": 0}
        assert version.metrics["inference"]["check"]["passed"]  # the daemon serves the checked ONNX export
        log = [(a.router_version_id, a.previous_version_id, a.actor, a.reason)
               for a in session.scalars(select(Activation))]
    assert log == [(version_id, None, "system", "cold start")]
    # 1 − params / max(params); an expert of unknown size gets 1.0
    np.testing.assert_allclose(_predict(settings, version_id), [[0.0, 1.0, 1 - 1 / 7]] * 2, atol=1e-6)


def test_with_losses_the_cold_start_predicts_each_experts_mean(settings) -> None:  # type: ignore[no-untyped-def]
    _add_experts(settings)
    with session_scope(settings) as session:
        hashes = ensure_prompts(session, [f"question {i}" for i in range(4)])
        upsert_losses(session, [{"prompt_hash": h, "expert": name, "expert_version": 1, "source": "reported",
                                 "loss": loss}
                                for h, big, small in zip(hashes, (0.4, 0.6, 0.4, 0.6), (0.1, 0.3, 0.2, 0.2), strict=True)
                                for name, loss in (("big", big), ("small", small))])
    version_id = ensure_active_router(settings)
    with session_scope(settings) as session:
        metrics = session.get(RouterVersion, version_id).metrics
        assert {k: metrics[k] for k in ("cold_start", "observed_rows")} == {"cold_start": True, "observed_rows": 4}
    # big 0.5, small 0.2; mystery, never observed: the worst mean + 0.1 · max(1, 0.5) = 0.6
    np.testing.assert_allclose(_predict(settings, version_id), [[0.5, 0.6, 0.2]] * 2, atol=1e-6)


def test_an_active_version_is_returned_and_nothing_is_created(settings) -> None:  # type: ignore[no-untyped-def]
    _add_experts(settings)
    first = ensure_active_router(settings)
    counts = row_counts(settings)
    assert (counts["router_versions"], counts["activations"]) == (1, 1)
    assert ensure_active_router(settings) == first
    assert row_counts(settings) == counts
    assert len(list(settings.routers_dir.iterdir())) == 1
