"""The whole loop on real parts: route → log → refresh → train → approve → hot-swap.

PostgreSQL and Redis over real connections, a real ``thalamus worker`` and a real ``thalamus serve``
process, tiny real models (a 2-layer encoder, two small masked-LM experts).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from store.db import session_scope
from store.schema import Expert
from tests.conftest import make_masked_lm, make_settings
from tests.helpers import route_traffic, row_counts
from tests.workers.helpers import start, stop_process, thalamus_env, wait_for_log
from workers.dispatch import submit, wait

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PROMPTS = [f"def function_{i}(x):\n    return x + {i}" for i in range(20)] + [
    f"The weather on day {i} was mild and the garden was green." for i in range(20)
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def loop_settings(tmp_path: Path, pg_url: str, redis_url: str, tiny_backbone: str, thalamus_env: None):  # type: ignore[no-untyped-def]
    from store.migrate import upgrade

    # THALAMUS_TEST_REDIS_URL names this checkout's own database, so parallel runs never share queues.
    redis.Redis.from_url(redis_url).flushdb()
    settings = make_settings(
        tmp_path / "home", database_url=pg_url, broker_url=redis_url, backbone=tiny_backbone, port=str(_free_port()),
        label_share="1.0", swap_poll_seconds="30", train_epochs="2", train_lora_layers="1",
        refresh_interval_minutes="0", train_interval_minutes="0", log_flush_seconds="0.1",
    )
    upgrade(settings)
    with session_scope(settings) as session:
        for name, hidden, layers, seed in (("small-mlm", 16, 1, 1), ("large-mlm", 48, 2, 2)):
            uri = make_masked_lm(tmp_path / name, tiny_backbone, hidden, seed, layers=layers)
            session.add(Expert(name=name, kind="masked-lm", uri=uri, attributes={"params": hidden * 1e6}))
    return settings


def test_route_log_refresh_train_approve_hot_swap(loop_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = loop_settings
    base = f"http://127.0.0.1:{settings.port}"
    worker = start(["worker", "--pool", "prefork"], tmp_path / "worker.log")
    daemon = start(["serve"], tmp_path / "daemon.log")
    try:
        wait_for_log(tmp_path / "worker.log", "ready", worker, timeout=90)
        wait_for_log(tmp_path / "daemon.log", "Uvicorn running", daemon, timeout=120)
        first = httpx.get(f"{base}/v1/status").json()["router_version"]

        with httpx.Client(base_url=base, timeout=30) as client:
            routed = [client.post("/v1/route", json={"prompt": p, "app": "e2e"}) for p in PROMPTS]
        assert [r.status_code for r in routed] == [200] * len(PROMPTS)
        assert {r.json()["router_version"] for r in routed} == {first}
        deadline = time.monotonic() + 10
        while row_counts(settings)["requests"] < len(PROMPTS) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert row_counts(settings)["requests"] == len(PROMPTS)

        # Feedback on PostgreSQL becomes reported loss rows, and the next training reads them.
        with httpx.Client(base_url=base, timeout=30) as client:
            answers = [client.post("/v1/feedback", json={"request_id": r.json()["request_id"], "score": 0.5})
                       for r in routed[:5]]
        assert [(a.status_code, a.json()["status"]) for a in answers] == [(202, "accepted")] * 5

        refresh = wait(settings, submit(settings, "refresh_losses", trigger="test"), timeout=300)
        assert refresh.status == "succeeded", refresh.error
        assert row_counts(settings)["expert_losses"] == 2 * len(PROMPTS) + 5

        train = wait(settings, submit(settings, "train_router", trigger="test"), timeout=300)
        assert train.status == "succeeded", train.error
        assert train.result["loss_rows"]["read"] == {"computed": 2 * len(PROMPTS), "reported": 5}
        candidate = train.result["version_id"]
        assert candidate != first

        with route_traffic(lambda: httpx.Client(base_url=base, timeout=30),
                           lambda k, i: PROMPTS[(k + 3 * i) % len(PROMPTS)]) as traffic:
            time.sleep(0.5)
            approved = subprocess.run([sys.executable, "-m", "cli", "admin", "approve", str(candidate)],
                                      check=False, env=thalamus_env(), capture_output=True, text=True)
            assert approved.returncode == 0, approved.stderr
            started, swapped = time.monotonic(), None
            while time.monotonic() - started < 5:
                if httpx.get(f"{base}/v1/status").json()["router_version"] == candidate:
                    swapped = time.monotonic() - started
                    break
                time.sleep(0.05)
            time.sleep(0.5)
        # The poll interval is 30 s here, so a swap inside 5 s came through LISTEN/NOTIFY.
        assert swapped is not None, "the daemon did not hot-swap within 5 s"
        assert traffic.failures == []
        assert set(traffic.seen) == {first, candidate}
    finally:
        stop_process(daemon)
        stop_process(worker)
