"""Database outages as the API shows them: 503 with ``Retry-After``, and a cheap cached ping for /healthz.

Routing needs no database (the router is in memory and answered requests are spooled), so an
outage makes only the endpoints that read or write the database answer 503; ``/healthz`` stays 200
and says ``degraded`` so a load balancer keeps sending traffic to a daemon that can still route.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from daemon.spool import SpoolError
from store.db import get_engine
from store.settings import Settings

RETRY_AFTER_SECONDS = 5
DATABASE_ERRORS: tuple[type[BaseException], ...] = (sa_exc.DBAPIError, sa_exc.TimeoutError, sa_exc.DisconnectionError)


def database_unavailable(exc: BaseException) -> bool:
    """True for errors of the connection (refused, lost, pool timed out), not of the data."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError,
                            sa_exc.DisconnectionError))


async def unavailable_response(_: Request, exc: Exception) -> JSONResponse:
    """503 with one sentence and ``Retry-After`` when the database (or the spool) cannot be reached."""
    if isinstance(exc, SpoolError):
        detail = "the request could not be made durable on this daemon's disk, so it was not answered; retry shortly"
    elif database_unavailable(exc):
        detail = "the database is unreachable right now; retry in a few seconds"
    else:
        raise exc  # a data error: Starlette's server-error handler answers 500 as before
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


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
