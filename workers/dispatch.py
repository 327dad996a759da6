"""Trigger jobs on the Celery workers, re-queue lost runs, and wait for them through ``job_runs``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from jobs.errors import JobInputError
from jobs.reaper import Reaped, reap_lost
from jobs.registry import get_job
from jobs.runs import create_run, get_run, retry_of, update_run
from store.db import session_scope
from store.schema import JobRun
from store.settings import Settings
from store.states import FINISHED, JobStatus

log = logging.getLogger(__name__)


def _send(settings: Settings, kind: str, run_id: int) -> None:
    from workers.app import celery_for, task_name

    result = celery_for(settings).send_task(task_name(kind), args=[run_id])
    update_run(settings, run_id, task_id=result.id)


def submit(settings: Settings, kind: str, params: dict[str, Any] | None = None, trigger: str = "cli") -> int:
    """Record the trigger in ``job_runs`` first, then send the task: no run is ever untracked.

    ``kind`` must be a job of ``jobs.registry.JOBS`` (JobInputError otherwise)."""
    get_job(kind)
    run_id = create_run(settings, kind, params, trigger)
    _send(settings, kind, run_id)
    return run_id


def reap(settings: Settings) -> list[Reaped]:
    """One sweep: runs whose heartbeat went silent become ``lost`` and their re-runs are sent.

    Safe to run anywhere and concurrently (scheduler, every worker, a waiting CLI): each lost run is
    taken by exactly one sweep (see ``jobs/reaper.py``).
    """
    with session_scope(settings) as session:
        reaped = reap_lost(session, settings)
    for item in reaped:
        if item.retry_id is None:
            log.error("job run %s (%s) lost on %s after %s attempts; marked failed",
                      item.run_id, item.kind, item.worker, item.attempt)
            continue
        log.warning("job run %s (%s) lost on %s; re-queued as run %s", item.run_id, item.kind, item.worker,
                    item.retry_id)
        try:
            _send(settings, item.kind, item.retry_id)
        except Exception as exc:  # the broker is down: say so on the row instead of leaving it queued
            log.exception("could not send re-run %s", item.retry_id)
            update_run(settings, item.retry_id, status=JobStatus.FAILED,
                       message=f"could not queue the re-run: {type(exc).__name__}: {exc}"[:2000])
    return reaped


def wait(settings: Settings, run_id: int, timeout: float | None = None,
         on_progress: Callable[[JobRun], None] | None = None,
         on_requeue: Callable[[JobRun, JobRun], None] | None = None, poll: float = 0.5) -> JobRun:
    """Poll the run until it finishes, following it through re-runs when it is lost; return the last run.

    While waiting it also sweeps for lost runs every heartbeat interval, so a run whose worker died
    is re-queued even when no scheduler or worker is left to notice. Raise TimeoutError after
    ``timeout`` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    next_sweep = time.monotonic() + settings.job_heartbeat_seconds
    while True:
        run = get_run(settings, run_id)
        if run is None:
            raise JobInputError(f"job run {run_id} does not exist")
        if on_progress is not None:
            on_progress(run)
        if run.status == JobStatus.LOST:
            retry = retry_of(settings, run.id)
            if retry is not None:  # written in the same transaction as the lost mark: always there
                if on_requeue is not None:
                    on_requeue(run, retry)
                run_id = retry.id
                continue
        if run.status in FINISHED:
            return run
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job run {run_id} still {run.status} after {timeout:.0f} s")
        if run.status == JobStatus.RUNNING and time.monotonic() >= next_sweep:
            next_sweep = time.monotonic() + settings.job_heartbeat_seconds
            try:
                reap(settings)
            except Exception:
                log.warning("lost-run sweep failed; still waiting", exc_info=True)
        time.sleep(poll)
