"""The production training job: at the default settings on traffic logged through the daemon, and as a
tracked run with a bad row already in the loss table (skipped, counted and reported)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
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
    # the reported rows only: base + 0.01 · i over i = 0..11, a mean of base + 0.055
    assert dict(zip(table.experts, table.mean_losses(), strict=True)) == pytest.approx({"a": 0.255, "b": 0.655, "c": 1.055})


def test_a_poisoned_row_does_not_stop_training_and_is_reported_as_skipped(poisoned) -> None:  # type: ignore[no-untyped-def]
    from workers.tasks import execute

    run_id = create_run(poisoned, "train_router", {}, trigger="test")
    execute(poisoned, run_id)
    run = get_run(poisoned, run_id)
    assert run is not None and run.status == "succeeded", run.error if run else None
    assert run.result["loss_rows"] == {"read": {"reported": 36}, "skipped": 4,
                                       "skipped_by_expert": {"a": 1, "b": 2, "c": 1}}
    assert run.result["version_id"]


# ---- the job's own behaviour on a small loss table: registration, the auto-approve policy, warm starts ----

SMALL_BEST = [f"prompt number {i} about {topic}" for i, topic in enumerate(["code", "law", "docs", "math"] * 5)]


def _holdout_by_hand(prompts: list[str], share: float) -> int:
    """How many prompts the holdout takes: sha256("holdout:<prompt hash>")[:8] / 2^64 < share."""
    import hashlib

    from store.queries import prompt_hash

    return sum(int.from_bytes(hashlib.sha256(f"holdout:{prompt_hash(p)}".encode()).digest()[:8], "big") / 2.0**64
               < share for p in prompts)


@pytest.fixture(params=["sqlite", "postgres"])
def small_best(request: pytest.FixtureRequest, tmp_path: Path, tiny_backbone: str, thalamus_env: None):  # type: ignore[no-untyped-def]
    """Two external experts over 20 prompts: ``small`` (loss 0.1 everywhere) beats ``big`` (0.3 to 0.6)
    on every prompt, so any sensible router routes everything to ``small`` (routed loss exactly 0.1)."""
    from store.migrate import upgrade

    env = {"backbone": tiny_backbone, "train_epochs": "1", "train_lora_r": "0", "train_head_neighbors": "0"}
    if request.param == "postgres":
        env["database_url"] = request.getfixturevalue("pg_url")
    settings = make_settings(tmp_path / "home", **env)
    upgrade(settings)
    with session_scope(settings) as session:
        session.add_all([Expert(name="big", kind="external", attributes={"params": 7e9}),
                         Expert(name="small", kind="external", attributes={"params": 1e9})])
        hashes = ensure_prompts(session, SMALL_BEST)
        upsert_losses(session, [{"prompt_hash": h, "expert": name, "expert_version": 1, "source": "reported",
                                 "loss": loss}
                                for i, h in enumerate(hashes) for name, loss in (("big", 0.3 + i % 4 / 10),
                                                                                 ("small", 0.1))])
    return settings


def _activations(settings) -> list[tuple[int, int | None, str, str | None]]:  # type: ignore[no-untyped-def]
    from store.schema import Activation

    with session_scope(settings) as session:
        return [(a.router_version_id, a.previous_version_id, a.actor, a.reason)
                for a in session.scalars(select(Activation).order_by(Activation.id))]


def _version(settings, version_id: int):  # type: ignore[no-untyped-def]
    from store.schema import RouterVersion

    with session_scope(settings) as session:
        version = session.get(RouterVersion, version_id)
        session.expunge(version)
        return version


AUTO_REASON = "auto-approved: no router is active"


def test_a_first_candidate_is_registered_with_its_metrics_and_not_activated(small_best) -> None:  # type: ignore[no-untyped-def]
    from jobs.train_router import train_router

    result = train_router(small_best)
    n_holdout = _holdout_by_hand(SMALL_BEST, small_best.train_holdout_share)
    assert 1 <= n_holdout < len(SMALL_BEST)
    metrics = result["metrics"]
    assert (metrics["n_train"], metrics["n_holdout"]) == (len(SMALL_BEST) - n_holdout, n_holdout)
    assert metrics["n_fit"] + metrics["n_val"] == metrics["n_train"]
    assert (metrics["active"], metrics["active_version"], metrics["best_single_expert"]) == ({}, None, "small")
    assert metrics["candidate"]["routed_loss"] == pytest.approx(0.1)
    assert result["auto_approved"] is False
    assert result["loss_rows"] == {"read": {"reported": 40}, "skipped": 0, "skipped_by_expert": {}}
    version = _version(small_best, result["version_id"])
    assert (version.status, version.parent_id, version.expert_order) == ("candidate", None, ["big", "small"])
    assert version.training_window == {"rows": 20, "train": metrics["n_train"], "holdout": n_holdout}
    assert _activations(small_best) == []


def test_with_auto_approve_a_first_candidate_is_activated_by_the_policy(small_best) -> None:  # type: ignore[no-untyped-def]
    from jobs.train_router import train_router

    result = train_router(small_best.model_copy(update={"auto_approve": True}))
    assert result["auto_approved"] is True
    assert (_version(small_best, result["version_id"]).status, _version(small_best, result["version_id"]).decided_by) \
        == ("active", "policy")
    assert _activations(small_best) == [(result["version_id"], None, "policy", AUTO_REASON)]


def test_a_candidate_over_a_cold_start_is_promoted_even_when_the_holdout_says_no_better(small_best) -> None:  # type: ignore[no-untyped-def]
    """The cold start already routes everything to ``small`` (routed loss 0.1, the least possible), so the
    candidate cannot be lower; but a cold start was trained on nothing, and the policy replaces it (a
    candidate no better than a *trained* active router stays a candidate: tests/jobs/test_promotion_gate.py)."""
    from jobs.bootstrap import ensure_active_router
    from jobs.train_router import train_router

    cold = ensure_active_router(small_best)
    result = train_router(small_best.model_copy(update={"auto_approve": True}))
    metrics = result["metrics"]
    assert metrics["active_version"] == cold
    assert metrics["active"]["routed_loss"] == pytest.approx(0.1)
    assert metrics["candidate"]["routed_loss"] >= metrics["active"]["routed_loss"]
    assert result["auto_approved"] is True
    version = _version(small_best, result["version_id"])
    assert (version.status, version.parent_id) == ("active", cold)
    assert _activations(small_best)[-1] == (result["version_id"], cold, "policy",
                                             "auto-approved: the active router is a cold start, trained on no data")


def test_a_candidate_over_an_active_router_trained_before_an_expert_changed_is_promoted(small_best) -> None:  # type: ignore[no-untyped-def]
    """The active router (trained, not a cold start) learnt ``small`` at version 1; the expert changed
    (version 2, as a detected regression or an approved fine-tune leaves it); its rows at version 2 are
    as good as before, so the holdout cannot tell the candidate from the active router (difference 0).
    Over a current active router that holds the candidate; over a stale one the policy promotes it:
    the active router's beliefs describe an expert version that no longer exists."""
    from jobs.train_router import train_router
    from store.schema import GateDecision

    settings = small_best.model_copy(update={"auto_approve": True})
    first = train_router(settings)
    assert first["auto_approved"] is True and first["metrics"]["expert_versions"] == {"big": 1, "small": 1}
    with session_scope(settings) as session:
        session.scalars(select(Expert).where(Expert.name == "small")).one().version = 2
        upsert_losses(session, [{"prompt_hash": h, "expert": "small", "expert_version": 2, "source": "reported",
                                 "loss": 0.1} for h in ensure_prompts(session, SMALL_BEST)])
    second = train_router(settings)
    assert second["metrics"]["holdout_difference"]["high"] >= 0  # undecided (or worse) on its own
    assert second["metrics"]["expert_versions"] == {"big": 1, "small": 2}
    assert second["auto_approved"] is True
    assert _version(settings, second["version_id"]).status == "active"
    reason = _activations(settings)[-1][3]
    assert reason is not None and reason.startswith("auto-approved: the active router was trained before small v1 → v2")
    with session_scope(settings) as session:
        decision = session.scalars(select(GateDecision).order_by(GateDecision.id.desc())).first()
        assert decision is not None and (decision.decision, decision.reason) == ("promote", reason)
    # Nothing changed since: a third candidate, again no better, faces the ordinary rule and stays a candidate.
    third = train_router(settings)
    assert third["metrics"]["holdout_difference"]["high"] >= 0
    assert (third["auto_approved"], _version(settings, third["version_id"]).status) == (False, "candidate")
    with session_scope(settings) as session:
        held = session.scalars(select(GateDecision).where(GateDecision.router_version_id == third["version_id"])).one()
        assert held.decision == "hold" and held.reason.startswith("not auto-approved: ")


def test_a_candidate_trained_on_half_as_much_again_is_promoted_unless_worse(small_best) -> None:  # type: ignore[no-untyped-def]
    """The "more evidence" rule (``THALAMUS_GATE_GROWTH``, default 1.5) on both databases, through the job:
    a candidate the holdout cannot tell from the active router is promoted once its training set has
    grown 1.5-fold, and held when it has not."""
    from jobs.train_router import train_router

    settings = small_best.model_copy(update={"auto_approve": True})
    assert settings.gate_growth == 1.5
    first = train_router(settings)
    assert first["auto_approved"] is True
    more = [f"another prompt {i} about {topic}" for i, topic in enumerate(["code", "law", "docs", "math"] * 5)]
    with session_scope(settings) as session:
        upsert_losses(session, [{"prompt_hash": h, "expert": name, "expert_version": 1, "source": "reported",
                                 "loss": loss}
                                for i, h in enumerate(ensure_prompts(session, more))
                                for name, loss in (("big", 0.3 + i % 4 / 10), ("small", 0.1))])
    second = train_router(settings)
    grown_by = second["metrics"]["n_train"] / first["metrics"]["n_train"]
    assert grown_by >= 1.5 and second["metrics"]["holdout_difference"]["high"] >= 0  # undecided on its own
    assert second["auto_approved"] is True and _version(settings, second["version_id"]).status == "active"
    reason = _activations(settings)[-1][3]
    assert reason is not None and reason.startswith(
        f"auto-approved: the candidate was trained on {second['metrics']['n_train']:,} prompts, at least 1.5× "
        f"the {first['metrics']['n_train']:,} of any router that has served")
    # No new evidence since: the next candidate, again undecided, stays a candidate.
    third = train_router(settings)
    assert third["metrics"]["n_train"] == second["metrics"]["n_train"]
    assert (third["auto_approved"], _version(settings, third["version_id"]).status) == (False, "candidate")
    # An admin rolls back to the first router: the next candidate (no new data) has twice the first's
    # prompts, but not 1.5× those of the router rolled back from, so the rollback holds.
    from jobs.promote import rollback

    with session_scope(settings) as session:
        assert rollback(session, actor="admin").id == first["version_id"]
    after_rollback = train_router(settings)
    assert after_rollback["metrics"]["n_train"] >= 1.5 * first["metrics"]["n_train"]
    assert after_rollback["auto_approved"] is False
    # And with the rule off, a grown candidate is held like any undecided one.
    off = settings.model_copy(update={"gate_growth": 0.0})
    with session_scope(off) as session:
        upsert_losses(session, [{"prompt_hash": h, "expert": name, "expert_version": 1, "source": "reported",
                                 "loss": loss}
                                for i, h in enumerate(ensure_prompts(session, [p + " again" for p in SMALL_BEST + more]))
                                for name, loss in (("big", 0.3 + i % 4 / 10), ("small", 0.1))])
    fourth = train_router(off)
    assert fourth["metrics"]["n_train"] >= 1.5 * second["metrics"]["n_train"]
    assert (fourth["auto_approved"], _version(off, fourth["version_id"]).status) == (False, "candidate")


def test_a_new_expert_joins_the_parents_head(small_best) -> None:  # type: ignore[no-untyped-def]
    """Training after ``experts add``: the active router (two experts) is evaluated on its own columns
    (it used to crash the job on a shape mismatch) and the candidate's head grows a row."""
    from jobs.bootstrap import ensure_active_router
    from jobs.router_store import load_version
    from jobs.train_router import train_router

    cold = ensure_active_router(small_best)
    with session_scope(small_best) as session:
        session.add(Expert(name="fresh", kind="external", attributes={"params": 3e9}))
        upsert_losses(session, [{"prompt_hash": h, "expert": "fresh", "expert_version": 1, "source": "reported",
                                 "loss": 0.05} for h in ensure_prompts(session, SMALL_BEST)])
    result = train_router(small_best)
    version = _version(small_best, result["version_id"])
    assert (version.parent_id, version.expert_order) == (cold, ["big", "fresh", "small"])
    assert result["metrics"]["best_single_expert"] == "fresh"
    # the active router knows big and small only: judged on those, it routes to small (0.1) everywhere
    assert result["metrics"]["active"]["routed_loss"] == pytest.approx(0.1)
    assert load_version(version).predict(SMALL_BEST[:3]).shape == (3, 3)


def test_a_router_holding_a_placeholder_for_a_new_expert_is_replaced_once_a_candidate_learnt_it(small_best) -> None:  # type: ignore[no-untyped-def]
    """No request reaches a new expert before a router knows it, so the first router trained after
    ``experts add`` holds a placeholder for it (trained on no loss of it). Once the expert's first losses
    are in, a candidate that learnt them replaces it unless its interval says worse (found by bench loop
    --scenario new-expert: the candidate was held as undecided and the placeholder served on)."""
    from jobs.train_router import train_router

    settings = small_best.model_copy(update={"auto_approve": True})
    assert train_router(settings)["auto_approved"] is True
    with session_scope(settings) as session:
        session.add(Expert(name="fresh", kind="external", attributes={"params": 3e9}))
    placeholder = train_router(settings)
    assert placeholder["metrics"]["expert_rows"]["fresh"] == 0
    assert placeholder["auto_approved"] is True  # fresh is new to its parent: the stale-active rule
    with session_scope(settings) as session:
        upsert_losses(session, [{"prompt_hash": h, "expert": "fresh", "expert_version": 1, "source": "reported",
                                 "loss": 0.1} for h in ensure_prompts(session, SMALL_BEST)])
    learnt = train_router(settings)
    n = learnt["metrics"]["expert_rows"]["fresh"]
    assert n == learnt["metrics"]["n_train"] > 0
    assert learnt["metrics"]["holdout_difference"]["high"] >= 0  # as good as small: undecided on its own
    assert learnt["auto_approved"] is True and _version(settings, learnt["version_id"]).status == "active"
    reason = _activations(settings)[-1][3]
    assert reason is not None and reason.startswith(f"auto-approved: the active router was trained before fresh's "
                                                    f"first losses ({n})")
    # Nothing new since: the next undecided candidate stays a candidate.
    again = train_router(settings)
    assert (again["auto_approved"], _version(settings, again["version_id"]).status) == (False, "candidate")


def test_a_table_of_fewer_than_four_prompts_is_refused_and_nothing_is_written(small_best) -> None:  # type: ignore[no-untyped-def]
    from jobs.errors import JobInputError
    from jobs.train_router import train_router
    from store.schema import ExpertLoss, Prompt
    from tests.helpers import row_counts

    with session_scope(small_best) as session:
        keep = ensure_prompts(session, SMALL_BEST[:3])
        session.execute(ExpertLoss.__table__.delete().where(ExpertLoss.prompt_hash.not_in(keep)))
        session.execute(Prompt.__table__.delete().where(Prompt.hash.not_in(keep)))
    before = row_counts(small_best)
    with pytest.raises(JobInputError, match="the loss table has 3 prompts; at least 4 are needed to train"):
        train_router(small_best)
    assert row_counts(small_best) == before and before["router_versions"] == 0
    assert not small_best.routers_dir.exists() or not any(small_best.routers_dir.iterdir())


# ---- head selection (issue 14): the CV reads the training rows only, its table lands in the metrics ----

SELECT_PROMPTS = [f"case {i}: a question about {WORDS[i % 10]} with detail {i * 13}" for i in range(80)]


@pytest.fixture
def selectable(tmp_path: Path, tiny_backbone: str, thalamus_env: None):  # type: ignore[no-untyped-def]
    """Three external experts over 80 prompts whose best expert depends on the topic word, at the
    production defaults (head selection on) with the tiny encoder, frozen so the test stays fast."""
    from store.migrate import upgrade

    settings = make_settings(tmp_path / "home", backbone=tiny_backbone, train_epochs="1", train_lora_r="0",
                             train_select_mlp_hidden="16")
    upgrade(settings)
    with session_scope(settings) as session:
        session.add_all([Expert(name=name, kind="external") for name in EXPERTS])
        hashes = ensure_prompts(session, SELECT_PROMPTS)
        upsert_losses(session, [{"prompt_hash": h, "expert": name, "expert_version": 1, "source": "reported",
                                 "loss": base + (0.9 if (i % 10) % 3 == j else 0.0)}
                                for i, h in enumerate(hashes) for j, (name, base) in enumerate(EXPERTS.items())])
    return settings


def test_head_selection_cross_validates_on_training_rows_only(selectable, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The CV's row indices point into the prompts the training function was given, and those
    prompts are exactly the non-holdout ones: no holdout row is ever read by the selection."""
    import jobs.train_router as job
    import router.training as training
    from jobs.loss_table import holdout_mask
    from store.queries import prompt_hash

    seen: dict[str, object] = {}
    fit, select = job.fit, training.select_head

    def spy_fit(router, prompts, targets, config, progress=None):  # type: ignore[no-untyped-def]
        seen["prompts"] = list(prompts)
        return fit(router, prompts, targets, config, progress)

    def spy_select(features, targets, config, max_pool=None):  # type: ignore[no-untyped-def]
        selection = select(features, targets, config, max_pool=max_pool)
        seen["rows"], seen["folds"] = features.shape[0], selection.folds
        return selection

    monkeypatch.setattr(job, "fit", spy_fit)
    monkeypatch.setattr(training, "select_head", spy_select)
    result = job.train_router(selectable)
    holdout = {p for p, out in zip(SELECT_PROMPTS, holdout_mask([prompt_hash(p) for p in SELECT_PROMPTS],
                                                                 selectable.train_holdout_share), strict=True) if out}
    trained = seen["prompts"]
    assert isinstance(trained, list) and holdout and not holdout & set(trained)
    assert len(trained) + len(holdout) == len(SELECT_PROMPTS)
    folds = np.asarray(seen["folds"])
    assert seen["rows"] == len(trained) == folds.size  # one fold per training row, nothing else
    assert set(folds.tolist()) == set(range(selectable.train_select_folds))
    selection = result["metrics"]["head_selection"]
    assert selection["rows"] == len(trained) and selection["folds"] == selectable.train_select_folds
    assert {row["family"] for row in selection["table"]} == {"ridge", "neighbour", "blend", "mlp"}
    assert sum(row["chosen"] for row in selection["table"]) == 1
    assert 0 < result["metrics"]["candidate"]["interval_coverage"] <= 1


def test_the_selected_head_is_what_the_registered_bundle_serves(selectable) -> None:  # type: ignore[no-untyped-def]
    from jobs.router_store import load_version
    from jobs.train_router import train_router

    result = train_router(selectable)
    chosen = result["metrics"]["head_selection"]["chosen"]
    router = load_version(_version(selectable, result["version_id"]))
    config = router.config
    assert config.pool_layers == chosen["pool_layers"]
    assert config.head_neighbors == (chosen["k"] if chosen["family"] in ("neighbour", "blend", "shrink") else 0)
    assert config.head_blend == (0.5 if chosen["family"] == "blend" else 0.0)
    assert config.head_shrink == (chosen["kappa"] if chosen["family"] == "shrink" else 0.0)
    assert config.spread_neighbors == result["metrics"]["head_selection"]["spread_k"] > 0
    predicted, spread = router.predict_with_spread(SELECT_PROMPTS[:4])
    assert predicted.shape == spread.shape == (4, 3) and np.isfinite(spread).all() and (spread >= 0).all()
    assert np.allclose(predicted, router.predict(SELECT_PROMPTS[:4]), atol=1e-5)


def test_bad_selection_settings_stop_the_cli_at_start_up(tmp_path: Path, thalamus_env: None) -> None:
    import subprocess
    import sys

    from pydantic import ValidationError

    from store.settings import Settings

    cases: list[tuple[str, Any, str]] = [("train_select_neighbors", [], "k grid"),
                                         ("train_select_neighbors", [10, 0], "k must be >= 1"),
                                         ("train_select_alphas", [], "α grid"),
                                         ("train_select_pool_layers", [], "pooled-layer grid"),
                                         ("train_select_shrinks", [10, -1], "pseudo-count")]
    for field, value, words in cases:
        with pytest.raises(ValidationError, match=words):
            Settings(**{field: value})
    env = {**os.environ, "THALAMUS_HOME": str(tmp_path / "home"), "THALAMUS_TRAIN_SELECT_NEIGHBORS": "[10, 0]"}
    done = subprocess.run([sys.executable, "-m", "cli", "admin", "versions"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "k must be >= 1" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "home" / "thalamus.db").exists()


def test_shrunk_neighbour_candidates_are_opt_in(selectable, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """THALAMUS_TRAIN_SELECT_SHRINKS adds the shrunk neighbour family to the CV table of the job, and the
    head the job chose is what the registered bundle serves (head_shrink its κ when a shrink was chosen)."""
    from jobs.router_store import load_version
    from jobs.train_router import train_router

    monkeypatch.setenv("THALAMUS_TRAIN_SELECT_SHRINKS", "[2, 50]")
    settings = type(selectable)()
    assert settings.train_select_shrinks == [2.0, 50.0]
    result = train_router(settings)
    selection = result["metrics"]["head_selection"]
    shrinks = [row for row in selection["table"] if row["family"] == "shrink"]
    assert {row["kappa"] for row in shrinks} == {2.0, 50.0}
    chosen = selection["chosen"]
    config = load_version(_version(settings, result["version_id"])).config
    assert config.head_shrink == (chosen["kappa"] if chosen["family"] == "shrink" else 0.0)
