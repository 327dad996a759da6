"""Off-policy evaluation and the promotion gate in-process, on SQLite and PostgreSQL, with real routers on the
tiny encoder: logged traffic with known propensities, feedback only for the served expert, a candidate
trained by the production job (better), one trained on swapped labels (worse), and the gate's verdicts."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from jobs.loss_table import holdout_mask
from store.db import session_scope
from store.queries import insert_requests, prompt_hash, upsert_losses
from store.schema import Activation, Expert, GateDecision, RouterVersion
from tests.conftest import make_settings
from tests.helpers import row_counts

EXPERTS = {"coder": {"params": 7e9}, "writer": {"params": 1e9}}
NOUNS = ("garden", "river", "market", "letter", "kitchen", "forest", "harbour", "village")
CODE = [f"def compute_{i}(values): return sorted(v * {i} for v in values if v > {i % 7})" for i in range(300)]
PROSE = [f"The old {NOUNS[i % 8]} was quiet on day {i}, and she wrote a long letter home." for i in range(300)]
# True mean losses: the coder is good at code, the writer at prose.
TRUTH = {("code", "coder"): 0.2, ("code", "writer"): 0.7, ("prose", "coder"): 0.8, ("prose", "writer"): 0.3}
SIZE = {"size": 1.0}  # with this λ the size penalty (coder 1.0, writer 1/7) outweighs a 0.05 lead of coder


def _loss(topic: str, expert: str, i: int) -> float:
    return TRUTH[topic, expert] + 0.05 * ((i * 7919) % 11 - 5) / 5  # deterministic noise in [-0.05, 0.05]


def log_uniform_traffic(settings, seed: int = 0) -> list[dict]:  # type: ignore[no-untyped-def]
    """One request per prompt, served by a uniformly random expert (propensity 0.5, the whole distribution
    logged); every fifth request carries λ size=1. Feedback (a reported loss) only for the served expert."""
    rng = np.random.default_rng(seed)
    rows, losses = [], []
    for topic, prompts in (("code", CODE), ("prose", PROSE)):
        for i, prompt in enumerate(prompts):
            expert = ("coder", "writer")[int(rng.integers(2))]
            lambdas = SIZE if i % 5 == 0 else {}
            rows.append({"id": str(uuid.uuid4()), "prompt": prompt, "lambdas": lambdas, "router_version_id": None,
                         "expert": expert, "predicted_losses": {}, "propensity": 0.5, "sampled": False,
                         "latency_ms": 1.0, "app": "test", "action_probs": {"coder": 0.5, "writer": 0.5},
                         "explored": True})
            losses.append({"prompt_hash": prompt_hash(prompt), "expert": expert, "expert_version": 1,
                           "loss": _loss(topic, expert, i), "source": "reported"})
    with session_scope(settings) as session:
        insert_requests(session, rows)
        upsert_losses(session, losses)
    return rows


def build_router(settings, targets_from: str = "truth", parent_id: int | None = None,  # type: ignore[no-untyped-def]
                 status: str = "candidate", constant: tuple[float, float] | None = None) -> int:
    """Register a router: ``constant`` predicts these losses everywhere (coder, writer); else it is trained on
    the loss table, with the experts' columns swapped when ``targets_from == "swapped"`` (a worse router)."""
    from jobs.loss_table import load_loss_table
    from jobs.promote import activate
    from jobs.recipe import TrainRecipe
    from jobs.router_store import save_version
    from router.model import Router, init_head_cold_start
    from router.training import train_router as fit
    from store.queries import active_experts

    recipe = TrainRecipe.from_settings(settings)
    router = Router.from_config(recipe.router_config(list(EXPERTS)))
    if constant is not None:
        init_head_cold_start(router, list(constant), [None, None])
    else:
        with session_scope(settings) as session:
            table = load_loss_table(session, active_experts(session))
        train = np.flatnonzero(~holdout_mask(table.hashes, settings.train_holdout_share))
        targets = table.targets[train][:, ::-1] if targets_from == "swapped" else table.targets[train]
        fit(router, [table.prompts[i] for i in train], targets, recipe.train_config())
    with session_scope(settings) as session:
        version = save_version(session, settings, router, parent_id=parent_id, status="candidate", metrics={},
                               training_window={})
        if status == "active":
            activate(session, version, "test", "the logging-time router")
        return version.id


@pytest.fixture(params=["sqlite", "postgresql"])
def traffic(request: pytest.FixtureRequest, tmp_path: Path, tiny_backbone: str, thalamus_env: None):  # type: ignore[no-untyped-def]
    from store.migrate import upgrade

    database = {"database_url": request.getfixturevalue("pg_url")} if request.param == "postgresql" else {}
    settings = make_settings(tmp_path / "home", backbone=tiny_backbone, train_epochs="1", train_lora_r="0",
                             train_head_neighbors="20", gate_min_logged_rows="60", ope_bootstrap_samples="500",
                             **database)
    upgrade(settings)
    with session_scope(settings) as session:
        session.add_all([Expert(name=name, kind="external", attributes=attrs) for name, attrs in EXPERTS.items()])
    rows = log_uniform_traffic(settings)
    return settings, rows


def _expected_active_ips(settings, rows) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """By hand: the constant active router picks coder (0.50 < 0.55) except under λ size=1 (writer)."""
    topics = {p: ("code", i) for i, p in enumerate(CODE)} | {p: ("prose", i) for i, p in enumerate(PROSE)}
    kept = [r for r, held in zip(rows, holdout_mask([prompt_hash(r["prompt"]) for r in rows],
                                                    settings.train_holdout_share), strict=True) if held]
    total = 0.0
    for r in kept:
        chosen = "writer" if r["lambdas"] else "coder"
        topic, i = topics[r["prompt"]]
        total += (r["expert"] == chosen) / 0.5 * _loss(topic, r["expert"], i)
    return total / len(kept), len(kept)


def test_the_gate_promotes_a_better_candidate_and_refuses_a_worse_one(traffic) -> None:  # type: ignore[no-untyped-def]
    from jobs.errors import JobInputError
    from jobs.evaluate_candidate import evaluate_candidate
    from jobs.promote import GateRefused, approve_gated
    from jobs.train_router import train_router

    settings, rows = traffic
    first = build_router(settings, constant=(0.5, 0.55), status="active")

    # The production job trains on the logged feedback, evaluates inline, and the policy asks the gate.
    result = train_router(settings.model_copy(update={"auto_approve": True}))
    better = result["version_id"]
    off = result["metrics"]["off_policy"]
    expected_ips, n_rows = _expected_active_ips(settings, rows)
    assert (off["candidate_version"], off["active_version"], off["n_rows"]) == (better, first, n_rows)
    assert n_rows >= settings.gate_min_logged_rows and off["explored_rows"] == n_rows
    assert off["skipped"]["not_holdout"] == len(rows) - n_rows
    assert off["active"]["ips"]["value"] == pytest.approx(expected_ips)
    assert off["active"]["support"] == 1.0 and off["candidate"]["support"] == 1.0  # uniform logging covers all
    for name in ("ips", "snips", "dr"):  # true loss: active ≈ 0.5, the trained candidate ≈ 0.25
        assert off["difference"][name]["high"] < 0, off["difference"]
    assert result["auto_approved"] is True
    with session_scope(settings) as session:
        assert session.get(RouterVersion, better).status == "active"
        decision = session.scalars(select(GateDecision)).one()
        assert (decision.router_version_id, decision.active_version_id, decision.decision, decision.basis,
                decision.actor) == (better, first, "promote", "off-policy", "policy")
        assert decision.numbers["difference"]["high"] < 0 and decision.numbers["n_rows"] == n_rows

    # A router trained on swapped labels: evaluated on demand against the new active version, refused.
    worse = build_router(settings, targets_from="swapped", parent_id=better)
    off = evaluate_candidate(settings, None, {"version": worse})["off_policy"]
    assert off["active_version"] == better and off["difference"]["dr"]["low"] > 0, off["difference"]
    before = row_counts(settings)
    with pytest.raises(GateRefused, match=rf"router version {worse} is worse than the active version {better} "
                                          r"\(off-policy DR candidate − active on \d+ logged requests: \+0\.\d{4} "):
        approve_gated(settings, worse, actor="alice", reason="looks fine")
    after = row_counts(settings)
    assert after == {**before, "gate_decisions": before["gate_decisions"] + 1}  # the refusal, nothing else
    with pytest.raises(JobInputError, match="needs a reason"):
        approve_gated(settings, worse, actor="alice", reason=" ", force=True)
    assert row_counts(settings) == after

    approve_gated(settings, worse, actor="alice", reason="the swapped router is wanted for a drill", force=True)
    with session_scope(settings) as session:
        assert session.get(RouterVersion, worse).status == "active"
        last = session.scalars(select(Activation).order_by(Activation.id.desc())).first()
        assert (last.router_version_id, last.actor, last.reason) == (
            worse, "alice", "the swapped router is wanted for a drill")
        assert [(d.decision, d.actor) for d in session.scalars(select(GateDecision)
                                                               .where(GateDecision.router_version_id == worse)
                                                               .order_by(GateDecision.id))] == [
            ("refuse", "alice"), ("forced", "alice")]


def test_evaluating_an_unknown_version_is_refused_and_writes_nothing(traffic) -> None:  # type: ignore[no-untyped-def]
    from jobs.errors import JobInputError
    from jobs.evaluate_candidate import evaluate_candidate

    settings, _ = traffic
    before = row_counts(settings)
    with pytest.raises(JobInputError, match="router version 99 does not exist"):
        evaluate_candidate(settings, None, {"version": 99})
    with pytest.raises(JobInputError, match="there is no candidate router version to evaluate"):
        evaluate_candidate(settings, None, {})
    assert row_counts(settings) == before
