"""Fault suite: a worker killed mid-job. Real ``thalamus worker`` processes, PostgreSQL, Redis, SIGKILL.

The training run is the real ``train_router`` job on the tiny backbone, made long enough to be
caught mid-training with its own ``epochs``/``patience`` params.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import select, text

from cli.main import main
from jobs.ingest import ingest_file
from jobs.runs import get_run
from store.db import get_engine, session_scope
from store.schema import Expert, JobRun
from tests.conftest import make_settings
from tests.workers.helpers import start, stop_process, wait_for_log
from tests.workers.test_worker_integration import _loss_file
from workers.dispatch import submit, wait

pytestmark = pytest.mark.integration

# Long enough to be caught mid-training even on an idle machine, where an epoch of the tiny backbone
# takes well under 0.03 s since the head-selection speed-ups (150 epochs once finished in 3.7 s, before
# the first progress report): ~10-20 s of real training.
SLOW_TRAINING = {"epochs": 600, "patience": 600}
WORKER = ["worker", "--pool", "prefork", "--concurrency", "1"]


def _settings(tmp_path: Path, pg_url: str, redis_url: str, tiny_backbone: str, lost_after: str):  # type: ignore[no-untyped-def]
    from store.migrate import upgrade

    redis.Redis.from_url(redis_url).flushdb()
    settings = make_settings(tmp_path / "home", database_url=pg_url, broker_url=redis_url, backbone=tiny_backbone,
                             train_lora_layers="1", job_heartbeat_seconds="1", job_lost_after_seconds=lost_after)
    upgrade(settings)
    with session_scope(settings) as session:
        session.add_all([Expert(name="coder", kind="external", attributes={"params": 7e9}),
                         Expert(name="writer", kind="external", attributes={"params": 70e9})])
    ingest_file(settings, _loss_file(tmp_path))
    return settings


def _until_training(settings, run_id: int, timeout: float = 90) -> JobRun:  # type: ignore[no-untyped-def]
    """Wait until the run is past its set-up and heartbeating; fail if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = get_run(settings, run_id)
        assert run.status in ("queued", "running"), f"run finished before it could be killed: {run.status}"
        if run.status == "running" and run.heartbeat_at is not None and run.progress > 0.1:  # 0.1 = training started
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} not training after {timeout} s: {get_run(settings, run_id).message}")


def _advisory_locks(settings) -> int:  # type: ignore[no-untyped-def]
    with get_engine(settings).connect() as connection:
        return connection.execute(text(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND d.datname = current_database()")).scalar_one()


def test_a_sigkilled_worker_s_run_is_lost_and_completes_on_another_worker(  # type: ignore[no-untyped-def]
        tmp_path: Path, pg_url: str, redis_url: str, tiny_backbone: str, thalamus_env: None, capsys) -> None:
    settings = _settings(tmp_path, pg_url, redis_url, tiny_backbone, lost_after="4")
    first_log, second_log = tmp_path / "worker-a.log", tmp_path / "worker-b.log"
    first = start(WORKER, first_log, new_session=True)
    second = None
    try:
        wait_for_log(first_log, "ready", first, timeout=90)
        run_id = submit(settings, "train_router", SLOW_TRAINING, trigger="test")
        running = _until_training(settings, run_id)
        assert _advisory_locks(settings) == 1  # train_router holds its exclusive lock

        os.killpg(first.pid, signal.SIGKILL)  # parent and pool child at once: nothing can clean up
        first.wait(10)
        killed_at = time.monotonic()
        second = start(WORKER, second_log)

        # No scheduler runs: worker B's sweeps (at start-up, then every heartbeat) must find it. Bounds:
        # lost-after 4 s + worker start-up; the re-run's torch import and training on a loaded 2-core box.
        deadline = killed_at + 30
        while get_run(settings, run_id).status == "running":
            assert time.monotonic() < deadline, "the dead worker's run was never marked lost"
            time.sleep(0.2)
        detected = time.monotonic() - killed_at
        lost = get_run(settings, run_id)
        assert lost.status == "lost" and running.worker in lost.message, lost.message

        final = wait(settings, run_id, timeout=max(1.0, killed_at + 90 - time.monotonic()))  # follows the re-run
        completed = time.monotonic() - killed_at
        assert final.id != run_id and final.retry_of == run_id and final.attempt == 2
        assert final.status == "succeeded", final.message
        assert final.worker != running.worker and final.result["version_id"]  # it took the lock again
        assert f"re-queued as run {final.id}" in second_log.read_text(errors="replace")
        assert _advisory_locks(settings) == 0
        with session_scope(settings) as session:
            assert [r.id for r in session.scalars(select(JobRun).order_by(JobRun.id))] == [run_id, final.id]

        # The original task is still unacked in Redis; redelivered hours later, it must not run again.
        from workers.tasks import execute

        assert execute(settings, run_id) is None and get_run(settings, run_id).status == "lost"

        main(["jobs", "list"])
        listing = capsys.readouterr().out
        assert f"lost → run {final.id}" in listing and "succeeded" in listing
        print(f"\nkilled worker: lost detected after {detected:.1f} s, re-run succeeded after {completed:.1f} s")
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        if second is not None:
            stop_process(second)


def test_a_killed_pool_child_re_runs_the_same_run(  # type: ignore[no-untyped-def]
        tmp_path: Path, pg_url: str, redis_url: str, tiny_backbone: str, thalamus_env: None) -> None:
    """Only the pool process dies: Celery's parent re-queues the task (reject on worker lost) and the
    same row runs again, one attempt more; the long lost-after window keeps the reaper out of it."""
    settings = _settings(tmp_path, pg_url, redis_url, tiny_backbone, lost_after="60")
    log = tmp_path / "worker.log"
    worker = start(WORKER, log, new_session=True)
    try:
        wait_for_log(log, "ready", worker, timeout=90)
        run_id = submit(settings, "train_router", SLOW_TRAINING, trigger="test")
        running = _until_training(settings, run_id)
        child = int(running.worker.rsplit(":", 1)[1])
        assert child != worker.pid
        os.kill(child, signal.SIGKILL)

        final = wait(settings, run_id, timeout=90)
        assert final.id == run_id and final.status == "succeeded", final.message
        assert final.attempt == 2 and final.worker != running.worker
        assert worker.poll() is None
    finally:
        stop_process(worker)
