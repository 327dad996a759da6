"""Statuses are ``str`` enums: stored as the plain words they always were, read back as members."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import StatementError

from store.db import session_scope
from store.schema import JobRun, RouterVersion
from store.states import FINISHED, JobStatus, VersionStatus


def test_members_are_their_strings() -> None:
    assert JobStatus.LOST == "lost" and f"{JobStatus.RUNNING}" == "running" and JobStatus("skipped") is JobStatus.SKIPPED
    assert [s.value for s in VersionStatus] == ["candidate", "approved", "active", "retired", "rejected"]
    assert FINISHED == {"succeeded", "failed", "lost", "skipped"}


def _version(status: object) -> RouterVersion:
    return RouterVersion(base_encoder="e", checkpoint_uri="/x", checkpoint_sha256="0" * 64, expert_order=["a"],
                         status=status)


@pytest.mark.parametrize("backend", ["sqlite_settings", "pg_settings"])
def test_statuses_round_trip_through_the_database(request: pytest.FixtureRequest, backend: str) -> None:
    settings = request.getfixturevalue(backend)
    with session_scope(settings) as session:
        session.add_all([JobRun(kind="train_router", status=JobStatus.SKIPPED), JobRun(kind="refresh_losses")])
        session.add_all([_version(VersionStatus.RETIRED), _version("active")])  # a plain word is accepted
    with session_scope(settings) as session:
        runs = list(session.scalars(select(JobRun).order_by(JobRun.id)))
        versions = list(session.scalars(select(RouterVersion).order_by(RouterVersion.id)))
        assert [(type(r.status), r.status) for r in runs] == [(JobStatus, JobStatus.SKIPPED), (JobStatus, JobStatus.QUEUED)]
        assert [v.status for v in versions] == [VersionStatus.RETIRED, VersionStatus.ACTIVE]
        assert all(type(v.status) is VersionStatus for v in versions)
        stored = session.execute(text("SELECT status FROM job_runs ORDER BY id")).scalars().all()
        assert [type(s) for s in stored] == [str, str] and stored == ["skipped", "queued"]  # no migration needed
        assert session.scalars(select(RouterVersion.id).where(RouterVersion.status == VersionStatus.ACTIVE)).all() \
            == [versions[1].id]


@pytest.mark.parametrize("backend", ["sqlite_settings", "pg_settings"])
def test_a_status_that_is_not_a_member_is_refused_and_nothing_written(request: pytest.FixtureRequest,
                                                                        backend: str) -> None:
    settings = request.getfixturevalue(backend)
    with pytest.raises(StatementError, match="'done' is not a valid JobStatus"), session_scope(settings) as session:
        session.add(JobRun(kind="train_router", status="done"))
    with pytest.raises(StatementError, match="'live' is not a valid VersionStatus"), session_scope(settings) as session:
        session.add(_version("live"))
    with session_scope(settings) as session:
        assert session.scalars(select(JobRun)).all() == [] and session.scalars(select(RouterVersion)).all() == []
