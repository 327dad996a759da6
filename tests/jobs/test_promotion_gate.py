"""The promotion gate's verdict and the auto-approve policy, from stored metrics (pure functions)."""

from __future__ import annotations

import pytest

from jobs.promotion_gate import HOLD, PROMOTE, grown, learnt_since, policy, refusal, stale_experts, verdict


def _off(low: float, high: float, n_rows: int = 500, active: int = 1) -> dict:
    return {"active_version": active, "n_rows": n_rows,
            "difference": {"dr": {"value": (low + high) / 2, "low": low, "high": high}}}


def _holdout(low: float, high: float, active: int = 1) -> dict:
    return {"value": (low + high) / 2, "low": low, "high": high, "n_rows": 40, "active_version": active}


@pytest.mark.parametrize(("metrics", "basis", "word", "decision"), [
    ({"off_policy": _off(-0.05, -0.01)}, "off-policy", "better", PROMOTE),
    ({"off_policy": _off(-0.05, 0.01)}, "off-policy", "undecided", HOLD),  # 0 inside: no promotion
    ({"off_policy": _off(0.01, 0.05)}, "off-policy", "worse", HOLD),
    # the off-policy basis wins over the holdout when it has enough rows ...
    ({"off_policy": _off(0.01, 0.05), "holdout_difference": _holdout(-0.05, -0.01)}, "off-policy", "worse", HOLD),
    # ... and gives way to it below THALAMUS_GATE_MIN_LOGGED_ROWS (200), or when it compares with another version
    ({"off_policy": _off(0.01, 0.05, n_rows=199), "holdout_difference": _holdout(-0.05, -0.01)},
     "holdout", "better", PROMOTE),
    ({"off_policy": _off(-0.05, -0.01, active=7), "holdout_difference": _holdout(0.01, 0.05)},
     "holdout", "worse", HOLD),
    ({"holdout_difference": _holdout(-0.05, -0.01, active=7)}, "none", "unknown", HOLD),  # stale: not used
    ({}, "none", "unknown", HOLD),  # nothing to judge by: never promoted by the policy
])
def test_the_verdict_and_the_policy(metrics: dict, basis: str, word: str, decision: str) -> None:
    v = verdict(metrics, active_version=1, min_logged_rows=200)
    assert (v.basis, v.word) == (basis, word)
    assert policy(v)[0] == decision


def test_with_nothing_active_the_policy_promotes_and_admin_is_never_refused() -> None:
    v = verdict({"off_policy": _off(0.01, 0.05)}, active_version=None, min_logged_rows=200)
    assert (v.basis, v.worse, policy(v)) == ("none", False, (PROMOTE, "auto-approved: no router is active"))


def test_the_notes_say_why_a_basis_was_not_used() -> None:
    v = verdict({"off_policy": _off(0.01, 0.05, n_rows=12)}, active_version=1, min_logged_rows=200)
    assert v.notes == ["12 logged requests, fewer than THALAMUS_GATE_MIN_LOGGED_ROWS (200)", "no holdout difference"]
    assert policy(v) == (HOLD, "not auto-approved: no estimate of candidate − active (12 logged requests, fewer than "
                               "THALAMUS_GATE_MIN_LOGGED_ROWS (200); no holdout difference) is not below 0")


def test_the_refusal_is_one_sentence_with_the_numbers() -> None:
    v = verdict({"holdout_difference": _holdout(0.0123, 0.04567, active=3)}, active_version=3, min_logged_rows=200)
    assert refusal(5, v) == ("router version 5 is worse than the active version 3 (holdout routed loss candidate − "
                             "active on 40 prompts: +0.0290 [+0.0123, +0.0457], interval above 0), so it was not "
                             "approved; pass --force --reason TEXT to approve it anyway")
    assert v.numbers()["verdict"] == "worse" and v.numbers()["difference"]["low"] == 0.0123


def test_stale_experts_names_every_changed_or_new_expert() -> None:
    assert stale_experts({"api": 1, "small": 2}, {"api": 2, "small": 2, "fresh": 1}) == ["api v1 → v2", "fresh (new)"]
    assert stale_experts({"api": 1, "gone": 3}, {"api": 1}) == []  # a retired expert is not a change to learn
    assert stale_experts(None, {"api": 5}) == []  # trained before versions were recorded: never called stale


@pytest.mark.parametrize(("metrics", "decision"), [
    ({}, PROMOTE),  # no estimate at all: the stale active router has no claim to keep traffic
    ({"off_policy": _off(-0.05, 0.01)}, PROMOTE),  # undecided
    ({"off_policy": _off(-0.05, -0.01)}, PROMOTE),  # better: promoted for that reason
    ({"off_policy": _off(0.01, 0.05)}, HOLD),  # worse by its interval: never promoted
])
def test_over_a_stale_active_router_the_candidate_is_promoted_unless_worse(metrics: dict, decision: str) -> None:
    v = verdict(metrics, active_version=1, min_logged_rows=200)
    assert policy(v, ["api v1 → v2"])[0] == decision
    assert policy(v)[0] == (PROMOTE if v.better else HOLD)  # the same verdict over a current active router
    if decision == PROMOTE and not v.better:
        assert policy(v, ["api v1 → v2"])[1].startswith("auto-approved: the active router was trained before "
                                                        "api v1 → v2, and ")


def test_grown_names_a_candidate_trained_on_a_multiple_of_the_active_routers_prompts() -> None:
    assert grown(1200, 800, 1.5) == "trained on 1,200 prompts, at least 1.5× the 800 of any router that has served"
    assert grown(1199, 800, 1.5) is None
    assert grown(5000, 800, 0) is None  # THALAMUS_GATE_GROWTH=0 turns the rule off
    assert grown(None, 800, 1.5) is None and grown(1200, None, 1.5) is None  # a count not recorded


@pytest.mark.parametrize(("metrics", "decision"), [
    ({"off_policy": _off(-0.30, 0.15)}, PROMOTE),  # undecided (the bench loop case): the evidence grew
    ({"off_policy": _off(-0.05, -0.01)}, PROMOTE),  # better: promoted for that reason
    ({"off_policy": _off(0.01, 0.05)}, HOLD),  # worse by its interval: never promoted
    ({}, HOLD),  # no interval at all: more data alone is not enough
])
def test_a_candidate_trained_on_more_evidence_is_promoted_unless_worse(metrics: dict, decision: str) -> None:
    v = verdict(metrics, active_version=1, min_logged_rows=200)
    growth = grown(1600, 800, 1.5)
    assert policy(v, growth=growth)[0] == decision
    assert policy(v)[0] == (PROMOTE if v.better else HOLD)  # without the growth, the plain rule
    if decision == PROMOTE and not v.better:
        assert policy(v, growth=growth)[1] == ("auto-approved: the candidate was trained on 1,600 prompts, at least "
                                               f"1.5× the 800 of any router that has served, and {v.describe()} is not above 0")


def test_learnt_since_names_the_experts_the_active_router_had_no_loss_of() -> None:
    assert learnt_since({"a": 10, "fresh": 0}, {"a": 12, "fresh": 24}) == ["fresh's first losses (24)"]
    assert learnt_since({"a": 10}, {"a": 12, "fresh": 3}) == ["fresh's first losses (3)"]  # not in its head
    assert learnt_since({"a": 10, "fresh": 0}, {"a": 12, "fresh": 0}) == []  # the candidate knows no more
    assert learnt_since({"a": 10, "fresh": 5}, {"a": 12, "fresh": 24}) == []  # already learnt, just less
    assert learnt_since(None, {"a": 12, "fresh": 24}) == []  # a router from before the counts were recorded
