"""Held-out evaluation of stored router versions (the demo report's numbers) on the miniature library."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.heldout import HeldOut, baselines, route_heldout, routed_summary, score_heldout
from tests.conftest import BuiltDemo, make_settings


def test_summary_and_baselines_on_a_known_matrix() -> None:
    losses = np.tile([[1.0, 3.0], [1.0, 3.0], [4.0, 1.5], [4.0, 1.5]], (4, 1))
    heldout = HeldOut([f"p{i}" for i in range(16)], ["big", "small"], losses, np.array([100.0, 10.0]))
    base = baselines(heldout)
    assert base == {"n_prompts": 16, "best_single_expert": "small", "best_single_loss": 2.25,
                    "best_single_params": 10, "oracle_loss": 1.25}
    oracle = routed_summary(heldout, np.tile([0, 0, 1, 1], 4))
    assert oracle["routed_loss"] == 1.25 and oracle["mean_params"] == 55
    assert oracle["gain_over_best_single"] == 1.0 and oracle["gain_ci95"][0] > 0
    assert oracle["share"] == {"big": 0.5, "small": 0.5}
    single = routed_summary(heldout, np.ones(16, dtype=int))
    assert single["gain_over_best_single"] == 0.0 and single["gain_ci95"] == [0.0, 0.0]


def test_a_stored_version_routes_the_heldout_prompts_as_the_daemon_would(
        mini_demo: BuiltDemo, tiny_backbone: str, tmp_path: Path, thalamus_env: None) -> None:
    from experts.registry import register_experts
    from jobs.bootstrap import ensure_active_router
    from router.flags import parse_flags
    from store.db import session_scope
    from store.migrate import upgrade

    library = mini_demo.library
    settings = make_settings(tmp_path / "home", backbone=tiny_backbone)
    upgrade(settings)
    with session_scope(settings) as session:
        register_experts(session, library.experts)
    version = ensure_active_router(settings)  # no losses yet: the cold start prefers the largest expert

    prompts = [r["prompt"] for r in library.prompts(split="heldout")][:12]
    heldout = score_heldout(prompts, library.experts)
    assert heldout.losses.shape == (12, 5) and np.isfinite(heldout.losses).all()
    chosen = route_heldout(settings, version, heldout)
    assert (chosen == heldout.column("general-large")).all()
    _, smallest = parse_flags("[Flag: smallest model] x")
    flagged = route_heldout(settings, version, heldout, smallest)
    assert (heldout.params[flagged] == heldout.params.min()).all()
    with pytest.raises(ValueError, match="no router version 999"):
        route_heldout(settings, 999, heldout)

    # The demo report's hook for the promotion gate: nothing until a gate records a verdict.
    from cli.demo import gate_numbers
    from store.schema import GateDecision

    assert gate_numbers(settings, version, {}) is None
    assert gate_numbers(settings, version, {"off_policy": {"estimate": 0.1}}) == {"estimate": 0.1}
    with session_scope(settings) as session:
        session.add(GateDecision(router_version_id=version, decision="promote", basis="off-policy",
                                 numbers={"estimate": 0.2, "ci95": [0.1, 0.3]}, actor="policy"))
    assert gate_numbers(settings, version, {"off_policy": {"estimate": 0.1}}) == {
        "decision": "promote", "basis": "off-policy", "actor": "policy", "reason": None,
        "numbers": {"estimate": 0.2, "ci95": [0.1, 0.3]}}
