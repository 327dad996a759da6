"""``wait`` follows a lost run to its re-run, and sweeps for lost runs itself while it waits."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from sqlalchemy import update

from jobs.runs import claim, create_run, get_run, retry_of, update_run
from store.db import session_scope
from store.schema import JobRun, utcnow
from workers.dispatch import wait


def _silent(settings, run_id: int) -> None:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        session.execute(update(JobRun).where(JobRun.id == run_id).values(heartbeat_at=utcnow() - dt.timedelta(hours=1)))


@pytest.mark.parametrize("backend", ["sqlite_settings", "pg_settings"])
def test_wait_sweeps_and_follows_a_dead_run_to_its_re_run(request, backend: str) -> None:
    settings = request.getfixturevalue(backend).model_copy(update={"job_heartbeat_seconds": 0.2})
    run_id = create_run(settings, "train_router", {}, "cli")
    claim(settings, run_id, "deadhost:1")
    _silent(settings, run_id)  # its worker died; no scheduler, no worker left to notice

    def another_worker_runs_the_retry() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            retry = retry_of(settings, run_id)
            if retry is not None:
                update_run(settings, retry.id, status="succeeded", result={"version_id": 7})
                return
            time.sleep(0.1)

    helper = threading.Thread(target=another_worker_runs_the_retry)
    helper.start()
    followed: list[tuple[int, int]] = []
    final = wait(settings, run_id, timeout=20, poll=0.05, on_requeue=lambda old, new: followed.append((old.id, new.id)))
    helper.join()
    assert get_run(settings, run_id).status == "lost"
    assert followed == [(run_id, final.id)] and final.retry_of == run_id
    assert (final.status, final.result) == ("succeeded", {"version_id": 7})


def test_wait_returns_a_run_that_ran_out_of_attempts_as_failed(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    settings = sqlite_settings.model_copy(update={"job_heartbeat_seconds": 0.2, "job_max_attempts": 1})
    run_id = create_run(settings, "train_router", {}, "cli")
    claim(settings, run_id, "deadhost:1")
    _silent(settings, run_id)
    final = wait(settings, run_id, timeout=10, poll=0.05)
    assert final.id == run_id and final.status == "failed" and "gave up after 1 attempts" in final.message
