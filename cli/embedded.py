"""The embedded mode (``thalamus up`` / ``make serve``): daemon, scheduler and a worker on one machine.

A process supervisor, not part of any one service: it runs the daemon and the scheduler in this
process and a ``thalamus worker`` as a child, and stops them together. It lives with the command
line because it composes the services (the daemon package never imports the worker layer) and
starts the CLI's own ``worker`` verb.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from store.settings import Settings

log = logging.getLogger(__name__)


@contextmanager
def worker_process(settings: Settings, pool: str = "solo") -> Iterator[subprocess.Popen[bytes]]:
    """A ``thalamus worker`` child process, stopped (warm shutdown, then kill) on exit."""
    command = [sys.executable, "-m", "cli", "worker", "--pool", pool]
    env = settings.as_env()
    with open(settings.home / "worker.log", "ab") as logfile:  # the child keeps its own copy of the handle
        process = subprocess.Popen(command, env=env, stdout=logfile, stderr=subprocess.STDOUT)
    log.info("worker started (pid %s), log in %s", process.pid, settings.home / "worker.log")
    try:
        yield process
    finally:
        stop_process(process)
        logfile.close()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM (a warm shutdown), then SIGKILL after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def run_all(settings: Settings, pool: str = "solo") -> None:
    """Daemon in this process with the scheduler in-process, worker as a child."""
    from daemon.server import run_server
    from workers.scheduler import background_scheduler

    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; Python's default SIGTERM
    # action would then kill us before the ``finally`` blocks stop the worker and the scheduler.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with worker_process(settings, pool):
        scheduler = background_scheduler(settings)
        scheduler.start()
        try:
            run_server(settings)
        finally:
            scheduler.shutdown(wait=False)
