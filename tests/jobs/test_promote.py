from __future__ import annotations

import pytest
from sqlalchemy import select

from jobs.errors import JobInputError
from jobs.promote import approve, reject, rollback
from store.db import session_scope
from store.queries import active_router_version
from store.schema import Activation, RouterVersion


def _versions(settings, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        rows = [RouterVersion(base_encoder="b", checkpoint_uri=f"/x/{i}", checkpoint_sha256="0" * 64,
                              expert_order=["a"], status="candidate") for i in range(n)]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def test_approve_then_rollback_keeps_an_activation_log(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    first, second = _versions(sqlite_settings, 2)
    with session_scope(sqlite_settings) as session:
        approve(session, first, actor="alice")
    with session_scope(sqlite_settings) as session:
        approve(session, second, actor="bob")
    with session_scope(sqlite_settings) as session:
        assert active_router_version(session).id == second
        assert session.get(RouterVersion, first).status == "retired"
    with session_scope(sqlite_settings) as session:
        assert rollback(session, actor="carol").id == first
    with session_scope(sqlite_settings) as session:
        assert active_router_version(session).id == first
        log = [(a.router_version_id, a.previous_version_id, a.actor) for a in session.scalars(select(Activation))]
    assert log == [(first, None, "alice"), (second, first, "bob"), (first, second, "carol")]


def test_bad_admin_requests_change_nothing(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    (only,) = _versions(sqlite_settings, 1)
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


def test_approve_notifies_on_postgres(pg_settings) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    from store.db import normalize_url
    from store.queries import ACTIVATION_CHANNEL

    (version,) = _versions(pg_settings, 1)
    url = normalize_url(pg_settings.db_url).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {ACTIVATION_CHANNEL}")
        with session_scope(pg_settings) as session:
            approve(session, version, actor="alice")
        payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert payloads == [str(version)]
