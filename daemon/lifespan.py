"""The daemon's lifespan: start the log writer (which replays the spool), bootstrap and load a router, watch.

On shutdown everything stops in reverse order; the writer flushes (or spools) what it still holds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from daemon.health import DatabaseProbe
from daemon.holder import RouterHolder
from daemon.logwriter import RequestLogWriter
from daemon.shadow import ShadowRunner
from store.settings import Settings

log = logging.getLogger(__name__)

BOOTSTRAP_WAIT_SECONDS = 120.0


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the parts ``create_app`` put in ``app.state`` for as long as the server runs."""
    settings: Settings = app.state.settings
    holder: RouterHolder = app.state.holder
    writer: RequestLogWriter = app.state.writer
    probe: DatabaseProbe = app.state.probe
    shadows: ShadowRunner = app.state.shadows
    writer.start()
    await run_in_threadpool(bootstrap, settings, holder)
    holder.start()
    shadows.start()
    try:
        yield
    finally:
        await app.state.gateway.aclose()
        shadows.close()
        holder.stop()
        probe.close()
        await run_in_threadpool(writer.close)


def bootstrap(settings: Settings, holder: RouterHolder) -> None:
    """Make sure a router version is active (cold start if none), then load it.

    The daemon imports the cold start's code (torch) only when there is no active version: a daemon
    that serves an exported bundle never loads torch (docs/architecture.md, "Inference path")."""
    if holder.load_active() and holder.current is not None:
        return
    from jobs.bootstrap import ensure_active_router
    from jobs.errors import JobInputError, JobLocked

    deadline = time.monotonic() + BOOTSTRAP_WAIT_SECONDS
    while True:
        try:
            ensure_active_router(settings)
            break
        except JobLocked:  # another daemon is creating the cold-start router
            if time.monotonic() > deadline:
                log.error("gave up waiting for another process to create the cold-start router")
                break
            time.sleep(1.0)
        except JobInputError as exc:
            holder.last_error = str(exc)
            log.error("cannot start routing yet: %s", exc)
            break
        except Exception:
            log.exception("creating the cold-start router failed; the watcher will keep looking for one")
            break
    holder.load_active()
