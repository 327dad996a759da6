"""The latency the OpenAI-compatible gateway adds over calling the upstream directly (``thalamus bench gateway``).

A real ``thalamus serve`` (embedded SQLite, spool on, auth on: the production defaults) forwards to
``benchmarks/openai_stub.py``, an OpenAI-compatible server that answers at once. The open-loop load
generator (``benchmarks/loadgen.py``) sends the same chat requests, in interleaved rounds, to

- ``direct``: the stub itself;
- ``passthrough``: the gateway with ``model: "stub"`` (key check, forwarding, logging; no routing);
- ``routed``: the gateway with ``model: "thalamus"`` (also the router's encoder forward pass).

The added latency is each gateway path's percentile minus the direct one's, from the same run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.loadgen import LoadResult, open_loop, wait_healthy
from benchmarks.tcpproxy import free_port

PATHS = ("direct", "passthrough", "routed")


def _bodies(model: str, n: int = 50) -> list[dict[str, Any]]:
    return [{"model": model, "max_tokens": 8,
             "messages": [{"role": "user", "content": f"Summarise request number {i} in one line."}]}
            for i in range(n)]


def run(*, rate: float = 20.0, seconds: float = 15.0, rounds: int = 2, backbone: str | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Rounds of (direct, passthrough, routed) at ``rate`` requests/s for ``seconds`` each; percentiles in ms."""
    import numpy as np

    from experts.registry import register_experts
    from jobs.bootstrap import ensure_active_router
    from store.db import dispose_engines, session_scope
    from store.keys import create_key
    from store.migrate import upgrade
    from store.settings import Settings

    home = Path(tempfile.mkdtemp(prefix="thalamus-gateway-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        stub_port = free_port()
        processes.append(subprocess.Popen([sys.executable, "-m", "benchmarks.openai_stub", str(stub_port)]))
        stub = f"http://127.0.0.1:{stub_port}"
        settings = Settings(home=home, port=free_port(), backbone=backbone, auth=True)
        upgrade(settings)
        with session_scope(settings) as session:
            register_experts(session, [{"name": "stub", "kind": "external",
                                        "attributes": {"base_url": f"{stub}/v1", "model": "fast"}}])
            key = create_key(session, "bench", ["route"], rate_limit="100000/second").key
        ensure_active_router(settings)
        dispose_engines()
        env = {**settings.as_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        with open(home / "daemon.log", "ab") as handle:
            processes.append(subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=env, stdout=handle,
                                              stderr=subprocess.STDOUT))
        gateway = f"http://127.0.0.1:{settings.port}"
        wait_healthy(gateway, processes[-1], timeout=180,
                     log_tail=lambda: (home / "daemon.log").read_text(errors="replace")[-2000:])
        headers = {"Authorization": f"Bearer {key}"}
        targets = {"direct": (stub, "fast", None), "passthrough": (gateway, "stub", headers),
                   "routed": (gateway, "thalamus", headers)}
        for base, model, auth in targets.values():  # warm-up: connections, the encoder, the spool
            open_loop(base, "/v1/chat/completions", _bodies(model), rate=5, seconds=2, headers=auth)
        latencies: dict[str, list[float]] = {name: [] for name in PATHS}
        failures: dict[str, int] = dict.fromkeys(PATHS, 0)
        for round_ in range(rounds):
            for name in PATHS:
                base, model, auth = targets[name]
                result: LoadResult = open_loop(base, "/v1/chat/completions", _bodies(model), rate=rate,
                                               seconds=seconds, headers=auth)
                latencies[name] += result.latencies_ms
                failures[name] += result.errors + sum(n for s, n in result.statuses.items() if s != 200)
                log(f"round {round_} {name}: {result.summary()}")
        report: dict[str, Any] = {"rate": rate, "seconds": seconds, "rounds": rounds, "backbone": backbone or "minilm"}
        for name in PATHS:
            values = np.asarray(latencies[name])
            report[name] = {"requests": int(values.size), "failed": failures[name],
                            "p50_ms": round(float(np.percentile(values, 50)), 2),
                            "p95_ms": round(float(np.percentile(values, 95)), 2)}
        for name in ("passthrough", "routed"):
            report[f"{name}_added"] = {q: round(report[name][q] - report["direct"][q], 2) for q in ("p50_ms", "p95_ms")}
        return report
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(home, ignore_errors=True)
