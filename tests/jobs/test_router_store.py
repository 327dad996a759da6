"""Registering a router version checks that its bundle loads the way a daemon loads it.

An expert row with an attribute the constraint matrix refuses stands for data written before
attributes were validated (or by hand): every bundle that routes over that expert is recorded
as rejected, with the reason, and can be neither approved nor activated.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from jobs.bootstrap import ensure_active_router
from jobs.errors import CandidateRejected, JobInputError
from jobs.promote import activate_version, approve
from jobs.recipe import TrainRecipe
from jobs.router_store import save_version
from jobs.train_router import train_router
from router.model import Router
from store.db import session_scope
from store.queries import active_router_version, ensure_prompts, upsert_losses
from store.schema import Expert, RouterVersion
from tests.conftest import make_settings

PROMPTS = [f"prompt number {i} about {topic}" for i, topic in enumerate(["code", "law", "docs", "math"] * 3)]


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request, tmp_path, tiny_backbone: str, thalamus_env: None):  # type: ignore[no-untyped-def]
    from store.migrate import upgrade

    env = {"backbone": tiny_backbone, "train_epochs": "1", "train_lora_r": "0", "train_head_neighbors": "0"}
    if request.param == "postgres":
        env["database_url"] = request.getfixturevalue("pg_url")
    settings = make_settings(tmp_path / "home", **env)
    upgrade(settings)
    with session_scope(settings) as session:
        session.add(Expert(name="big", kind="external", attributes={"params": 7e9, "release_date": "2025-01-01"}))
        session.add(Expert(name="small", kind="external", attributes={"params": 1e9, "release_date": "2025-06-01"}))
    return settings


def _corrupt_attributes(settings) -> None:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        expert = session.scalars(select(Expert).where(Expert.name == "small")).one()
        expert.attributes = {"params": 1e9, "release_date": "notadate"}


def _save(settings) -> tuple[int, str, str | None]:  # type: ignore[no-untyped-def]
    router = Router.from_config(TrainRecipe.from_settings(settings).router_config(["big", "small"]))
    with session_scope(settings) as session:
        version = save_version(session, settings, router, parent_id=None, status="candidate", metrics={},
                               training_window={})
        return version.id, version.status, version.reason


def test_a_loadable_bundle_is_registered_as_a_candidate(settings) -> None:  # type: ignore[no-untyped-def]
    version_id, status, reason = _save(settings)
    assert (status, reason) == ("candidate", None)
    with session_scope(settings) as session:
        approve(session, version_id, actor="alice")
    with session_scope(settings) as session:
        assert active_router_version(session).id == version_id


def test_a_bundle_that_would_not_load_is_recorded_as_rejected(settings) -> None:  # type: ignore[no-untyped-def]
    _corrupt_attributes(settings)
    version_id, status, reason = _save(settings)
    assert status == "rejected"
    assert "failed the load check" in reason and "release_date='notadate'" in reason
    for verb, message in [(lambda s: approve(s, version_id, actor="bob"), "only a candidate"),
                          (lambda s: activate_version(s, version_id, actor="bob", reason="x"), "was rejected")]:
        with pytest.raises(JobInputError, match=message):
            with session_scope(settings) as session:
                verb(session)
    with session_scope(settings) as session:
        assert active_router_version(session) is None


def test_training_and_cold_start_never_activate_an_unloadable_bundle(settings) -> None:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        hashes = ensure_prompts(session, PROMPTS)
        upsert_losses(session, [{"prompt_hash": h, "expert": name, "expert_version": 1, "loss": loss, "source": "reported"}
                                for i, h in enumerate(hashes) for name, loss in (("big", 0.2 + i % 3 / 10), ("small", 0.5))])
    _corrupt_attributes(settings)
    with pytest.raises(CandidateRejected, match="cold-start router version 1 was recorded as rejected"):
        ensure_active_router(settings)
    with pytest.raises(CandidateRejected, match="router version 2 was recorded as rejected.*notadate"):
        train_router(settings, params={"epochs": 1})
    with session_scope(settings) as session:
        assert [(v.id, v.status) for v in session.scalars(select(RouterVersion).order_by(RouterVersion.id))] == [
            (1, "rejected"), (2, "rejected")]
