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
