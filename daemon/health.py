"""The database as ``/healthz`` sees it: a cheap cached ``SELECT 1`` that answers within a bound.

``/healthz`` stays 200 and says ``degraded`` while the database is unreachable, so a load balancer
keeps sending traffic to a daemon that can still route (outage responses: ``daemon/errors.py``).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time

from sqlalchemy import text

from store.db import get_engine
from store.settings import Settings


class DatabaseProbe:
    """``SELECT 1`` at most once per ``ttl`` seconds, answered within ``timeout`` seconds whatever the database does."""

    def __init__(self, settings: Settings, ttl: float = 1.5, timeout: float = 2.0) -> None:
        self.settings, self.ttl, self.timeout = settings, ttl, timeout
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="thalamus-db-probe")
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future[None] | None = None
        self._checked_at = float("-inf")
        self._problem: str | None = None

    def problem(self) -> str | None:
        """None when the database answered recently, else one sentence saying why it is unavailable."""
        with self._lock:
            if time.monotonic() - self._checked_at < self.ttl:
                return self._problem
            if self._future is None:  # one ping in flight at a time, however many callers
                self._future = self._executor.submit(self._ping)
            future = self._future
        try:
            future.result(timeout=self.timeout)
            problem = None
        except concurrent.futures.TimeoutError:
            return f"the database did not answer within {self.timeout:g} s"
        except Exception as exc:
            problem = f"the database is unreachable: {_first_line(exc)}"
        with self._lock:
            if self._future is future:
                self._future = None
                self._checked_at, self._problem = time.monotonic(), problem
        return problem

    def _ping(self) -> None:
        with get_engine(self.settings).connect() as connection:
            connection.execute(text("SELECT 1"))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
