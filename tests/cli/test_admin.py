"""``thalamus admin``: the verbs as functions other code calls, and as commands."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cli import admin
from cli.main import main
from store.db import session_scope
from store.schema import Activation, RouterVersion
from tests.daemon.conftest import register_version


def _last_activation(settings) -> tuple[int, int | None, str, str]:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        last = session.scalars(select(Activation).order_by(Activation.id.desc())).first()
        assert last is not None
        return last.router_version_id, last.previous_version_id, last.actor, last.reason


def test_admin_activate_goes_back_to_a_retired_version(sqlite_settings, capsys, bundles) -> None:  # type: ignore[no-untyped-def]
    first = register_version(sqlite_settings, bundles["a"], status="candidate")
    second = register_version(sqlite_settings, bundles["b"], status="candidate")
    for version in (first, second):
        main(["admin", "approve", str(version)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["admin", "approve", str(first)])
    assert exit_info.value.code == 2 and "admin activate" in capsys.readouterr().err
    main(["admin", "activate", str(first), "--reason", "the second one misroutes code", "--actor", "carol"])
    assert capsys.readouterr().out == f"router version {first} is active: the second one misroutes code\n"
    with session_scope(sqlite_settings) as session:
        assert {v.id: v.status for v in session.scalars(select(RouterVersion))} == {first: "active", second: "retired"}
    assert _last_activation(sqlite_settings) == (first, second, "carol", "the second one misroutes code")


def test_the_verbs_are_typed_functions_other_code_can_call(sqlite_settings, bundles) -> None:  # type: ignore[no-untyped-def]
    first = register_version(sqlite_settings, bundles["a"], status="candidate")
    second = register_version(sqlite_settings, bundles["b"], status="candidate")

    change = admin.approve(sqlite_settings, first, actor="api")
    assert (change.version.id, change.version.status, change.reason) == (first, "active", "approved by admin")
    change = admin.approve(sqlite_settings, second, actor="api", reason="better on code")
    assert change.version.status == "active" and _last_activation(sqlite_settings) == (second, first, "api",
                                                                                        "better on code")
    change = admin.rollback(sqlite_settings, actor="api")
    assert change.version.id == first and _last_activation(sqlite_settings) == (first, second, "api",
                                                                                 "rollback by admin")
    third = register_version(sqlite_settings, bundles["b"], status="candidate")
    rejected = admin.reject(sqlite_settings, third, reason="worse on prose", actor="bob")
    assert (rejected.version.status, rejected.version.reason, rejected.version.decided_by) == (
        "rejected", "worse on prose", "bob")

    listed = admin.versions(sqlite_settings)
    assert [(v.id, v.status) for v in listed] == [(first, "active"), (second, "retired"), (third, "rejected")]
    shown = admin.show(sqlite_settings, first).version
    assert shown.experts == ["large", "small", "api"] and shown.sha256 == bundles["a"].sha256


def test_show_json_prints_the_version(sqlite_settings, capsys, bundles) -> None:  # type: ignore[no-untyped-def]
    import json

    version = register_version(sqlite_settings, bundles["a"], status="candidate")
    main(["admin", "show", str(version), "--json"])
    shown = json.loads(capsys.readouterr().out)["version"]
    assert (shown["id"], shown["status"], shown["experts"], shown["sha256"]) == (
        version, "candidate", ["large", "small", "api"], bundles["a"].sha256)
    main(["admin", "versions"])
    header, line = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["id", "status", "parent"] and line.split()[:3] == [str(version), "candidate", "-"]


# ---- the promotion gate and the readable report ------------------------------------------------

def _interval(value: float, low: float, high: float) -> dict:
    return {"value": value, "low": low, "high": high}


def _estimates(level: float) -> dict:
    return {"ips": _interval(level + 0.0123456789012345, level - 0.0310987654321, level + 0.05123456789),
            "snips": _interval(level + 0.00111111111111, level - 0.02, level + 0.02),
            "dr": _interval(level, level - 0.0101010101, level + 0.0102030405), "ess": 123.456789, "support": 1.0}


def _worse_metrics(active: int) -> dict:
    """What train_router and evaluate_candidate store, with full-precision floats (a worse candidate)."""
    return {
        "candidate": {"routed_loss": 0.41234567890123456, "hit_rate": 0.6171717171717172, "n_rows": 46.0},
        "active": {"routed_loss": 0.39876543210987654, "hit_rate": 0.6521739130434783, "n_rows": 46.0},
        "active_version": active, "n_holdout": 46,
        "holdout_difference": {**_interval(0.0135802468, -0.0012345, 0.0287654), "n_rows": 46, "active_version": active},
        "off_policy": {"candidate_version": active + 1, "active_version": active, "n_rows": 512, "n_prompts": 480,
                       "explored_rows": 51, "skipped": {"not_holdout": 2000}, "logged_mean_loss": 0.4444444444444444,
                       "candidate": _estimates(0.4512345678901234), "active": _estimates(0.4100000000000001),
                       "difference": {"ips": _interval(0.04123456789, 0.0201234567, 0.0633333333),
                                      "snips": _interval(0.041, 0.02, 0.06),
                                      "dr": _interval(0.04123456789012345, 0.02012345678901234, 0.06333333333333)},
                       "agreement": 0.7234567890123456},
    }


def _set_metrics(settings, version_id: int, metrics: dict) -> None:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        session.get(RouterVersion, version_id).metrics = metrics


def test_approve_refuses_a_worse_candidate_with_its_numbers_unless_forced_with_a_reason(sqlite_settings, capsys, bundles) -> None:  # type: ignore[no-untyped-def]
    from store.schema import GateDecision
    from tests.helpers import row_counts

    active = register_version(sqlite_settings, bundles["a"], status="active")
    candidate = register_version(sqlite_settings, bundles["b"], status="candidate")
    _set_metrics(sqlite_settings, candidate, _worse_metrics(active))
    capsys.readouterr()

    before = row_counts(sqlite_settings)
    with pytest.raises(SystemExit) as exit_info:
        main(["admin", "approve", str(candidate), "--actor", "bob"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert (f"router version {candidate} is worse than the active version {active} (off-policy DR candidate − active "
            "on 512 logged requests: +0.0412 [+0.0201, +0.0633], interval above 0)") in err
    assert "--force --reason" in err
    assert row_counts(sqlite_settings) == {**before, "gate_decisions": before["gate_decisions"] + 1}

    for argv in (["--force"], ["--force", "--reason", ""]):
        with pytest.raises(SystemExit) as exit_info:
            main(["admin", "approve", str(candidate), *argv])
        assert exit_info.value.code == 2 and "--force needs --reason" in capsys.readouterr().err
    assert row_counts(sqlite_settings) == {**before, "gate_decisions": before["gate_decisions"] + 1}

    main(["admin", "approve", str(candidate), "--force", "--reason", "needed for the code launch", "--actor", "bob"])
    assert capsys.readouterr().out == f"router version {candidate} approved and active\n"
    assert _last_activation(sqlite_settings) == (candidate, active, "bob", "needed for the code launch")
    with session_scope(sqlite_settings) as session:
        rows = [(d.decision, d.basis, d.actor, d.reason, d.active_version_id, d.numbers["difference"]["low"])
                for d in session.scalars(select(GateDecision).order_by(GateDecision.id))]
    assert rows == [("refuse", "off-policy", "bob", "approved by admin", active, 0.02012345678901234),
                    ("forced", "off-policy", "bob", "needed for the code launch", active, 0.02012345678901234)]
    main(["admin", "versions"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "gate" and lines[-1].split()[-1] == "forced" and "+0.0412" in lines[-1]


def test_approve_accepts_a_candidate_the_gate_does_not_call_worse(sqlite_settings, bundles) -> None:  # type: ignore[no-untyped-def]
    from store.schema import GateDecision

    active = register_version(sqlite_settings, bundles["a"], status="active")
    candidate = register_version(sqlite_settings, bundles["b"], status="candidate")
    metrics = _worse_metrics(active)
    metrics["off_policy"]["difference"]["dr"] = _interval(-0.01, -0.03, 0.01)  # undecided: 0 is inside
    _set_metrics(sqlite_settings, candidate, metrics)
    main(["admin", "approve", str(candidate)])
    with session_scope(sqlite_settings) as session:
        decision = session.scalars(select(GateDecision)).one()
        assert (decision.decision, decision.basis, decision.numbers["verdict"]) == ("promote", "off-policy", "undecided")
        assert session.get(RouterVersion, candidate).status == "active"


def test_show_is_a_report_with_rounded_numbers_and_json_has_them_all(sqlite_settings, capsys, bundles) -> None:  # type: ignore[no-untyped-def]
    import json
    import re

    active = register_version(sqlite_settings, bundles["a"], status="active")
    candidate = register_version(sqlite_settings, bundles["b"], status="candidate")
    _set_metrics(sqlite_settings, candidate, _worse_metrics(active))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["admin", "approve", str(candidate)])
    capsys.readouterr()

    main(["admin", "show", str(candidate)])
    out = capsys.readouterr().out
    assert not re.search(r"\d\.\d{5,}", out), out  # no long floats anywhere
    lines = out.splitlines()
    assert lines[0].startswith(f"router version {candidate}: candidate")
    assert any(re.fullmatch(r"\s*routed loss\s+0\.4123\s+0\.3988", line) for line in lines), out
    assert any(re.fullmatch(r"\s*hit rate\s+0\.6172\s+0\.6522", line) for line in lines), out
    assert f"routed loss − parent v{active}: +0.0136 [-0.0012, +0.0288]" in out
    assert any(re.fullmatch(r"\s*DR\s+0\.4512 \[0\.4411, 0\.4614\]\s+0\.4100 \[0\.3999, 0\.4202\]\s+"
                            r"\+0\.0412 \[\+0\.0201, \+0\.0633\]", line) for line in lines), out
    assert any(re.fullmatch(r"\s*ESS\s+123\.5\s+123\.5", line) for line in lines), out
    assert f"off-policy (512 logged requests on 480 holdout prompts, 51 explored; vs active v{active})" in out
    assert "agrees with the active router on 72.3 % of requests" in out
    assert "gate now: worse on the off-policy basis" in out
    assert any(re.search(r"\s+admin\s+refuse\s+off-policy\s+\+0\.0412 \[\+0\.0201, \+0\.0633\]\s+approved by admin",
                         line) for line in lines), out

    main(["admin", "show", str(candidate), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"version", "holdout", "off_policy", "gate", "shadow"} and data["shadow"] is None
    assert data["version"]["metrics"]["candidate"]["routed_loss"] == 0.41234567890123456
    assert data["off_policy"]["difference"]["dr"]["value"] == 0.04123456789012345
    assert data["gate"]["now"]["verdict"] == "worse" and [d["decision"] for d in data["gate"]["decisions"]] == ["refuse"]


def test_show_of_a_version_without_metrics_says_so(sqlite_settings, capsys, bundles) -> None:  # type: ignore[no-untyped-def]
    version = register_version(sqlite_settings, bundles["a"], status="candidate")
    main(["admin", "show", str(version)])
    out = capsys.readouterr().out
    assert "holdout: no metrics" in out and "off-policy: not evaluated yet" in out
    assert "gate now: unknown on the none basis — no estimate of candidate − active (no router is active)" in out
