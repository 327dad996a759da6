"""An open-loop HTTP load generator: requests start on a fixed schedule whether or not earlier ones finished.

Latency is measured from each request's *scheduled* start, so a daemon that falls behind shows it
(no coordinated omission). Used by ``benchmarks/spool_latency.py``; reusable by ``bench`` scripts.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import numpy as np


@dataclasses.dataclass
class LoadResult:
    rate: float
    seconds: float
    latencies_ms: list[float]
    statuses: dict[int, int]
    errors: int

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def summary(self) -> dict[str, Any]:
        return {"rate": self.rate, "sent": len(self.latencies_ms) + self.errors, "ok": self.ok,
                "errors": self.errors + sum(n for s, n in self.statuses.items() if s != 200),
                "p50_ms": round(self.percentile(50), 2), "p95_ms": round(self.percentile(95), 2),
                "p99_ms": round(self.percentile(99), 2)}


def open_loop(base_url: str, path: str, bodies: Sequence[dict[str, Any]], rate: float, seconds: float,
              workers: int = 64, timeout: float = 30.0,
              on_response: Callable[[httpx.Response], None] | None = None) -> LoadResult:
    """POST ``bodies`` (cycled) to ``base_url + path`` at ``rate`` per second for ``seconds``."""
    local = threading.local()
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0

    def one(body: dict[str, Any], scheduled: float) -> None:
        nonlocal errors
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=base_url, timeout=timeout)
        try:
            response = client.post(path, json=body)
        except httpx.HTTPError:
            with lock:
                errors += 1
            return
        elapsed = 1000 * (time.perf_counter() - scheduled)
        with lock:
            latencies.append(elapsed)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if on_response is not None:
            on_response(response)

    count = int(rate * seconds)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        start = time.perf_counter() + 0.05
        futures = []
        for i in range(count):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, bodies[i % len(bodies)], scheduled))
        concurrent.futures.wait(futures)
    return LoadResult(rate, seconds, latencies, statuses, errors)
