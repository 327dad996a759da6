"""``thalamus experts``: register and list experts from code and from the command line."""

from __future__ import annotations

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
