"""The ``job_runs`` table: every trigger recorded, with progress users can watch and a heartbeat.

A run is claimed by the worker process that executes it (``status='running'``, ``worker``,
``heartbeat_at``) in one conditional UPDATE. While the job runs, a thread writes ``heartbeat_at``
every ``THALAMUS_JOB_HEARTBEAT_SECONDS``; ``jobs/reaper.py`` marks a run whose heartbeat went
silent ``lost``. Every write the executing process makes afterwards is conditional on the run still
being ``running`` and still its own, so a run given up as lost is never overwritten.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import case, func, select, update

from store.db import session_scope
from store.schema import JobRun, utcnow
from store.settings import Settings
from store.states import JobStatus

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
_RUNS = JobRun.__table__


def worker_id() -> str:
    """This process, as recorded on the runs it executes: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def db_now(settings: Settings) -> Any:
    """The database's clock on PostgreSQL (one clock for every host), this host's on SQLite (one host)."""
    return utcnow() if settings.is_sqlite else func.now()


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def create_run(settings: Settings, kind: str, params: dict[str, Any] | None = None, trigger: str = "cli") -> int:
    with session_scope(settings) as session:
        run = JobRun(kind=kind, params=params or {}, trigger=trigger, status=JobStatus.QUEUED,
                     message="queued", attempt=1)
        session.add(run)
        session.flush()
        return run.id


def record_skip(settings: Settings, kind: str, message: str, result: dict[str, Any],
                trigger: str = "schedule", params: dict[str, Any] | None = None) -> int:
    """Record a trigger that was not run (``skipped``, finished at once, ``message`` says why)."""
    now = db_now(settings)
    with session_scope(settings) as session:
        run = JobRun(kind=kind, params=params or {}, trigger=trigger, status=JobStatus.SKIPPED, message=message[:2000],
                     result=result, progress=0.0, attempt=1, finished_at=now)
        session.add(run)
        session.flush()
        return run.id


def get_run(settings: Settings, run_id: int) -> JobRun | None:
    with session_scope(settings) as session:
        return session.get(JobRun, run_id)


def retry_of(settings: Settings, run_id: int) -> JobRun | None:
    """The run that re-runs ``run_id`` after it was lost, if any."""
    with session_scope(settings) as session:
        return session.scalars(select(JobRun).where(JobRun.retry_of == run_id).order_by(JobRun.id)).first()


def update_run(settings: Settings, run_id: int, **values: Any) -> None:
    with session_scope(settings) as session:
        run = session.get(JobRun, run_id)
        if run is None:
            raise LookupError(f"job run {run_id} does not exist")
        for key, value in values.items():
            setattr(run, key, value)


def claim(settings: Settings, run_id: int, worker: str) -> JobRun | None:
    """Take a queued run (or one whose pool process died: Celery redelivers it) for ``worker``.

    None when the run is finished or lost (a redelivered task must not run it again) or does not
    exist. Re-claiming a ``running`` run counts an attempt; past THALAMUS_JOB_MAX_ATTEMPTS it fails.
    """
    now = db_now(settings)
    with session_scope(settings) as session:
        attempt = session.execute(
            update(_RUNS)
            .where(_RUNS.c.id == run_id, _RUNS.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
            .values(status=JobStatus.RUNNING.value, worker=worker, heartbeat_at=now, started_at=now, progress=0.0,
                    message="started", error=None,
                    attempt=_RUNS.c.attempt + case((_RUNS.c.status == JobStatus.RUNNING.value, 1), else_=0))
            .returning(_RUNS.c.attempt)
        ).scalar_one_or_none()
        if attempt is None:
            return None
        if attempt > settings.job_max_attempts:
            session.execute(update(_RUNS).where(_RUNS.c.id == run_id).values(
                status=JobStatus.FAILED.value, finished_at=now,
                message=f"gave up: the process running it died {attempt - 1} times "
                        f"(THALAMUS_JOB_MAX_ATTEMPTS={settings.job_max_attempts})"))
            log.error("job run %s: attempt %s exceeds THALAMUS_JOB_MAX_ATTEMPTS; marked failed", run_id, attempt)
            return None
        return session.get(JobRun, run_id)


def _own(settings: Settings, run_id: int, worker: str, **values: Any) -> bool:
    """Write ``values`` only while the run is still running on ``worker``; False when it is not."""
    with session_scope(settings) as session:
        written = session.execute(
            update(_RUNS)
            .where(_RUNS.c.id == run_id, _RUNS.c.status == JobStatus.RUNNING.value, _RUNS.c.worker == worker)
            .values(heartbeat_at=db_now(settings), **values)
            .returning(_RUNS.c.id)
        ).scalar_one_or_none()
    return written is not None


class Heartbeat:
    """A daemon thread that writes ``heartbeat_at`` every ``interval`` seconds until stopped."""

    def __init__(self, settings: Settings, run_id: int, worker: str, interval: float) -> None:
        self._settings, self._run_id, self._worker, self._interval = settings, run_id, worker, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not _own(self._settings, self._run_id, self._worker):
                    log.warning("job run %s is no longer running on %s (marked lost?); heartbeat stopped",
                                self._run_id, self._worker)
                    return
            except Exception:  # a database blip: keep beating; the lost-after window absorbs a few misses
                log.warning("job run %s: heartbeat not written", self._run_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class ProgressWriter:
    """Writes progress to the run's row, at most once a second (and always at 100 %)."""

    def __init__(self, settings: Settings, run_id: int, worker: str, min_interval: float = 1.0) -> None:
        self._settings, self._run_id, self._worker, self._min_interval = settings, run_id, worker, min_interval
        self._last = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < self._min_interval:
            return
        self._last = now
        _own(self._settings, self._run_id, self._worker,
             progress=max(0.0, min(1.0, float(fraction))), message=message[:2000])


@contextlib.contextmanager
def tracked(settings: Settings, run_id: int, worker: str) -> Iterator[ProgressWriter]:
    """Heartbeat while the body runs a claimed run; on an exception mark it failed with the error."""
    with Heartbeat(settings, run_id, worker, settings.job_heartbeat_seconds):
        try:
            yield ProgressWriter(settings, run_id, worker)
        except BaseException as exc:
            if not _own(settings, run_id, worker, status=JobStatus.FAILED.value, finished_at=db_now(settings),
                        message=f"{type(exc).__name__}: {exc}"[:2000], error=traceback.format_exc()[-8000:]):
                log.warning("job run %s failed after it was given up as lost; its row keeps status lost", run_id)
            raise


def finish(settings: Settings, run_id: int, worker: str, result: dict[str, Any]) -> bool:
    """Record success; False (and the row untouched) when the run was given up as lost meanwhile."""
    done = _own(settings, run_id, worker, status=JobStatus.SUCCEEDED.value, finished_at=db_now(settings),
                progress=1.0, message="done", result=result)
    if not done:
        log.warning("job run %s finished on %s after it was given up as lost; result %s not recorded on it",
                    run_id, worker, result)
    return done
