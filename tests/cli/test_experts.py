"""``thalamus experts``: register and list experts from code and from the command line."""

from __future__ import annotations

import pytest

from cli import experts
from cli.main import main


def test_add_returns_the_registered_expert_and_merges_attributes(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    big = experts.add(sqlite_settings, "big", kind="external", attributes={"params": 51e9, "cost": 0.9})
    assert (big.name, big.kind, big.version, big.uri) == ("big", "external", 1, None)
    assert big.attributes == {"params": 51e9, "cost": 0.9}
    experts.add(sqlite_settings, "api", kind="external")
    again = experts.add(sqlite_settings, "big", kind="external", attributes={"release_date": "2024-05-01"})
    assert again.version == 1 and again.attributes == {"params": 51e9, "cost": 0.9, "release_date": "2024-05-01"}
    assert [(e.name, e.kind) for e in experts.list_experts(sqlite_settings)] == [("api", "external"),
                                                                                ("big", "external")]


def test_add_and_list_on_the_command_line(sqlite_settings, capsys) -> None:  # type: ignore[no-untyped-def]
    main(["experts", "add", "api", "--kind", "external", "--attr", "params=7e9", "--attr", "license=MIT"])
    assert capsys.readouterr().out == "expert api registered: kind external, version 1\n"
    main(["experts", "list"])
    (line,) = capsys.readouterr().out.splitlines()
    assert line.split()[:3] == ["api", "external", "v1"] and '"license": "MIT"' in line


def test_usage_reports_and_applies_the_gateways_observations(sqlite_settings, capsys) -> None:  # type: ignore[no-untyped-def]
    import uuid

    from cli.experts import add, usage
    from store.db import session_scope
    from store.queries import expert_by_name, insert_requests
    from store.schema import utcnow

    add(sqlite_settings, "gpt-up", kind="external", attributes={"base_url": "http://127.0.0.1:9/v1", "cost": 1})
    rows = [{"id": str(uuid.uuid4()), "created_at": utcnow(), "prompt": f"p{i}", "expert": "gpt-up",
             "served_by": "gpt-up", "upstream_ms": ms, "prompt_tokens": 10, "completion_tokens": 4 + i % 2,
             "attempts": 1} for i, ms in enumerate((100.0, 120.0, 80.0, 300.0, 110.0))]
    rows.append({"id": str(uuid.uuid4()), "created_at": utcnow(), "prompt": "routed only", "expert": "gpt-up"})
    with session_scope(sqlite_settings) as session:
        insert_requests(session, rows)
    (seen,) = usage(sqlite_settings)
    assert (seen.name, seen.answers, seen.latency_ms_p50, seen.prompt_tokens_mean, seen.applied) == (
        "gpt-up", 5, 110.0, 10.0, ())
    assert seen.completion_tokens_mean == pytest.approx(4.4)
    main(["experts", "usage", "--apply"])
    assert "gpt-up" in capsys.readouterr().out
    with session_scope(sqlite_settings) as session:
        expert = expert_by_name(session, "gpt-up")
        assert expert.attributes["latency_ms"] == 110.0 and expert.version == 1
