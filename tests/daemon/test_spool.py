"""The request spool: group commit, torn lines, replay of dead daemons' rows, and kill -9 under load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from daemon.logwriter import RequestLogWriter
from daemon.metrics import Metrics
from daemon.spool import Spool, SpoolError, encode
from store.db import session_scope
from store.schema import Request, utcnow
from tests.daemon.conftest import new_id
from tests.daemon.processes import start_daemon, stop_process, wait_healthy


def _row(prompt: str = "a prompt") -> dict:  # type: ignore[type-arg]
    return {"id": new_id(), "created_at": utcnow(), "prompt": prompt, "lambdas": {}, "router_version_id": None,
            "expert": "large", "predicted_losses": {"large": 0.2}, "propensity": 1.0, "sampled": False,
            "latency_ms": 1.0, "app": "tests"}


def _ids_on_disk(directory: Path) -> list[str]:
    """Ids of the complete lines; a line another thread is writing right now has no newline yet (reading it
    raised in a producer thread of the group-commit test, once)."""
    import json

    return [json.loads(line)["id"] for path in sorted(directory.glob("*.log"))
            for line in path.read_bytes().split(b"\n")[:-1]]


def test_concurrent_appends_are_on_disk_when_they_return_and_share_syncs(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fdatasync

    def slow_sync(fd: int) -> None:  # a slow disk: appends arriving during a sync join the next one
        time.sleep(0.005)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_sync)
    spool = Spool(tmp_path / "spool")
    spool.open()
    returned: list[str] = []
    lock = threading.Lock()

    def produce() -> None:
        for _ in range(20):
            row = _row()
            spool.append(row)
            assert row["id"] in _ids_on_disk(tmp_path / "spool")
            with lock:
                returned.append(row["id"])

    threads = [threading.Thread(target=produce) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(_ids_on_disk(tmp_path / "spool")) == sorted(returned) and len(returned) == 160
    assert spool.commits < 100  # group commit: far fewer syncs than appends
    assert spool.depth == 160
    spool.release(returned)
    spool.close()
    assert list((tmp_path / "spool").iterdir()) == []  # drained: segments and lock file deleted
    with pytest.raises(SpoolError):
        spool.append(_row())


def test_recover_skips_a_torn_last_line_and_deletes_the_segment_once_released(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    rows = [_row("first"), _row("second \ud800 surrogate"), _row("torn")]
    (directory / "dead.lock").write_text("12345")
    (directory / "dead-000001.log").write_bytes(encode(rows[0]) + encode(rows[1]) + encode(rows[2])[:-7])
    spool = Spool(directory)
    spool.open()
    recovered = spool.recover()
    assert [r["id"] for r in recovered.rows] == [rows[0]["id"], rows[1]["id"]]
    assert recovered.skipped == 1 and recovered.segments == 1
    assert recovered.rows[1]["prompt"] == "second \ud800 surrogate"
    assert recovered.rows[0]["created_at"] == rows[0]["created_at"]
    spool.release([rows[0]["id"]])
    assert (directory / "dead-000001.log").exists()
    spool.release([rows[1]["id"]])
    assert not (directory / "dead-000001.log").exists() and not (directory / "dead.lock").exists()
    spool.close()


def test_a_live_daemons_spool_is_not_taken_over(tmp_path: Path) -> None:
    live, starting = Spool(tmp_path / "spool"), Spool(tmp_path / "spool")
    live.open()
    live.append(_row())
    starting.open()
    assert starting.recover().rows == []
    live.close()  # unreleased: its segment stays for the next start, lock released
    assert len(starting.recover().rows) == 1
    starting.close()


_APPEND_THEN_WAIT = """
import sys, time, uuid
from daemon.spool import Spool
from store.schema import utcnow
spool = Spool(sys.argv[1]); spool.open()
for i in range(int(sys.argv[2])):
    key = str(uuid.uuid4())
    spool.append({"id": key, "created_at": utcnow(), "prompt": f"killed {i}", "lambdas": {}, "router_version_id": None,
                  "expert": "large", "predicted_losses": {"large": 0.2}, "propensity": 1.0, "sampled": False,
                  "latency_ms": 1.0, "app": "tests"})
    print(key, flush=True)
time.sleep(60)
"""


def test_rows_of_a_killed_process_are_replayed_into_sqlite(settings) -> None:  # type: ignore[no-untyped-def]
    directory = settings.spool_dir
    child = subprocess.Popen([sys.executable, "-c", _APPEND_THEN_WAIT, str(directory), "25"], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert child.stdout is not None
    ids = [child.stdout.readline().strip() for _ in range(25)]
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    writer = RequestLogWriter(settings, metrics=Metrics(), spool=Spool(directory))
    writer.start()
    assert writer.flush(20)
    with session_scope(settings) as session:
        assert set(session.scalars(select(Request.id))) == set(ids)
    assert [p.name for p in directory.glob("*.log") if not p.name.startswith(writer.spool.owner)] == []
    writer.close()
    assert list(directory.iterdir()) == []


@pytest.mark.integration
def test_kill_9_under_load_loses_no_answered_request(pg_serve_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Real daemon on PostgreSQL at ~16 req/s, SIGKILLed mid-load: every request answered 200 is in the table."""
    settings = pg_serve_settings
    base, log = f"http://127.0.0.1:{settings.port}", tmp_path / "daemon.log"
    # A 1 s flush interval (a valid setting) keeps ~16 answered rows in memory at any moment, so
    # without the spool the kill loses some every time (at the default 0.2 s, ~3, most of the time).
    daemon = start_daemon(log, spool="on", log_flush_seconds="1.0")
    answered: list[str] = []
    stop = threading.Event()
    try:
        wait_healthy(base, daemon, log)

        def load(k: int) -> None:
            with httpx.Client(base_url=base, timeout=10) as client:
                i = 0
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        response = client.post("/v1/route", json={"prompt": f"load {k} {i}", "app": "kill"})
                    except httpx.HTTPError:
                        break  # the daemon is gone
                    if response.status_code == 200:
                        answered.append(response.json()["request_id"])
                    i += 1
                    stop.wait(max(0.0, 0.25 - (time.monotonic() - started)))

        threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(3.0)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        stop.set()
        for thread in threads:
            thread.join(15)
        assert len(answered) >= 20

        daemon = start_daemon(log, spool="on")  # same THALAMUS_HOME: replays the dead daemon's spool
        wait_healthy(base, daemon, log)
        missing: set[str] = set(answered)
        deadline = time.monotonic() + 30
        while missing and time.monotonic() < deadline:
            with session_scope(settings) as session:
                missing -= set(session.scalars(select(Request.id).where(Request.id.in_(list(missing)))))
            time.sleep(0.2)
        assert missing == set(), f"{len(missing)} of {len(answered)} answered requests were never written"
        feedback = httpx.post(f"{base}/v1/feedback", json={"request_id": answered[-1], "loss": 0.5}, timeout=10)
        assert feedback.status_code == 202, feedback.text
    finally:
        stop.set()
        stop_process(daemon)


def test_thalamus_spool_setting_gives_the_daemon_a_spool(settings) -> None:  # type: ignore[no-untyped-def]
    from daemon.app import create_app

    assert "THALAMUS_SPOOL" not in os.environ  # the fixture's settings hold the default: on (docs/benchmarks.md)
    spooled = create_app(settings).state.writer.spool
    assert isinstance(spooled, Spool) and spooled.directory == settings.home / "spool"
    assert create_app(settings.model_copy(update={"spool": False})).state.writer.spool is None
