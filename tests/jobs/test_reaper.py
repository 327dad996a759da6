"""The reaper: silent runs become lost with exactly one re-run, however many reapers race."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from sqlalchemy import func, select, update

from jobs.reaper import reap_lost
from jobs.runs import claim, create_run, get_run
from store.db import session_factory, session_scope
from store.schema import JobRun, utcnow

BACKENDS = ["sqlite_settings", "pg_settings"]


def _running(settings, attempt: int = 1, silent_for: float = 600.0) -> int:  # type: ignore[no-untyped-def]
    run_id = create_run(settings, "train_router", {"epochs": 2}, "schedule")
    claim(settings, run_id, "deadhost:4242")
    with session_scope(settings) as session:
        session.execute(update(JobRun).where(JobRun.id == run_id).values(
            attempt=attempt, progress=0.425, heartbeat_at=utcnow() - dt.timedelta(seconds=silent_for)))
    return run_id


def _retries(settings, run_id: int) -> list[JobRun]:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        return list(session.scalars(select(JobRun).where(JobRun.retry_of == run_id)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_silent_run_is_lost_and_re_queued_once(request, backend: str) -> None:
    settings = request.getfixturevalue(backend).model_copy(update={"job_lost_after_seconds": 10.0})
    silent = _running(settings, silent_for=30.0)
    alive = _running(settings, silent_for=1.0)
    queued = create_run(settings, "refresh_losses", {}, "cli")
    with session_scope(settings) as session:
        (reaped,) = reap_lost(session, settings)
    assert (reaped.run_id, reaped.worker, reaped.attempt) == (silent, "deadhost:4242", 1)
    lost = get_run(settings, silent)
    assert lost.status == "lost" and lost.finished_at is not None
    assert f"re-queued as run {reaped.retry_id}" in lost.message and "deadhost:4242" in lost.message
    assert "42.5 %" in lost.message
    (retry,) = _retries(settings, silent)
    assert (retry.id, retry.status, retry.attempt, retry.kind, retry.params, retry.trigger) == (
        reaped.retry_id, "queued", 2, "train_router", {"epochs": 2}, "schedule")
    assert get_run(settings, alive).status == "running" and get_run(settings, queued).status == "queued"
    with session_scope(settings) as session:
        assert reap_lost(session, settings) == []  # idempotent


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_attempts_a_lost_run_fails_with_a_clear_message(request, backend: str) -> None:
    settings = request.getfixturevalue(backend).model_copy(update={"job_max_attempts": 3})
    run_id = _running(settings, attempt=3, silent_for=3600)
    with session_scope(settings) as session:
        (reaped,) = reap_lost(session, settings)
    assert reaped.retry_id is None
    run = get_run(settings, run_id)
    assert run.status == "failed" and "gave up after 3 attempts" in run.message
    assert _retries(settings, run_id) == []


def test_a_second_reaper_blocked_on_the_row_gets_nothing_postgres(pg_settings) -> None:  # type: ignore[no-untyped-def]
    """Deterministic interleaving: B's UPDATE starts while A holds the row, A commits, B re-checks and skips."""
    run_id = _running(pg_settings)
    first = session_factory(pg_settings)()
    got_first = reap_lost(first, pg_settings)  # uncommitted: A holds the row lock
    second_result: list[object] = []

    def second() -> None:
        with session_scope(pg_settings) as session:
            second_result.extend(reap_lost(session, pg_settings))

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive(), "the second reaper should wait on the first one's row lock"
    first.commit()
    first.close()
    thread.join(10)
    assert [r.run_id for r in got_first] == [run_id] and second_result == []
    assert len(_retries(pg_settings, run_id)) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_racing_reapers_make_one_re_run(request, backend: str) -> None:
    settings = request.getfixturevalue(backend)
    runs = [_running(settings) for _ in range(3)]
    barrier = threading.Barrier(6)
    results: list[list[object]] = []
    errors: list[BaseException] = []

    def reaper() -> None:
        try:
            barrier.wait()
            with session_scope(settings) as session:
                results.append(reap_lost(session, settings))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=reaper) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(r.run_id for batch in results for r in batch) == runs
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(JobRun).where(JobRun.retry_of.is_not(None))) == 3
