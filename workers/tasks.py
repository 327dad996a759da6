"""Celery tasks: each runs one ``job_runs`` row through its job function."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from jobs.errors import JobLocked
from jobs.runs import Progress, claim, finish, get_run, tracked, worker_id
from store.settings import Settings, get_settings
from workers.app import app

log = logging.getLogger(__name__)


def _refresh_losses(settings: Settings, progress: Progress, params: dict[str, Any]) -> dict[str, Any]:
    from jobs.refresh_losses import refresh_losses

    return refresh_losses(settings, progress, **params)


def _train_router(settings: Settings, progress: Progress, params: dict[str, Any]) -> dict[str, Any]:
    from jobs.train_router import train_router

    return train_router(settings, progress, params)


# Job modules import torch lazily, inside the task: the prefork parent never loads it (or CUDA).
JOBS: dict[str, Callable[[Settings, Progress, dict[str, Any]], dict[str, Any]]] = {
    "refresh_losses": _refresh_losses,
    "train_router": _train_router,
}


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
    job = JOBS[run.kind]
    with tracked(settings, run_id, worker) as progress:
        result = job(settings, progress, dict(run.params or {}))
    finish(settings, run_id, worker, result)
    return result


def _task(kind: str):  # type: ignore[no-untyped-def]
    @app.task(name=f"thalamus.{kind}", acks_late=True)
    def run(run_id: int) -> None:
        try:
            execute(get_settings(), run_id)
        except JobLocked as exc:
            log.warning("job run %s: %s", run_id, exc)
        except Exception:  # recorded in job_runs by tracked(); the task itself is done
            log.exception("job run %s failed", run_id)

    return run


refresh_losses_task = _task("refresh_losses")
train_router_task = _task("train_router")
