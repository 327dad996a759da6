"""Celery tasks: one per ``jobs.registry`` entry, each running one ``job_runs`` row through its job."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from jobs.errors import JobLocked
from jobs.registry import JOBS, get_job
from jobs.runs import claim, finish, get_run, tracked, worker_id
from store.settings import Settings, get_settings

log = logging.getLogger(__name__)


def execute(settings: Settings, run_id: int) -> dict[str, Any] | None:
    """Run a job row. A row that is finished, lost (re-run under another id) or claimed past its
    attempts is not run again: a task the broker redelivers hours later is skipped."""
    worker = worker_id()
    run = claim(settings, run_id, worker)
    if run is None:
        existing = get_run(settings, run_id)
        if existing is None:
            log.error("job run %s does not exist; dropping the task", run_id)
            return None
        log.info("job run %s already %s; skipping the redelivered task", run_id, existing.status)
        return existing.result
    with tracked(settings, run_id, worker) as progress:
        # The job module (and torch) is imported here, in the process that runs it: never in the
        # prefork parent.
        result = get_job(run.kind).run(settings, progress, dict(run.params or {}))
    finish(settings, run_id, worker, result)
    return result


def _task(app: Celery, kind: str) -> Task:
    from workers.app import task_name

    @app.task(name=task_name(kind), acks_late=True, shared=False)  # this app only: each app registers its own
    def run(run_id: int) -> None:
        try:
            execute(get_settings(), run_id)
        except JobLocked as exc:
            log.warning("job run %s: %s", run_id, exc)
        except Exception:  # recorded in job_runs by tracked(); the task itself is done
            log.exception("job run %s failed", run_id)

    return run


def register_tasks(app: Celery) -> dict[str, Task]:
    """One task per job in the registry, named ``thalamus.<job>``."""
    return {kind: _task(app, kind) for kind in JOBS}
