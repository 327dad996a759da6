"""An open-loop HTTP load generator: requests start on a fixed schedule whether or not earlier ones finished.

Latency is measured from each request's *scheduled* start, so a daemon that falls behind shows it
(no coordinated omission). Used by ``benchmarks/spool_latency.py``; reusable by ``bench`` scripts.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import subprocess
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
              on_response: Callable[[httpx.Response], None] | None = None,
              headers: dict[str, str] | None = None) -> LoadResult:
    """POST ``bodies`` (cycled) to ``base_url + path`` at ``rate`` per second for ``seconds``
    (``headers``: e.g. the API key's ``Authorization``)."""
    local = threading.local()
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0

    def one(body: dict[str, Any], scheduled: float) -> None:
        nonlocal errors
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=base_url, timeout=timeout, headers=headers)
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


@dataclasses.dataclass
class Sent:
    """One request of a :class:`SteadyLoad`: monotonic times, and what came back."""

    scheduled: float
    finished: float
    status: int | None  # None: no HTTP answer (connection refused or reset, timeout)
    request_id: str | None = None
    feedback_status: int | None = None  # None: no feedback sent, or no HTTP answer to it (see feedback_error)
    feedback_at: float | None = None
    feedback_error: bool = False


class SteadyLoad:
    """Open-loop POSTs to /v1/route in the background until ``stop()``, one :class:`Sent` per request.

    Every ``feedback_every``-th answered request also gets a POST /v1/feedback right after its answer.
    Used by ``benchmarks/faults.py``, where the end of the load is not known in advance.
    """

    def __init__(self, base_url: str, bodies: Sequence[dict[str, Any]], rate: float, feedback_every: int = 0,
                 workers: int = 64, timeout: float = 10.0, headers: dict[str, str] | None = None) -> None:
        self.base_url, self.bodies, self.rate, self.headers = base_url, bodies, rate, headers
        self.feedback_every, self.workers, self.timeout = feedback_every, workers, timeout
        self.sent: list[Sent] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _client(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(base_url=self.base_url, timeout=self.timeout,
                                                       headers=self.headers)
        return client

    def _one(self, i: int, scheduled: float) -> None:
        client = self._client()
        try:
            response = client.post("/v1/route", json=self.bodies[i % len(self.bodies)])
            record = Sent(scheduled, time.monotonic(), response.status_code,
                          response.json().get("request_id") if response.status_code == 200 else None)
        except (httpx.HTTPError, ValueError):
            client.close()
            self._local.client = None  # a fresh connection next time
            record = Sent(scheduled, time.monotonic(), None)
        if record.request_id and self.feedback_every and i % self.feedback_every == 0:
            try:
                feedback = client.post("/v1/feedback", json={"request_id": record.request_id, "loss": 0.25})
                record.feedback_status = feedback.status_code
            except httpx.HTTPError:
                client.close()
                self._local.client = None
                record.feedback_error = True
            record.feedback_at = time.monotonic()
        with self._lock:
            self.sent.append(record)

    def _schedule(self) -> None:
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            start, i = time.monotonic(), 0
            while not self._stop.is_set():
                scheduled = start + i / self.rate
                if self._stop.wait(max(0.0, scheduled - time.monotonic())):
                    break
                pool.submit(self._one, i, scheduled)
                i += 1

    def start(self) -> SteadyLoad:
        self._thread = threading.Thread(target=self._schedule, name="steady-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Sent]:
        """Stop sending; returns once every request in flight has its answer (or error)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            return sorted(self.sent, key=lambda s: s.scheduled)


def poll_until(check: Callable[[], bool], timeout: float, poll: float = 0.1) -> float | None:
    """Poll ``check`` until it holds (an HTTP error or a malformed answer counts as not yet); the
    ``time.monotonic()`` moment it did, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return time.monotonic()
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(poll)
    return None


def wait_healthy(base: str, process: subprocess.Popen[bytes], *, timeout: float, poll: float = 0.1,
                 log_tail: Callable[[], str] = lambda: "see its log") -> None:
    """Wait until the daemon at ``base`` answers ``/healthz`` with 200; RuntimeError (with ``log_tail()``)
    when its process exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the daemon exited with {process.returncode}: {log_tail()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    raise RuntimeError(f"the daemon was not healthy after {timeout:.0f} s: {log_tail()}")
