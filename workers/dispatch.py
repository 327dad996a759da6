"""Trigger jobs on the Celery workers and wait for them through ``job_runs``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from jobs.errors import JobInputError
from jobs.runs import JOB_KINDS, update_run, create_run, get_run
from store.schema import JobRun
from store.settings import Settings


def submit(settings: Settings, kind: str, params: dict[str, Any] | None = None, trigger: str = "cli") -> int:
    """Record the trigger in ``job_runs`` first, then send the task: no run is ever untracked."""
    if kind not in JOB_KINDS:
        raise JobInputError(f"unknown job {kind!r}; known jobs: {', '.join(JOB_KINDS)}")
    run_id = create_run(settings, kind, params, trigger)
    from workers.app import celery_for

    result = celery_for(settings).send_task(f"thalamus.{kind}", args=[run_id])
    update_run(settings, run_id, task_id=result.id)
    return run_id


def wait(settings: Settings, run_id: int, timeout: float | None = None,
         on_progress: Callable[[JobRun], None] | None = None, poll: float = 0.5) -> JobRun:
    """Poll the run until it finishes; raise TimeoutError after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        run = get_run(settings, run_id)
        if run is None:
            raise JobInputError(f"job run {run_id} does not exist")
        if on_progress is not None:
            on_progress(run)
        if run.status in ("succeeded", "failed"):
            return run
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job run {run_id} still {run.status} after {timeout:.0f} s")
        time.sleep(poll)
