"""The one scheduler: APScheduler triggers jobs on intervals; every trigger lands in ``job_runs``.

Which jobs and how often come from ``jobs.registry`` (each spec's ``schedule`` setting). A spec's
``gate`` is asked first: when it says there is nothing to do, the trigger is recorded as a
``skipped`` run with the reason and no task is sent.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from jobs.registry import JOBS
from jobs.runs import record_skip
from store.settings import Settings
from workers.dispatch import reap, submit

log = logging.getLogger(__name__)
Scheduler = TypeVar("Scheduler", bound=BaseScheduler)


def _trigger(settings: Settings, kind: str) -> None:
    """One scheduled trigger: one run, or one per entry of the job's fan-out (e.g. per expert)."""
    try:
        spec = JOBS[kind]
        skip = spec.skip(settings)
        if skip is not None:
            run_id = record_skip(settings, kind, skip.message, skip.details, trigger="schedule")
            log.info("scheduled %s skipped (job run %s): %s", kind, run_id, skip.message)
            return
        every = spec.scheduled_params(settings)
    except Exception:
        log.exception("could not trigger %s", kind)
        return
    for params in every:
        try:
            skip = spec.precheck(settings, params)
            if skip is not None:
                run_id = record_skip(settings, kind, skip.message, skip.details, trigger="schedule", params=params)
                log.info("scheduled %s %s skipped (job run %s): %s", kind, params, run_id, skip.message)
                continue
            run_id = submit(settings, kind, params or None, trigger="schedule")
            log.info("scheduled %s %s as job run %s", kind, params, run_id)
        except Exception:
            log.exception("could not trigger %s %s", kind, params)


def _sweep(settings: Settings) -> None:
    """Re-queue runs whose worker died (logged by ``reap``, recorded on the rows: ``lost``, ``retry_of``)."""
    try:
        reap(settings)
    except Exception:
        log.exception("lost-run sweep failed")


def configure(scheduler: Scheduler, settings: Settings) -> Scheduler:
    for spec in JOBS.values():
        minutes = spec.interval_minutes(settings)
        if minutes > 0:
            scheduler.add_job(_trigger, "interval", minutes=minutes, args=[settings, spec.name], id=spec.name,
                              max_instances=1, coalesce=True, replace_existing=True)
    scheduler.add_job(_sweep, "interval", seconds=settings.job_heartbeat_seconds, args=[settings], id="reap_lost",
                      max_instances=1, coalesce=True, replace_existing=True)
    return scheduler


def background_scheduler(settings: Settings) -> BackgroundScheduler:
    """In-process scheduler for the embedded mode."""
    return configure(BackgroundScheduler(daemon=True), settings)


def run_forever(settings: Settings) -> None:
    """``thalamus scheduler``: the production scheduler process."""
    scheduler = configure(BlockingScheduler(), settings)
    log.info("scheduler started: %s", [job.id for job in scheduler.get_jobs()])
    scheduler.start()
