"""Long-running services: the HTTP daemon, a Celery worker, the scheduler, or all three together."""

from __future__ import annotations

from typing import Literal

from cli._common import Group, arg, positive_int, verb
from store.settings import Settings

Pool = Literal["solo", "prefork", "threads"]
POOLS: tuple[Pool, ...] = ("solo", "prefork", "threads")


def serve(settings: Settings) -> None:
    """Run the HTTP daemon."""
    from daemon.server import run_server

    run_server(settings)


def up(settings: Settings, *, pool: Pool = "solo") -> None:
    """Run daemon + worker + scheduler together (embedded mode)."""
    from cli.embedded import run_all
    from store.migrate import upgrade

    upgrade(settings)
    run_all(settings, pool=pool)


def worker(settings: Settings, *, queues: str | None = None, concurrency: int = 1, pool: Pool = "prefork") -> None:
    """Run a Celery worker."""
    from jobs.registry import queues as job_queues
    from workers.app import app

    queues = queues or ",".join(job_queues())
    app.worker_main(["worker", "-Q", queues, "--concurrency", str(concurrency), "--pool", pool,
                     "--loglevel", "INFO", "--without-gossip", "--without-mingle"])


def scheduler(settings: Settings) -> None:
    """Run the job scheduler (exactly one per deployment)."""
    from workers.scheduler import run_forever

    run_forever(settings)


GROUP = Group(None, "services", (
    verb("serve", serve),
    verb("up", up, arg("--pool", default="solo", choices=POOLS)),
    verb("worker", worker,
         arg("--queues", help="comma-separated queues (default: every job's queue)"),
         arg("--concurrency", type=positive_int, default=1),
         arg("--pool", default="prefork", choices=POOLS)),
    verb("scheduler", scheduler),
))
