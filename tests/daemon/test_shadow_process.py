"""End to end on PostgreSQL: a real ``thalamus serve`` under open-loop traffic while ``admin shadow`` starts and stops."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from benchmarks.loadgen import SteadyLoad
from cli.main import main
from router.hashing import Salt, stable_fraction
from store.db import session_scope
from store.schema import ShadowDecision
from tests.daemon.conftest import register_version
from tests.daemon.processes import start_daemon, stop_process, wait_healthy


def _rows(settings) -> int:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        return session.scalar(select(func.count()).select_from(ShadowDecision)) or 0


def _until(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.integration
def test_shadow_on_while_traffic_flows_then_stopped(pg_serve_settings, bundles, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = pg_serve_settings
    candidate = register_version(settings, bundles["b"], status="candidate")
    base, log = f"http://127.0.0.1:{settings.port}", tmp_path / "daemon.log"
    daemon = start_daemon(log)
    load = None
    try:
        wait_healthy(base, daemon, log)
        bodies = [{"prompt": f"live prompt {i}", "app": "shadow-e2e"} for i in range(50)]
        load = SteadyLoad(base, bodies, rate=15).start()
        time.sleep(0.5)
        main(["admin", "shadow", str(candidate), "--share", "0.5", "--reason", "e2e"])
        assert _until(lambda: _rows(settings) >= 10, 30), f"no shadow decisions appeared: {log.read_text()[-2000:]}"
        shadows = httpx.get(f"{base}/v1/status", timeout=10).json()["shadows"]
        assert [(s["version"], s["share"], s["loaded"]) for s in shadows] == [(candidate, 0.5, True)]
        assert shadows[0]["routed"] >= 10 and shadows[0]["failed"] == 0

        main(["admin", "shadow", "--stop", "--reason", "e2e done"])
        assert _until(lambda: httpx.get(f"{base}/v1/status", timeout=10).json()["shadows"] == [], 10)
        time.sleep(0.5)  # a batch already being routed when the shadow stopped may still be written
        stopped_at = _rows(settings)
        time.sleep(1.5)
        assert _rows(settings) == stopped_at, "shadow decisions kept coming after --stop"
        sent = load.stop()
        load = None
    finally:
        if load is not None:
            load.stop()
        stop_process(daemon)
    answered = {s.request_id for s in sent if s.status == 200}
    assert len(sent) >= 40 and [s.status for s in sent if s.status != 200] == []
    with session_scope(settings) as session:
        rows = session.execute(select(ShadowDecision.request_id, ShadowDecision.router_version_id,
                                      ShadowDecision.expert, ShadowDecision.served_expert)).all()
    assert {r.request_id for r in rows} <= answered
    assert all(stable_fraction(r.request_id, salt=Salt.SHADOW) < 0.5 for r in rows)
    assert {(r.router_version_id, r.expert, r.served_expert) for r in rows} == {(candidate, "small", "api")}
