"""THALAMUS_WORKERS: several server processes on one port, each hot-swapping on its own (real PostgreSQL)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from store.db import session_scope
from store.queries import notify_activation
from tests.daemon.conftest import activate, register_version
from tests.daemon.processes import start_daemon, stop_process, wait_healthy


def _statuses(base: str, n: int) -> list[dict]:  # type: ignore[type-arg]
    """``n`` status answers, each on a new connection, so the kernel hands them to any worker."""
    out = []
    for _ in range(n):
        with httpx.Client(base_url=base, timeout=10) as client:
            out.append(client.get("/v1/status").json())
    return out


@pytest.mark.integration
def test_two_workers_serve_the_port_and_each_swaps_to_a_new_version(pg_serve_settings, bundles,  # type: ignore[no-untyped-def]
                                                                    tmp_path: Path) -> None:
    settings = pg_serve_settings
    base, log = f"http://127.0.0.1:{settings.port}", tmp_path / "daemon.log"
    daemon = start_daemon(log, workers="2", swap_poll_seconds="30")  # a swap within the test is the NOTIFY's
    try:
        wait_healthy(base, daemon, log)
        deadline = time.monotonic() + 60
        pids: set[int] = set()
        while len(pids) < 2 and time.monotonic() < deadline:  # the second worker may still be loading
            pids |= {s["pid"] for s in _statuses(base, 10) if s["router_version"] is not None}
        assert len(pids) == 2 and daemon.pid not in pids, f"answers came from {pids}"
        answers = [httpx.post(f"{base}/v1/route", json={"prompt": f"p{i}", "explore": False}, timeout=10).json()
                   for i in range(10)]
        assert {a["expert"] for a in answers} == {"api"}

        new = register_version(settings, bundles["b"], status="approved")
        activate(settings, new)
        with session_scope(settings) as session:
            notify_activation(session, new)
        swapped: set[int] = set()
        deadline = time.monotonic() + 30
        while swapped != pids and time.monotonic() < deadline:
            swapped |= {s["pid"] for s in _statuses(base, 10) if s["router_version"] == new}
            time.sleep(0.1)
        assert swapped == pids, f"workers {pids - swapped} still serve the old version"
        answers = [httpx.post(f"{base}/v1/route", json={"prompt": f"q{i}", "explore": False}, timeout=10).json()
                   for i in range(10)]
        assert {a["expert"] for a in answers} == {"small"} and {a["router_version"] for a in answers} == {new}
    finally:
        stop_process(daemon)
