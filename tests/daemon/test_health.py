"""PostgreSQL unreachable (a real proxy process killed between daemon and database) → 503, degraded, recovery."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from benchmarks.tcpproxy import ProxyProcess
from store.db import session_scope
from store.schema import Request
from tests.daemon.processes import start_daemon, stop_process, wait_healthy

pytestmark = pytest.mark.integration


def _until(check, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_database_outage_answers_503_routes_on_and_recovers(pg_serve_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = pg_serve_settings
    url = make_url(settings.db_url)
    proxy = ProxyProcess(target=(url.host or "127.0.0.1", url.port or 5432))
    proxy.start()
    base, log = f"http://127.0.0.1:{settings.port}", tmp_path / "daemon.log"
    daemon = start_daemon(log, database_url=url.set(host="127.0.0.1", port=proxy.port).render_as_string(False))
    try:
        assert wait_healthy(base, daemon, log)["status"] == "ok"
        client = httpx.Client(base_url=base, timeout=30)
        before = client.post("/v1/route", json={"prompt": "before the outage"}).json()["request_id"]

        proxy.kill()  # every connection through it is cut; new ones are refused
        time.sleep(1.0)  # the watcher notices and records that it cannot read the active version
        for response in (client.get("/v1/status"),
                         client.post("/v1/feedback", json={"request_id": before, "loss": 0.3})):
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"].isdigit()
            detail = response.json()["detail"]
            assert isinstance(detail, str) and "database" in detail and detail.count(".") <= 1
        during = [client.post("/v1/route", json={"prompt": f"during the outage {i}"}) for i in range(5)]
        assert [r.status_code for r in during] == [200] * 5  # routing needs no database
        health = _until(lambda: (h := client.get("/healthz")).json()["status"] == "degraded" and h, 5)
        assert health and health.status_code == 200 and "database" in health.json()["detail"]

        proxy.start()  # the outage ends
        assert _until(lambda: client.get("/healthz").json()["status"] == "ok"), "healthz not ok after recovery"
        status = _until(lambda: (s := client.get("/v1/status")).status_code == 200 and s.json()["last_checked_at"]
                        and s.json()["last_swap_error"] is None and s.json(), 20)
        assert status, client.get("/v1/status").text
        ids = [r.json()["request_id"] for r in during]
        assert _until(lambda: client.get("/v1/status").json()["writer"]["queue_depth"] == 0)
        with session_scope(settings) as session:  # the direct URL: rows routed during the outage were written
            assert set(session.scalars(select(Request.id).where(Request.id.in_(ids + [before])))) == {*ids, before}
        accepted = client.post("/v1/feedback", json={"request_id": ids[0], "loss": 0.3})
        assert accepted.status_code == 202, accepted.text
        client.close()
    finally:
        stop_process(daemon)
        proxy.kill()
