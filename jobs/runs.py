"""The ``job_runs`` table: every trigger recorded, with progress users can watch."""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from store.db import session_scope
from store.schema import JobRun, utcnow
from store.settings import Settings

Progress = Callable[[float, str], None]
JOB_KINDS = ("refresh_losses", "train_router")


def create_run(settings: Settings, kind: str, params: dict[str, Any] | None = None, trigger: str = "cli") -> int:
    with session_scope(settings) as session:
        run = JobRun(kind=kind, params=params or {}, trigger=trigger, status="queued", message="queued")
        session.add(run)
        session.flush()
        return run.id


def get_run(settings: Settings, run_id: int) -> JobRun | None:
    with session_scope(settings) as session:
        return session.get(JobRun, run_id)


def update_run(settings: Settings, run_id: int, **values: Any) -> None:
    with session_scope(settings) as session:
        run = session.get(JobRun, run_id)
        if run is None:
            raise LookupError(f"job run {run_id} does not exist")
        for key, value in values.items():
            setattr(run, key, value)


class ProgressWriter:
    """Writes progress to the run's row, at most once a second (and always at 100 %)."""

    def __init__(self, settings: Settings, run_id: int, min_interval: float = 1.0) -> None:
        self._settings, self._run_id, self._min_interval = settings, run_id, min_interval
        self._last = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < self._min_interval:
            return
        self._last = now
        update_run(self._settings, self._run_id, progress=max(0.0, min(1.0, float(fraction))), message=message[:2000])


@contextlib.contextmanager
def tracked(settings: Settings, run_id: int) -> Iterator[ProgressWriter]:
    """Mark a run running; on exit mark it succeeded or failed with the error."""
    update_run(settings, run_id, status="running", started_at=utcnow(), progress=0.0, message="started", error=None)
    writer = ProgressWriter(settings, run_id)
    try:
        yield writer
    except BaseException as exc:
        update_run(
            settings, run_id, status="failed", finished_at=utcnow(),
            message=f"{type(exc).__name__}: {exc}"[:2000], error=traceback.format_exc()[-8000:],
        )
        raise


def finish(settings: Settings, run_id: int, result: dict[str, Any]) -> None:
    update_run(settings, run_id, status="succeeded", finished_at=utcnow(), progress=1.0, message="done", result=result)
