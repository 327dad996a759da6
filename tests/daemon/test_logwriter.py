"""The asynchronous request log writer on a real database (SQLite; the wake-up on PostgreSQL too)."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from daemon.logwriter import RequestLogWriter
from daemon.metrics import Metrics
from store.db import session_scope
from store.queries import prompt_hash
from store.schema import Prompt, Request, utcnow
from tests.daemon.conftest import new_id


def _row(prompt: str, **extra) -> dict:  # type: ignore[no-untyped-def]
    return {"id": new_id(), "created_at": utcnow(), "prompt": prompt, "lambdas": {}, "router_version_id": None,
            "expert": "large", "predicted_losses": {"large": 0.2}, "propensity": 1.0, "sampled": False,
            "latency_ms": 1.0, "app": "tests", **extra}


def _count(settings, column) -> int:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        return session.scalar(select(func.count(column)))


def test_every_row_from_many_threads_is_written_after_flush(settings) -> None:  # type: ignore[no-untyped-def]
    settings = settings.model_copy(update={"log_batch_size": 64, "log_flush_seconds": 0.5})
    writer = RequestLogWriter(settings, metrics=Metrics())
    writer.start()
    ids: list[str] = []
    lock = threading.Lock()

    def produce(k: int) -> None:
        for i in range(150):
            row = _row(f"prompt {i % 40}")  # repeated prompts: each prompt text stored once
            assert writer.submit(row)
            with lock:
                ids.append(row["id"])

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.flush(20)
    assert writer.depth == 0 and writer.written == 600 and writer.dropped == 0
    with session_scope(settings) as session:
        assert set(session.scalars(select(Request.id))) == set(ids)
        assert session.scalar(select(func.count(Prompt.hash))) == 40
        row = session.get(Request, ids[0])
        assert row.prompt_hash in {prompt_hash(f"prompt {i}") for i in range(40)}
    writer.close()


def test_submit_never_waits_for_a_stalled_database(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The database write is held until the test releases it: if submit waited on the writer, the 2,000
    # submits could not finish while it is held. (A wall-clock bound was flaky on a loaded 2-core machine.)
    released = threading.Event()
    insert = RequestLogWriter._insert

    def stalled_insert(self, rows):  # type: ignore[no-untyped-def]
        released.wait(60)
        insert(self, rows)

    monkeypatch.setattr(RequestLogWriter, "_insert", stalled_insert)
    writer = RequestLogWriter(settings, metrics=Metrics())
    writer.start()
    accepted: list[bool] = []
    submitter = threading.Thread(target=lambda: accepted.extend(writer.submit(_row(f"p{i}")) for i in range(2000)))
    submitter.start()
    submitter.join(30)
    try:
        assert not submitter.is_alive() and not released.is_set()
        assert accepted == [True] * 2000 and writer.depth == 2000
    finally:
        released.set()
        writer.close()
    assert _count(settings, Request.id) == 2000 and writer.dropped == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_flush_wakes_a_writer_blocked_on_the_queue(backend, request, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A feedback post flushes the writer for its request's row. The writer blocks on the queue for up to
    # _IDLE_WAIT while it gathers a batch; flush must wake it, not wait out that timeout (it did: ~100 ms
    # per feedback post). With the timeout stretched to 5 s, only the wake makes flush fast.
    settings = request.getfixturevalue("settings" if backend == "sqlite" else "pg_daemon_settings")
    monkeypatch.setattr("daemon.logwriter._IDLE_WAIT", 5.0)
    slow = settings.model_copy(update={"log_flush_seconds": 60.0})
    writer = RequestLogWriter(slow, metrics=Metrics())
    writer.start()
    try:
        for i in range(3):
            writer.submit(_row(f"p{i}"))
            time.sleep(0.2)  # the writer took the row and blocks on the queue for the next one
            started = time.perf_counter()
            assert writer.flush(10)
            assert time.perf_counter() - started < 2.5
        assert _count(settings, Request.id) == 3 and writer.depth == 0
    finally:
        writer.close()


def test_close_drains_everything(settings) -> None:  # type: ignore[no-untyped-def]
    slow = settings.model_copy(update={"log_flush_seconds": 60.0, "log_batch_size": 100_000})
    writer = RequestLogWriter(slow, metrics=Metrics())
    writer.start()
    for i in range(300):
        writer.submit(_row(f"p{i}"))
    writer.close()
    assert _count(settings, Request.id) == 300
    assert not writer.submit(_row("after close")) and writer.dropped == 1


def test_a_full_queue_drops_and_counts(settings) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    writer = RequestLogWriter(settings, metrics=metrics, max_queue=5)  # not started: nothing drains
    results = [writer.submit(_row(f"p{i}")) for i in range(8)]
    assert results == [True] * 5 + [False] * 3
    assert writer.dropped == 3 and "thalamus_log_dropped_total 3.0" in metrics.render().decode()
    assert "thalamus_log_queue_depth 5.0" in metrics.render().decode()
    assert writer.flush(10)  # with no thread, flush writes inline
    assert _count(settings, Request.id) == 5


class _Flaky(RequestLogWriter):
    """Fault injection: the first ``failures`` batch writes fail as a lost connection would."""

    def __init__(self, *args, failures: int, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.to_fail = failures

    def _insert(self, rows):  # type: ignore[no-untyped-def]
        if self.to_fail:
            self.to_fail -= 1
            raise OperationalError("INSERT", {}, ConnectionError("server closed the connection unexpectedly"))
        super()._insert(rows)


def test_a_failed_batch_is_retried_until_written(settings) -> None:  # type: ignore[no-untyped-def]
    writer = _Flaky(settings, metrics=Metrics(), failures=3)
    writer.start()
    for i in range(50):
        writer.submit(_row(f"p{i}"))
    assert writer.flush(20)
    assert writer.failed_batches == 3 and writer.dropped == 0 and writer.written == 50
    assert "server closed" in writer.last_error
    assert _count(settings, Request.id) == 50
    writer.close()


def test_a_bad_row_is_isolated_and_the_rest_written(settings) -> None:  # type: ignore[no-untyped-def]
    writer = RequestLogWriter(settings, metrics=Metrics())
    good = [_row(f"p{i}") for i in range(10)]
    bad = _row("bad", router_version_id=999_999)  # violates the foreign key to router_versions
    for row in good[:5] + [bad] + good[5:]:
        writer.submit(row)
    writer.start()
    assert writer.flush(20)
    writer.close()
    assert writer.dropped == 1 and writer.written == 10
    with session_scope(settings) as session:
        assert set(session.scalars(select(Request.id))) == {row["id"] for row in good}


def test_pending_rows_can_be_looked_up(settings) -> None:  # type: ignore[no-untyped-def]
    writer = RequestLogWriter(settings, metrics=Metrics())
    row = _row("look me up")
    writer.submit(row)
    assert writer.pending(row["id"])["prompt"] == "look me up"
    assert writer.flush(10)
    assert writer.pending(row["id"]) is None
