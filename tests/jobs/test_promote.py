"""Approve, activate, reject, roll back: state rules, the activation log, NOTIFY, and the load check."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from jobs.errors import JobInputError
from jobs.promote import activate_version, approve, reject, rollback
from store.db import session_scope
from store.queries import active_router_version
from store.schema import Activation, RouterVersion
from tests.jobs.conftest import EXPERTS, Bundle, tamper


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request):  # type: ignore[no-untyped-def]
    return request.getfixturevalue("sqlite_settings" if request.param == "sqlite" else "pg_settings")


def _versions(settings, bundle: Bundle, n: int, status: str = "candidate") -> list[int]:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        rows = [RouterVersion(base_encoder="b", checkpoint_uri=str(bundle.path), checkpoint_sha256=bundle.sha256,
                              expert_order=list(EXPERTS), status=status) for _ in range(n)]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def _log(settings) -> list[tuple[int, int | None, str, str | None]]:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        return [(a.router_version_id, a.previous_version_id, a.actor, a.reason)
                for a in session.scalars(select(Activation).order_by(Activation.id))]


def _statuses(settings) -> dict[int, str]:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        return {v.id: v.status for v in session.scalars(select(RouterVersion))}


def test_approve_then_rollback_keeps_an_activation_log(sqlite_settings, router_bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    first, second = _versions(sqlite_settings, router_bundle, 2)
    with session_scope(sqlite_settings) as session:
        approve(session, first, actor="alice", reason="a")
    with session_scope(sqlite_settings) as session:
        approve(session, second, actor="bob", reason="b")
    with session_scope(sqlite_settings) as session:
        assert active_router_version(session).id == second
        assert session.get(RouterVersion, first).status == "retired"
    with session_scope(sqlite_settings) as session:
        assert rollback(session, actor="carol", reason="c").id == first
    with session_scope(sqlite_settings) as session:
        assert active_router_version(session).id == first
    assert _log(sqlite_settings) == [(first, None, "alice", "a"), (second, first, "bob", "b"), (first, second, "carol", "c")]


def test_bad_admin_requests_change_nothing(sqlite_settings, router_bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    (only,) = _versions(sqlite_settings, router_bundle, 1)
    with pytest.raises(JobInputError, match="does not exist"):
        with session_scope(sqlite_settings) as session:
            approve(session, 999, actor="x")
    with pytest.raises(JobInputError, match="nothing to roll back"):
        with session_scope(sqlite_settings) as session:
            rollback(session, actor="x")
    with pytest.raises(JobInputError, match="needs a reason"):
        with session_scope(sqlite_settings) as session:
            reject(session, only, actor="x", reason="  ")
    with session_scope(sqlite_settings) as session:
        reject(session, only, actor="x", reason="worse on holdout")
    with pytest.raises(JobInputError, match="only a candidate"):
        with session_scope(sqlite_settings) as session:
            approve(session, only, actor="x")
    with session_scope(sqlite_settings) as session:
        assert active_router_version(session) is None
        assert session.scalars(select(Activation)).first() is None


def test_activate_goes_back_to_a_retired_version_in_one_step(settings, router_bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    first, second, third, candidate, rejected = _versions(settings, router_bundle, 5)
    for version in (first, second, third):
        with session_scope(settings) as session:
            approve(session, version, actor="alice", reason=f"approve {version}")
    with session_scope(settings) as session:
        reject(session, rejected, actor="alice", reason="worse")
    with pytest.raises(JobInputError, match="only a candidate can be approved; use `thalamus admin activate`"):
        with session_scope(settings) as session:
            approve(session, first, actor="bob")

    with session_scope(settings) as session:
        assert activate_version(session, first, actor="bob", reason="v3 misroutes code").id == first
    assert _statuses(settings) == {first: "active", second: "retired", third: "retired", candidate: "candidate",
                                   rejected: "rejected"}
    assert _log(settings)[-1] == (first, third, "bob", "v3 misroutes code")
    with session_scope(settings) as session:  # a candidate can be activated too, with a reason
        activate_version(session, candidate, actor="bob", reason="try it")
    assert _statuses(settings)[candidate] == "active" and _statuses(settings)[first] == "retired"

    before = (_statuses(settings), _log(settings))
    for version_id, reason, message in [(rejected, "why not", "was rejected"), (999, "x", "does not exist"),
                                        (candidate, "again", "already active"), (second, " ", "needs a reason")]:
        with pytest.raises(JobInputError, match=message):
            with session_scope(settings) as session:
                activate_version(session, version_id, actor="bob", reason=reason)
    assert (_statuses(settings), _log(settings)) == before


def test_a_bundle_that_does_not_load_cannot_be_activated(settings, router_bundle: Bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (good,) = _versions(settings, router_bundle, 1)
    corrupted = Bundle(tmp_path / "corrupted", router_bundle.sha256)
    shutil.copytree(router_bundle.path, corrupted.path)
    (bad,) = _versions(settings, corrupted, 1)
    with session_scope(settings) as session:
        approve(session, bad, actor="alice")  # it loaded when approved ...
    with session_scope(settings) as session:
        approve(session, good, actor="alice")
    tamper(corrupted.path)  # ... and its file was damaged afterwards
    (later,) = _versions(settings, corrupted, 1)
    before = (_statuses(settings), _log(settings))
    for verb in (lambda s: approve(s, later, actor="bob"), lambda s: activate_version(s, bad, actor="bob", reason="back"),
                 lambda s: rollback(s, actor="bob")):
        with pytest.raises(JobInputError, match="cannot be activated because its bundle does not load.*sha256"):
            with session_scope(settings) as session:
                verb(session)
    assert (_statuses(settings), _log(settings)) == before


def test_approve_and_activate_notify_on_postgres(pg_settings, router_bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    from store.db import normalize_url
    from store.queries import ACTIVATION_CHANNEL

    first, second = _versions(pg_settings, router_bundle, 2)
    url = normalize_url(pg_settings.db_url).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {ACTIVATION_CHANNEL}")
        with session_scope(pg_settings) as session:
            approve(session, first, actor="alice")
        with session_scope(pg_settings) as session:
            approve(session, second, actor="alice")
        with session_scope(pg_settings) as session:
            activate_version(session, first, actor="bob", reason="back to the first")
        payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=3)]
    assert payloads == [str(first), str(second), str(first)]
