"""Lost-run sweeps inside every worker: at start-up (``worker_ready``) and every heartbeat interval.

The scheduler sweeps too (``workers/scheduler.py``); sweeping in the worker as well means a dead
worker's run is re-queued by the next worker that is (or comes) up, even where no scheduler runs.
The sweep thread lives in the worker's main process; pool children forked after it has opened
database connections drop the inherited pool (``worker_process_init``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from store.db import forget_engines_after_fork
from store.settings import Settings, get_settings

log = logging.getLogger(__name__)


class Sweeper:
    """Calls ``workers.dispatch.reap`` at once and then every ``interval`` seconds, on a daemon thread."""

    def __init__(self, settings: Settings, interval: float) -> None:
        self._settings, self._interval = settings, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="thalamus-lost-run-sweeper", daemon=True)

    def _loop(self) -> None:
        from workers.dispatch import reap

        while True:
            try:
                reap(self._settings)
            except Exception:  # database or broker down: try again next interval
                log.warning("lost-run sweep failed", exc_info=True)
            if self._stop.wait(self._interval):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


_SWEEPER: Sweeper | None = None


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    global _SWEEPER
    settings = get_settings()
    _SWEEPER = Sweeper(settings, settings.job_heartbeat_seconds)
    _SWEEPER.start()
    log.info("lost-run sweeps every %g s (runs silent for %g s are re-queued)",
             settings.job_heartbeat_seconds, settings.job_lost_after_seconds)


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    if _SWEEPER is not None:
        _SWEEPER.stop()


@worker_process_init.connect
def _fresh_connections_in_child(**_: Any) -> None:
    forget_engines_after_fork()
