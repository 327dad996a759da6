"""The promotion gate end to end: PostgreSQL, Redis, a real ``thalamus worker`` and ``thalamus serve``.

Traffic goes through the daemon; the application reports a loss only for the expert that served each
request; the worker trains a candidate (and evaluates it off-policy inline); a router trained on swapped
labels is evaluated on the worker on demand; ``thalamus admin approve`` refuses it with its numbers and
approves the trained one (that verb in-process).

The active router predicts coder 0.50 and writer 0.55 everywhere, so it serves coder, except for requests
that ask for small models (λ size=1), which go to writer whatever the topic, and the product's default
exploration (epsilon:0.1) sends about 10 % of requests to the other one: a logging policy that observes
both experts on both topics, with exact propensities.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from cli.admin import approve, show
from store.db import session_scope
from store.schema import Expert
from tests.conftest import make_settings
from tests.e2e.test_loop import _free_port
from tests.jobs.test_evaluate_candidate import CODE, EXPERTS, PROSE, SIZE, _loss, build_router
from tests.workers.helpers import start, stop_process, thalamus_env, wait_for_log
from workers.dispatch import submit, wait

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture
def gate_settings(tmp_path: Path, pg_url: str, redis_url: str, tiny_backbone: str, thalamus_env: None):  # type: ignore[no-untyped-def]
    from store.migrate import upgrade

    redis.Redis.from_url(redis_url).flushdb()
    settings = make_settings(
        tmp_path / "home", database_url=pg_url, broker_url=redis_url, backbone=tiny_backbone, port=str(_free_port()),
        label_share="0", swap_poll_seconds="30", train_epochs="1", train_lora_r="0", train_head_neighbors="20",
        refresh_interval_minutes="0", train_interval_minutes="0", log_flush_seconds="0.1",
        gate_min_logged_rows="30", ope_bootstrap_samples="500",
    )
    upgrade(settings)
    with session_scope(settings) as session:
        session.add_all([Expert(name=name, kind="external", attributes=attrs) for name, attrs in EXPERTS.items()])
    return settings


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], check=False, env=thalamus_env(), capture_output=True,
                          text=True)


def test_traffic_feedback_train_evaluate_and_the_gate(gate_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = gate_settings
    first = build_router(settings, constant=(0.5, 0.55), status="active")
    base = f"http://127.0.0.1:{settings.port}"
    worker = start(["worker", "--pool", "solo"], tmp_path / "worker.log")
    daemon = start(["serve"], tmp_path / "daemon.log")
    try:
        wait_for_log(tmp_path / "daemon.log", "Uvicorn running", daemon, timeout=120)
        prompts = [("code", i, p) for i, p in enumerate(CODE[:150])] + [("prose", i, p) for i, p in enumerate(PROSE[:150])]
        with httpx.Client(base_url=base, timeout=60) as client, ThreadPoolExecutor(8) as pool:
            def route(k: int) -> dict:
                body = {"prompt": prompts[k][2], "app": "e2e", **({"lambdas": SIZE} if k % 2 else {})}
                answer = client.post("/v1/route", json=body)
                assert answer.status_code == 200, answer.text
                return answer.json()

            served = list(pool.map(route, range(len(prompts))))
            # The product's exploration policy (epsilon:0.1, warm-up 0.2) is on: some requests explore, and every
            # logged propensity is the served expert's probability under the distribution served.
            assert {a["router_version"] for a in served} == {first}
            assert all(a["propensity"] == a["action_probs"][a["expert"]] for a in served)
            # ε = 0.1, plus the warm-up: no expert has 30 loss rows yet, so the other one gets 0.2 more.
            assert 0 < sum(a["explored"] for a in served) < 120
            greedy = {(a["expert"], bool(a["lambdas"])) for a in served if not a["explored"]}
            assert greedy == {("coder", False), ("writer", True)}
            feedback = list(pool.map(  # only the served expert's loss: bandit feedback
                lambda k: client.post("/v1/feedback", json={"request_id": served[k]["request_id"],
                                                            "loss": _loss(prompts[k][0], served[k]["expert"],
                                                                          prompts[k][1])}),
                range(len(prompts))))
        assert {(f.status_code, f.json()["status"]) for f in feedback} == {(202, "accepted")}

        wait_for_log(tmp_path / "worker.log", "ready", worker, timeout=90)
        train = wait(settings, submit(settings, "train_router", trigger="test"), timeout=300)
        assert train.status == "succeeded", train.error
        better = train.result["version_id"]
        off = train.result["metrics"]["off_policy"]
        assert off["active_version"] == first and off["n_rows"] >= settings.gate_min_logged_rows
        assert 0 < off["candidate"]["support"] <= 1 and off["active"]["support"] == 1.0
        assert off["difference"]["dr"]["high"] < 0, off["difference"]  # true: ≈ 0.25 − 0.5 on half the rows

        worse = build_router(settings, targets_from="swapped", parent_id=first)
        run = wait(settings, submit(settings, "evaluate_candidate", {"version": worse}, trigger="test"), timeout=120)
        assert run.status == "succeeded", run.error
        assert run.result["off_policy"]["difference"]["dr"]["low"] > 0, run.result["off_policy"]["difference"]

        refused = _cli("admin", "approve", str(worse))
        assert refused.returncode == 2, refused.stderr
        assert f"router version {worse} is worse than the active version {first} (off-policy DR" in refused.stderr
        approve(settings, better)  # the verb in-process (a second CLI start costs seconds on a busy box)
        deadline = time.monotonic() + 10  # LISTEN/NOTIFY: the poll interval is 30 s
        while httpx.get(f"{base}/v1/status").json()["router_version"] != better and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(f"{base}/v1/status").json()["router_version"] == better
        report = show(settings, worse)  # its numbers compare with version 1, no longer active
        assert [d["decision"] for d in report.sections["gate"]["decisions"]] == ["refuse"]
        assert report.sections["gate"]["now"]["verdict"] == "unknown"
    finally:
        stop_process(daemon)
        stop_process(worker)
