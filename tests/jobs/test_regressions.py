"""Silent regressions: a residual change point on one expert bumps its version; prompt drift does not."""

from __future__ import annotations

import datetime as dt
import math
import uuid

import numpy as np
import pytest
from sqlalchemy import select

from jobs.regressions import change_point, detect, make_stale
from store.db import session_scope
from store.queries import ensure_prompts, insert_feedback, insert_requests, upsert_losses
from store.schema import Expert, ExpertLoss, RouterVersion

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def test_change_point_finds_the_jump() -> None:
    rng = np.random.default_rng(0)
    series = np.r_[rng.normal(0.0, 0.1, 120), rng.normal(0.4, 0.1, 80)]
    k, z = change_point(series, 30)
    assert abs(k - 120) <= 3 and z > 10
    assert change_point(series[:50], 30) is None  # too short for 30 rows on each side


def _log(settings, rows: list[tuple[str, float, float]], kinds: dict[str, str],  # type: ignore[no-untyped-def]
         routers: list[int | None] | None = None) -> None:
    """Requests served in order, each with its feedback: (expert, predicted loss, observed loss);
    ``routers`` names the router version that served each request (default: none recorded)."""
    with session_scope(settings) as session:
        for name, kind in kinds.items():
            session.add(Expert(name=name, kind=kind, uri=None, version=1, attributes={}, status="active"))
        for version_id in sorted({r for r in routers or [] if r is not None}):
            session.add(RouterVersion(id=version_id, base_encoder="x", checkpoint_uri="x", checkpoint_sha256="0" * 64,
                                      expert_order=list(kinds)))
    requests, feedback = [], []
    for i, (expert, predicted, observed) in enumerate(rows):
        rid = str(uuid.uuid4())
        prompt = f"prompt {i}"
        requests.append({"id": rid, "created_at": START + dt.timedelta(seconds=i), "prompt": prompt, "lambdas": {},
                         "router_version_id": routers[i] if routers else None, "expert": expert, "predicted_losses": {expert: predicted},
                         "propensity": 1.0, "sampled": False, "latency_ms": 1.0, "app": None})
        feedback.append((rid, prompt, expert, observed, START + dt.timedelta(seconds=i, milliseconds=500)))
    with session_scope(settings) as session:
        insert_requests(session, requests)
        for rid, prompt, expert, observed, at in feedback:
            insert_feedback(session, f"{rid}:{expert}", None, rid,
                            {"expert": expert, "expert_version": 1, "loss": observed})
            [key] = ensure_prompts(session, [prompt])
            upsert_losses(session, [{"prompt_hash": key, "expert": expert, "expert_version": 1, "loss": observed,
                                     "source": "reported", "created_at": at}])


def _stream(rng: np.random.Generator, n: int, expert_shift: float, all_shift: float) -> list[tuple[str, float, float]]:
    """'big' serves 90 %, 'other' 10 %; from the middle on, big's losses rise by expert_shift and
    everyone's by all_shift (new kinds of prompts)."""
    rows = []
    for i in range(n):
        expert = "big" if rng.random() < 0.9 else "other"
        late = i >= n // 2
        shift = (expert_shift if expert == "big" else 0.0) + all_shift if late else 0.0
        rows.append((expert, 0.4, float(np.clip(0.4 + shift + rng.normal(0, 0.1), 0, 1))))
    return rows


@pytest.mark.parametrize("backend", ["sqlite_settings", "pg_settings"])
def test_a_silent_regression_bumps_the_version_and_keeps_the_new_rows(request, backend: str) -> None:  # type: ignore[no-untyped-def]
    settings = request.getfixturevalue(backend)
    _log(settings, _stream(np.random.default_rng(1), 600, expert_shift=0.35, all_shift=0.0),
         {"big": "external", "other": "external"})
    with session_scope(settings) as session:
        shifts = detect(session, min_rows=30, p_value=1e-4, min_shift=0.5)
        assert [s.expert for s in shifts] == ["big"]
        [shift] = shifts
        assert shift.after - shift.before == pytest.approx(0.35, abs=0.05)
        assert abs((shift.at - START).total_seconds() - 300) <= 20  # the change is found where it happened
        make_stale(session, shifts)
    with session_scope(settings) as session:
        big = session.scalars(select(Expert).where(Expert.name == "big")).one()
        assert big.version == 2
        rows = session.execute(select(ExpertLoss.expert_version, ExpertLoss.loss)
                               .where(ExpertLoss.expert == "big")).all()
        new = [loss for version, loss in rows if version == 2]
        old = [loss for version, loss in rows if version == 1]
        assert len(new) + len(old) == len(rows) and len(new) >= 0.4 * len(rows)
        assert np.mean(new) > np.mean(old) + 0.25  # the rows moved to version 2 are the regressed regime
        # The residual series restarts at the new version: nothing more to find.
        assert detect(session, min_rows=30, p_value=1e-4, min_shift=0.5) == []
        assert session.scalars(select(Expert.version).where(Expert.name == "other")).one() == 1


def test_a_lucky_run_at_the_end_of_a_steady_series_is_not_an_improvement(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    """0/1 losses at a steady rate (0.46), the last 30 with 4 failures: the best split of the scan has an
    unadjusted p below 1e-4, but the scan tried 241 splits; adjusted, it is noise (as it was in a bench loop
    run, where the bump left 26 lucky rows at the new version and the next router sent that expert 92 %)."""
    steady = np.r_[np.ones(124), np.zeros(146)]
    np.random.default_rng(0).shuffle(steady)
    losses = np.r_[steady, np.ones(4), np.zeros(26)]
    k, z = change_point(losses - 0.46, 30)
    assert k == 270 and math.erfc(abs(z) / math.sqrt(2)) < 1e-4  # what the unadjusted test called a shift
    _log(sqlite_settings, [("big", 0.46, float(v)) for v in losses], {"big": "external"})
    with session_scope(sqlite_settings) as session:
        assert detect(session, min_rows=30, p_value=1e-4, min_shift=0.5) == []


def test_new_kinds_of_prompts_moving_every_expert_are_not_a_regression(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    _log(sqlite_settings, _stream(np.random.default_rng(2), 2000, expert_shift=0.0, all_shift=0.3),
         {"big": "external", "other": "external"})
    with session_scope(sqlite_settings) as session:
        assert detect(session, min_rows=30, p_value=1e-4, min_shift=0.5) == []


def test_local_experts_are_never_bumped(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    _log(sqlite_settings, _stream(np.random.default_rng(3), 600, expert_shift=0.35, all_shift=0.0),
         {"big": "masked-lm", "other": "external"})
    with session_scope(sqlite_settings) as session:
        assert detect(session, min_rows=30, p_value=1e-4, min_shift=0.5) == []


@pytest.mark.parametrize("backend", ["sqlite_settings", "pg_settings"])
def test_a_router_swap_that_changes_the_predictions_is_not_a_regression(request, backend: str) -> None:  # type: ignore[no-untyped-def]
    """A cold start predicts 0.9 for 'big'; the trained router that replaces it at request 300 predicts
    0.4. big's observed losses never change, yet its residual drops by 0.5: what changed is the
    predictor, so nothing is detected. A real change under one router still is (the test above)."""
    settings = request.getfixturevalue(backend)
    rng = np.random.default_rng(4)
    rows = []
    for i in range(600):
        expert = "big" if rng.random() < 0.9 else "other"
        predicted = 0.9 if i < 300 and expert == "big" else 0.4
        rows.append((expert, predicted, float(np.clip(0.4 + rng.normal(0, 0.1), 0, 1))))
    _log(settings, rows, {"big": "external", "other": "external"}, routers=[1 if i < 300 else 2 for i in range(600)])
    with session_scope(settings) as session:
        assert detect(session, min_rows=30, p_value=1e-4, min_shift=0.5) == []
    # The same residual series without router versions (as if one router had predicted both halves)
    # is the jump the detector exists for: the router version is what tells the two apart.
    found = change_point(np.array([observed - predicted for name, predicted, observed in rows if name == "big"]), 30)
    assert found is not None and found[1] > 10
