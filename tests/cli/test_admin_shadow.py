"""``thalamus admin shadow`` and the shadow section of ``admin show``: bad input exits 2 and writes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cli import admin
from cli.main import main
from store.db import session_scope
from store.queries import insert_shadow_decisions
from store.schema import RouterVersion
from tests.daemon.conftest import register_version
from tests.helpers import row_counts


def _snapshot(settings) -> tuple[dict[str, int], list[tuple[int, str, float | None, dict[str, Any]]]]:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        versions = [(v.id, str(v.status), v.shadow_share, dict(v.metrics or {}))
                    for v in session.query(RouterVersion).order_by(RouterVersion.id)]
    return row_counts(settings), versions


@pytest.mark.parametrize("argv", [
    ["admin", "shadow", "99"],  # unknown version
    ["admin", "shadow", "1"],  # the active version
    ["admin", "shadow", "3"],  # a rejected version
    ["admin", "shadow", "2", "--share", "0"],
    ["admin", "shadow", "2", "--share", "1.5"],
    ["admin", "shadow", "2", "--share", "-0.2"],
    ["admin", "shadow", "2", "--share", "nan"],
    ["admin", "shadow", "2", "--share", "lots"],
    ["admin", "shadow"],  # neither an id nor --stop
    ["admin", "shadow", "--stop", "--share", "0.5"],
    ["admin", "shadow", "--stop", "2"],  # not a shadow
    ["admin", "shadow", "--stop", "99"],
    ["admin", "shadow", "0"],
])
def test_bad_input_exits_2_with_one_sentence_and_writes_nothing(sqlite_settings, bundles, capsys,  # type: ignore[no-untyped-def]
                                                                argv: list[str]) -> None:
    assert register_version(sqlite_settings, bundles["a"]) == 1
    assert register_version(sqlite_settings, bundles["b"], status="candidate") == 2
    assert register_version(sqlite_settings, bundles["b"], status="rejected") == 3
    before = _snapshot(sqlite_settings)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and "error:" in captured.err
    assert _snapshot(sqlite_settings) == before


def test_shadow_start_show_and_stop(sqlite_settings, bundles, capsys) -> None:  # type: ignore[no-untyped-def]
    register_version(sqlite_settings, bundles["a"])
    candidate = register_version(sqlite_settings, bundles["b"], status="candidate")
    main(["admin", "shadow", str(candidate), "--actor", "alice", "--reason", "see it on live traffic"])
    assert capsys.readouterr().out == (f"router version {candidate} is a shadow: it routes 0.2 of live requests, "
                                       "off the response path\n")  # THALAMUS_SHADOW_SHARE's default
    main(["admin", "shadow", str(candidate), "--share", "1"])
    assert "routes 1 of live requests (was 0.2)" in capsys.readouterr().out

    main(["admin", "show", str(candidate), "--json"])
    assert json.loads(capsys.readouterr().out)["shadow"] is None  # no decisions yet
    with session_scope(sqlite_settings) as session:
        insert_shadow_decisions(session, [
            {"request_id": f"r{i}", "router_version_id": candidate, "expert": "small",
             "served_expert": "api" if i % 4 else "small", "predicted_losses": {}} for i in range(8)])
    main(["admin", "show", str(candidate), "--json"])
    shown = json.loads(capsys.readouterr().out)["shadow"]
    assert shown["share"] == 1.0 and shown["agreement"]["agree"] == 2 and shown["decisions"] == 8
    main(["admin", "show", str(candidate)])
    assert "Shadow routing (router version" in capsys.readouterr().out  # the section in the person's report

    main(["admin", "shadow", "--stop", "--actor", "bob"])
    assert capsys.readouterr().out == f"stopped shadow router version(s) {candidate}\n"
    main(["admin", "shadow", "--stop"])
    assert capsys.readouterr().out == "no shadow router was running\n"
    log = admin.show(sqlite_settings, candidate).version.metrics["shadow_log"]
    assert [(e["event"], e["actor"], e["reason"]) for e in log] == [
        ("start", "alice", "see it on live traffic"), ("share", "admin", None), ("stop", "bob", None)]


def test_print_shadow_report_is_a_readable_section(capsys) -> None:  # type: ignore[no-untyped-def]
    report = {
        "version": 7, "share": 0.2, "decisions": 1234, "first_at": "2026-01-01T10:00:00.123+00:00",
        "last_at": "2026-01-02T10:00:00+00:00", "confidence": 0.95, "chosen": {"api": 34, "small": 1200},
        "agreement": {"n": 1234, "agree": 900, "rate": 900 / 1234, "low": 0.704, "high": 0.754},
        "loss": {"n": 118, "shadow": {"mean": 0.41234, "low": 0.39, "high": 0.43},
                 "served": {"mean": 0.44111, "low": 0.42, "high": 0.46},
                 "difference": {"mean": -0.02877, "low": -0.05, "high": -0.01}},
    }
    admin.print_shadow_report(report)
    out = capsys.readouterr().out
    assert "Shadow routing (router version 7, a shadow at share 0.2)" in out
    assert "1,234" in out and "0.729  [0.704, 0.754]" in out and "118 labelled rows" in out
    assert "shadow           0.4123  [0.3900, 0.4300]" in out
    assert "shadow - served  -0.0288  [-0.0500, -0.0100]" in out and "api 34, small 1,200" in out
    admin.print_shadow_report({**report, "share": None, "loss": {"n": 0, "shadow": None, "served": None,
                                                                 "difference": None}})
    out = capsys.readouterr().out
    assert "not a shadow now" in out and "no labelled rows yet" in out
