"""The one scheduler: APScheduler triggers jobs on intervals; every trigger lands in ``job_runs``."""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from workers.dispatch import reap, submit
from store.settings import Settings

log = logging.getLogger(__name__)


def _trigger(settings: Settings, kind: str) -> None:
    try:
        run_id = submit(settings, kind, trigger="schedule")
        log.info("scheduled %s as job run %s", kind, run_id)
    except Exception:
        log.exception("could not trigger %s", kind)


def _sweep(settings: Settings) -> None:
    """Re-queue runs whose worker died (logged by ``reap``, recorded on the rows: ``lost``, ``retry_of``)."""
    try:
        reap(settings)
    except Exception:
        log.exception("lost-run sweep failed")


def configure(scheduler: BaseScheduler, settings: Settings) -> BaseScheduler:
    intervals = {"refresh_losses": settings.refresh_interval_minutes, "train_router": settings.train_interval_minutes}
    for kind, minutes in intervals.items():
        if minutes > 0:
            scheduler.add_job(_trigger, "interval", minutes=minutes, args=[settings, kind], id=kind,
                              max_instances=1, coalesce=True, replace_existing=True)
    scheduler.add_job(_sweep, "interval", seconds=settings.job_heartbeat_seconds, args=[settings], id="reap_lost",
                      max_instances=1, coalesce=True, replace_existing=True)
    return scheduler


def background_scheduler(settings: Settings) -> BackgroundScheduler:
    """In-process scheduler for the embedded mode."""
    return configure(BackgroundScheduler(daemon=True), settings)  # type: ignore[return-value]


def run_forever(settings: Settings) -> None:
    """``thalamus scheduler``: the production scheduler process."""
    scheduler = configure(BlockingScheduler(), settings)
    log.info("scheduler started: %s", [job.id for job in scheduler.get_jobs()])
    scheduler.start()
