"""A real ``thalamus worker`` on the real Redis broker and PostgreSQL runs the training job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from jobs.ingest import ingest_file
from jobs.runs import get_run
from store.db import session_scope
from store.schema import Expert, JobRun, RouterVersion
from tests.conftest import make_settings
from tests.workers.helpers import start, stop_process, wait_for_log
from workers.dispatch import submit, wait

pytestmark = pytest.mark.integration

CODE = ["def add(a, b): return a + b", "for i in range(10): print(i)", "import os\nos.listdir('.')",
        "class Point:\n    x: int", "while True: break", "lambda x: x * 2", "try:\n    pass\nexcept Exception:\n    raise"]
PROSE = ["The sun rose over the quiet hills.", "She walked to the market with her dog.",
         "Rain fell softly on the old roof.", "The children laughed in the garden.",
         "A letter arrived from a distant friend.", "The river was cold and clear.", "Birds sang at dawn."]


def _loss_file(tmp_path: Path) -> Path:
    rows = []
    for i in range(3):
        for text in CODE:
            rows.append({"question": f"{text} #{i}", "scores": {"coder": 0.9, "writer": 0.1}})
        for text in PROSE:
            rows.append({"question": f"{text} ({i})", "scores": {"coder": 0.2, "writer": 0.8}})
    path = tmp_path / "losses.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture
def broker_settings(tmp_path: Path, pg_url: str, redis_url: str, tiny_backbone: str, thalamus_env: None):  # type: ignore[no-untyped-def]
    from store.migrate import upgrade

    broker = redis_url  # THALAMUS_TEST_REDIS_URL: one database per checkout, so parallel runs never share queues
    redis.Redis.from_url(broker).flushdb()
    settings = make_settings(tmp_path / "home", database_url=pg_url, broker_url=broker, backbone=tiny_backbone,
                             train_epochs="3", train_lora_layers="1")
    upgrade(settings)
    return settings


def test_worker_trains_a_candidate_on_redis_and_postgres(broker_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = broker_settings
    with session_scope(settings) as session:
        session.add_all([Expert(name="coder", kind="external", attributes={"params": 7e9}),
                         Expert(name="writer", kind="external", attributes={"params": 70e9})])
    ingest_file(settings, _loss_file(tmp_path))

    log = tmp_path / "worker.log"
    worker = start(["worker", "--pool", "prefork", "--concurrency", "1"], log)
    try:
        wait_for_log(log, "ready", worker, timeout=90)
        run_id = submit(settings, "train_router", trigger="test")
        run = wait(settings, run_id, timeout=300)
        assert run.status == "succeeded", run.error
        assert run.progress == 1.0 and run.started_at is not None and run.finished_at is not None
        assert run.task_id
        version_id = run.result["version_id"]
        with session_scope(settings) as session:
            version = session.get(RouterVersion, version_id)
            assert version.status == "candidate"
            assert version.expert_order == ["coder", "writer"]
            assert version.metrics["n_train"] > 0
            assert Path(version.checkpoint_uri, "manifest.json").is_file()
            kinds = [r.kind for r in session.scalars(select(JobRun))]
        assert kinds == ["train_router"]
    finally:
        stop_process(worker)


@pytest.mark.parametrize("status", ["succeeded", "failed", "lost"])
def test_a_finished_or_lost_run_is_not_run_again_on_redelivery(broker_settings, status: str) -> None:  # type: ignore[no-untyped-def]
    """The broker redelivers an unacked task after its visibility timeout: a finished run, or one
    given up as lost and re-run under another id, must not run again."""
    from jobs.runs import create_run, update_run
    from workers.tasks import execute

    run_id = create_run(broker_settings, "train_router", {}, "test")
    update_run(broker_settings, run_id, status=status, result={"version_id": 42}, message="kept")
    assert execute(broker_settings, run_id) == {"version_id": 42}
    run = get_run(broker_settings, run_id)
    assert (run.status, run.result, run.message, run.worker) == (status, {"version_id": 42}, "kept", None)
