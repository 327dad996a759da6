"""Shadow routers: who may be one, the recorded log, bad input, and the report on a hand-made set."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from jobs.errors import JobInputError
from jobs.promote import approve
from jobs.shadows import bootstrap_means, shadow_summary, start_shadow, stop_shadows, wilson_interval
from store.db import session_scope
from store.queries import ensure_prompts, insert_requests, insert_shadow_decisions, upsert_losses
from store.schema import Expert, RouterVersion
from tests.helpers import row_counts
from tests.jobs.conftest import EXPERTS, Bundle, tamper


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request):  # type: ignore[no-untyped-def]
    return request.getfixturevalue("sqlite_settings" if request.param == "sqlite" else "pg_settings")


def _version(settings, bundle: Bundle, status: str = "candidate") -> int:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        row = RouterVersion(base_encoder="b", checkpoint_uri=str(bundle.path), checkpoint_sha256=bundle.sha256,
                            expert_order=list(EXPERTS), status=status)
        session.add(row)
        session.flush()
        return row.id


def _state(settings, version_id: int) -> tuple[float | None, list[dict[str, Any]]]:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        version = session.get(RouterVersion, version_id)
        assert version is not None
        return version.shadow_share, list((version.metrics or {}).get("shadow_log", []))


def test_start_change_and_stop_are_recorded(settings, router_bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    candidate, approved = _version(settings, router_bundle), _version(settings, router_bundle, "approved")
    with session_scope(settings) as session:
        change = start_shadow(session, candidate, 0.2, actor="alice", reason="compare on live traffic")
        assert (change.version_id, change.previous_share, change.share) == (candidate, None, 0.2)
        assert start_shadow(session, candidate, 1.0, actor="bob").previous_share == 0.2
        start_shadow(session, approved, 0.5, actor="alice")
    share, logged = _state(settings, candidate)
    assert share == 1.0
    assert [(e["event"], e["share"], e["actor"], e["reason"]) for e in logged] == [
        ("start", 0.2, "alice", "compare on live traffic"), ("share", 1.0, "bob", None)]
    assert all(e["at"] for e in logged)
    with session_scope(settings) as session:
        assert [c.version_id for c in stop_shadows(session, candidate, actor="carol", reason="enough")] == [candidate]
        assert [(c.version_id, c.previous_share) for c in stop_shadows(session, None, actor="carol")] == [
            (approved, 0.5)]
        assert stop_shadows(session, None, actor="carol") == []
    share, logged = _state(settings, candidate)
    assert share is None and (logged[-1]["event"], logged[-1]["actor"], logged[-1]["reason"]) == (
        "stop", "carol", "enough")


def test_activating_a_shadow_ends_it(settings, router_bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    candidate = _version(settings, router_bundle)
    with session_scope(settings) as session:
        start_shadow(session, candidate, 0.3, actor="alice")
    with session_scope(settings) as session:
        approve(session, candidate, actor="alice")
    assert _state(settings, candidate)[0] is None


BAD_INPUT = [
    ("unknown", "does not exist"), ("active", "is active; only a candidate or an approved"),
    ("rejected", "is rejected"), ("zero", "(0, 1]"), ("above one", "(0, 1]"), ("nan", "(0, 1]"),
    ("tampered", "bundle does not load"), ("stop a non-shadow", "is not a shadow"),
    ("stop unknown", "does not exist"),
]


def test_bad_input_is_refused_and_writes_nothing(settings, router_bundle: Bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    shutil.copytree(router_bundle.path, tmp_path / "copy")
    tamper(tmp_path / "copy")
    versions = {case: _version(settings, Bundle(tmp_path / "copy", router_bundle.sha256) if case == "tampered"
                               else router_bundle, {"active": "active", "rejected": "rejected"}.get(case, "candidate"))
                for case, _ in BAD_INPUT}
    for case, message in BAD_INPUT:
        version = versions[case]
        target = version + 100 if "unknown" in case else version
        share = {"zero": 0.0, "above one": 1.5, "nan": math.nan}.get(case, 0.5)
        before = row_counts(settings), _state(settings, version)
        with pytest.raises(JobInputError) as raised, session_scope(settings) as session:
            if case.startswith("stop"):
                stop_shadows(session, target, actor="x")
            else:
                start_shadow(session, target, share, actor="x")
        assert message in str(raised.value) and str(raised.value).count(". ") == 0, case
        assert (row_counts(settings), _state(settings, version)) == before, case


def test_wilson_interval_matches_hand_computed_values() -> None:
    assert wilson_interval(7, 10) == pytest.approx((0.39677, 0.89221), abs=1e-5)
    assert wilson_interval(4, 6) == pytest.approx((0.29999, 0.90324), abs=1e-4)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(0.16113, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_bootstrap_means_are_paired_and_cover_the_mean() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0.5, 0.1, 400)
    b = a + 0.05  # paired: the difference has no spread at all
    (a_low, a_high), (d_low, d_high) = bootstrap_means([a, b - a])
    assert a_low < a.mean() < a_high and a_high - a_low == pytest.approx(2 * 1.96 * 0.1 / 20, rel=0.2)
    assert d_low == pytest.approx(0.05) and d_high == pytest.approx(0.05)


def _hand_made_set(settings, router_bundle: Bundle) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Six shadow decisions of version S (four agree) and one of another version; losses on some prompts.

    Labelled (a current-version loss known for both choices): r1 (0.3 vs 0.3), r2 (0.1 vs 0.5), r4 (0.8 vs 0.8).
    r3: the served expert's loss is for an old version of e2; r5: no loss for e3; r6: its request was never logged.
    """
    shadow, other = _version(settings, router_bundle), _version(settings, router_bundle)
    prompts = [f"prompt {i}" for i in range(1, 7)]
    with session_scope(settings) as session:
        session.add_all([Expert(name="e1", kind="external", version=1), Expert(name="e2", kind="external", version=2),
                         Expert(name="e3", kind="external", version=1)])
        hashes = ensure_prompts(session, prompts)
        served = ["e1", "e1", "e2", "e2", "e3", "e1"]
        insert_requests(session, [{"id": f"r{i}", "prompt": prompts[i - 1], "expert": served[i - 1]}
                                  for i in range(1, 6)])
        chosen = ["e1", "e2", "e1", "e2", "e3", "e1"]
        insert_shadow_decisions(session, [
            {"request_id": f"r{i}", "router_version_id": shadow, "expert": chosen[i - 1],
             "served_expert": served[i - 1], "predicted_losses": {}} for i in range(1, 7)
        ] + [{"request_id": "r2", "router_version_id": other, "expert": "e3", "served_expert": "e1",
              "predicted_losses": {}}])
        p1, p2, p3, p4, _, p6 = hashes
        upsert_losses(session, [
            {"prompt_hash": p1, "expert": "e1", "expert_version": 1, "loss": 0.2, "source": "computed"},
            {"prompt_hash": p1, "expert": "e1", "expert_version": 1, "loss": 0.4, "source": "reported"},
            {"prompt_hash": p2, "expert": "e2", "expert_version": 2, "loss": 0.1, "source": "computed"},
            {"prompt_hash": p2, "expert": "e1", "expert_version": 1, "loss": 0.5, "source": "computed"},
            {"prompt_hash": p3, "expert": "e1", "expert_version": 1, "loss": 0.6, "source": "reported"},
            {"prompt_hash": p3, "expert": "e2", "expert_version": 1, "loss": 0.2, "source": "computed"},
            {"prompt_hash": p4, "expert": "e2", "expert_version": 2, "loss": 0.8, "source": "reported"},
            {"prompt_hash": p6, "expert": "e1", "expert_version": 1, "loss": 0.9, "source": "computed"},
        ])
    return shadow, other


def test_shadow_summary_on_a_hand_made_set(settings, router_bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    shadow, other = _hand_made_set(settings, router_bundle)
    with session_scope(settings) as session:
        report = shadow_summary(session, shadow)
        assert (shadow_summary(session, other) or {}).get("decisions") == 1
        assert shadow_summary(session, other + 1) is None
    assert report is not None
    assert report["decisions"] == 6 and report["chosen"] == {"e1": 3, "e2": 2, "e3": 1}
    agreement = report["agreement"]
    assert (agreement["n"], agreement["agree"]) == (6, 4) and agreement["rate"] == pytest.approx(4 / 6)
    assert (agreement["low"], agreement["high"]) == pytest.approx((0.29999, 0.90324), abs=1e-4)
    loss = report["loss"]
    assert loss["n"] == 3
    assert loss["shadow"]["mean"] == pytest.approx(0.4)  # (0.3 + 0.1 + 0.8) / 3
    assert loss["served"]["mean"] == pytest.approx(1.6 / 3)  # (0.3 + 0.5 + 0.8) / 3
    assert loss["difference"]["mean"] == pytest.approx(-0.4 / 3)
    for key, (smallest, largest) in {"shadow": (0.1, 0.8), "served": (0.3, 0.8), "difference": (-0.4, 0.0)}.items():
        cell = loss[key]
        assert smallest - 1e-9 <= cell["low"] <= cell["mean"] <= cell["high"] <= largest + 1e-9, (key, cell)


def test_shadow_summary_without_labels_reports_agreement_only(settings, router_bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    shadow = _version(settings, router_bundle)
    with session_scope(settings) as session:
        insert_shadow_decisions(session, [{"request_id": "x", "router_version_id": shadow, "expert": "a",
                                           "served_expert": "b", "predicted_losses": {}}])
        report = shadow_summary(session, shadow)
        assert session.scalar(select(RouterVersion.id).where(RouterVersion.id == shadow)) == shadow
    assert report is not None
    assert report["agreement"]["rate"] == 0.0 and report["loss"] == {"n": 0, "shadow": None, "served": None,
                                                                      "difference": None}
