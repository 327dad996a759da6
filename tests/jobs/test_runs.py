"""Claiming runs, the heartbeat thread, and writes that never overwrite a run given up as lost."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import update

from jobs.runs import claim, create_run, finish, get_run, tracked
from store.db import session_scope
from store.schema import JobRun

BACKENDS = ["sqlite_settings", "pg_settings"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_claim_takes_queued_and_redelivered_runs_and_refuses_finished_ones(request, backend: str) -> None:
    settings = request.getfixturevalue(backend).model_copy(update={"job_max_attempts": 2})
    run_id = create_run(settings, "train_router", {}, "test")
    run = claim(settings, run_id, "host:1")
    assert (run.status, run.worker, run.attempt) == ("running", "host:1", 1) and run.heartbeat_at is not None
    # The pool process died and Celery redelivered the task: the same row runs again, one attempt more.
    run = claim(settings, run_id, "host:2")
    assert (run.status, run.worker, run.attempt) == ("running", "host:2", 2)
    # ... and once more is past THALAMUS_JOB_MAX_ATTEMPTS=2: failed, not run.
    assert claim(settings, run_id, "host:3") is None
    failed = get_run(settings, run_id)
    assert failed.status == "failed" and "died 2 times" in failed.message
    for status in ("succeeded", "lost"):
        other = create_run(settings, "train_router", {}, "test")
        with session_scope(settings) as session:
            session.execute(update(JobRun).where(JobRun.id == other).values(status=status))
        assert claim(settings, other, "host:1") is None and get_run(settings, other).status == status
    assert claim(settings, 9999, "host:1") is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_heartbeat_advances_while_the_job_runs(request, backend: str) -> None:
    settings = request.getfixturevalue(backend).model_copy(update={"job_heartbeat_seconds": 0.2})
    run_id = create_run(settings, "train_router", {}, "test")
    first = claim(settings, run_id, "host:1").heartbeat_at
    with tracked(settings, run_id, "host:1"):
        time.sleep(1.0)
    beat = get_run(settings, run_id).heartbeat_at
    assert beat > first
    time.sleep(0.5)  # stopped with the body: no beat after the context exits
    assert get_run(settings, run_id).heartbeat_at == beat
    assert finish(settings, run_id, "host:1", {"ok": 1})
    assert get_run(settings, run_id).status == "succeeded"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_given_up_as_lost_is_not_overwritten_by_its_old_worker(request, backend: str) -> None:
    settings = request.getfixturevalue(backend)
    run_id = create_run(settings, "train_router", {}, "test")
    claim(settings, run_id, "host:1")
    with session_scope(settings) as session:
        session.execute(update(JobRun).where(JobRun.id == run_id).values(status="lost", message="lost"))
    assert not finish(settings, run_id, "host:1", {"version_id": 1})
    with pytest.raises(RuntimeError):
        with tracked(settings, run_id, "host:1"):
            raise RuntimeError("boom")
    run = get_run(settings, run_id)
    assert (run.status, run.message, run.result) == ("lost", "lost", None)
