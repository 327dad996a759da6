"""``thalamus demo`` / ``make demo``: drive the whole loop once through the real HTTP API and CLI.

A driver, not a service: it runs the ``thalamus`` verbs as child processes the way a user types
them, which is why it lives with the command line. It starts ``thalamus up`` (daemon + Celery
worker on the SQLite broker + in-process scheduler) on the embedded default, sends demo traffic,
refreshes losses, trains a candidate, approves it with the admin CLI while traffic keeps flowing,
waits for the hot swap and writes a report.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from cli._common import Group, arg, positive_int, verb
from cli.embedded import stop_process
from store.settings import Settings


def demo_settings(settings: Settings) -> Settings:
    """The user's settings with the demo's changes, validated."""
    return Settings.model_validate({
        **settings.model_dump(),
        # A few hundred prompts give enough labelled rows only with a larger labelling share.
        "label_share": 0.5,
        # The demo triggers the jobs itself; the scheduler stays idle so runs don't interleave.
        "refresh_interval_minutes": 0.0,
        "train_interval_minutes": 0.0,
        "swap_poll_seconds": 1.0,
        # The production default: callers need a key, which the demo creates for itself.
        "auth": True,
    })


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _cli(args: Sequence[str], env: dict[str, str]) -> str:
    """Run a ``thalamus`` verb as a user would; its progress goes to our stderr, its stdout is returned."""
    command = [sys.executable, "-m", "cli", *args]
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`thalamus {' '.join(args)}` exited with {done.returncode}")
    return done.stdout


class Traffic:
    """Sends prompts from a few threads; counts failures and keeps latencies."""

    def __init__(self, base: str, prompts: Sequence[str], headers: dict[str, str], threads: int = 4) -> None:
        self.base, self.prompts, self.threads, self.headers = base, list(prompts), threads, headers
        self.latencies_ms: list[float] = []
        self.server_ms: list[float] = []
        self.failures: list[str] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _send(self, client: httpx.Client, prompt: str) -> None:
        started = time.perf_counter()
        try:
            response = client.post(f"{self.base}/v1/route", json={"prompt": prompt, "app": "demo"})
            ok = response.status_code == 200
            detail = "" if ok else f"HTTP {response.status_code}: {response.text[:200]}"
            server = response.json().get("latency_ms") if ok else None
        except httpx.HTTPError as exc:
            ok, detail, server = False, f"{type(exc).__name__}: {exc}", None
        elapsed = 1000 * (time.perf_counter() - started)
        with self._lock:
            self.sent += 1
            self.latencies_ms.append(elapsed)
            if server is not None:
                self.server_ms.append(float(server))
            if not ok:
                self.failures.append(detail)

    def run_all(self, progress: bool = True) -> None:
        """Send every prompt once, spread over the threads."""
        from tqdm import tqdm

        bar = tqdm(total=len(self.prompts), desc="requests", unit="req", file=sys.stderr, disable=not progress)

        def worker(chunk: Sequence[str]) -> None:
            with httpx.Client(timeout=30, headers=self.headers) as client:
                for prompt in chunk:
                    self._send(client, prompt)
                    bar.update(1)

        chunks = [self.prompts[i :: self.threads] for i in range(self.threads)]
        pool = [threading.Thread(target=worker, args=(chunk,)) for chunk in chunks]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        bar.close()

    def start_loop(self) -> list[threading.Thread]:
        """Keep sending (cycling through the prompts) until ``stop``: load during the swap."""

        def worker(offset: int) -> None:
            with httpx.Client(timeout=30, headers=self.headers) as client:
                index = offset
                while not self._stop.is_set():
                    self._send(client, self.prompts[index % len(self.prompts)])
                    index += self.threads

        pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(self.threads)]
        for thread in pool:
            thread.start()
        return pool

    def stop(self, pool: Sequence[threading.Thread]) -> None:
        self._stop.set()
        for thread in pool:
            thread.join(30)


def _active_version(base: str, headers: dict[str, str]) -> int | None:
    version = httpx.get(f"{base}/v1/status", timeout=5, headers=headers).json().get("router_version")
    return None if version is None else int(version)


def _fmt(value: Any) -> str:
    return "-" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))


def _metrics_table(metrics: dict[str, Any]) -> str:
    candidate, active = metrics.get("candidate", {}), metrics.get("active", {})
    keys = ("loss_mae", "hit_rate", "routed_loss", "best_single_loss", "oracle_loss", "gap_captured", "mean_params")
    lines = [f"  {'metric':18} {'active':>12} {'candidate':>12}"]
    for key in keys:
        a, c = active.get(key), candidate.get(key)
        lines.append(f"  {key:18} {_fmt(a):>12} {_fmt(c):>12}")
    lines.append(f"  holdout rows: {candidate.get('n_rows', 0)}, training rows: {metrics.get('n_train')} "
                 f"({metrics.get('n_fit')} fitted, {metrics.get('n_val')} for validation)")
    return "\n".join(lines)


def run_demo(settings: Settings, *, prompts: int = 300) -> dict[str, Any]:
    """Drive the whole loop once on the embedded default: traffic, training, approval under load, hot swap.

    Runs with :func:`demo_settings`; the child processes get them as their environment. Returns the
    report also written to ``THALAMUS_HOME/demo-report.json``.
    """
    from benchmarks.loadgen import wait_healthy

    started = time.perf_counter()
    settings = demo_settings(settings)
    env = settings.as_env()
    settings.ensure_home()
    base = f"http://{settings.host}:{settings.port}"

    _say("step 1/7: database schema and demo expert library")
    _cli(["db", "upgrade"], env)
    _cli(["experts", "build-demo"], env)
    # The daemon authenticates its callers (THALAMUS_AUTH=on by default): the demo makes its own key.
    key = _cli(["admin", "keys", "create", "--app", "demo", "--scope", "route,feedback,admin",
                "--rate-limit", "1000/second"], env).strip()
    headers = {"Authorization": f"Bearer {key}"}
    from experts.demo import load_demo_library

    library = load_demo_library(settings.experts_dir / "demo")
    traffic_prompts = [p["prompt"] for p in library.prompts(split="traffic")][:prompts]

    _say(f"step 2/7: starting daemon + worker + scheduler (log: {settings.home / 'daemon.log'})")
    with open(settings.home / "daemon.log", "ab") as log:  # the child keeps its own copy of the handle
        daemon = subprocess.Popen([sys.executable, "-m", "cli", "up"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        wait_healthy(base, daemon, timeout=300, poll=0.5)
        first_version = _active_version(base, headers)
        _say(f"daemon healthy, serving router version {first_version}")

        _say(f"step 3/7: sending {len(traffic_prompts)} prompts through POST /v1/route")
        traffic = Traffic(base, traffic_prompts, headers)
        traffic.run_all()
        p50 = statistics.median(traffic.latencies_ms)
        _say(f"sent {traffic.sent}, failed {len(traffic.failures)}, client latency p50 {p50:.1f} ms")
        time.sleep(2 * settings.log_flush_seconds + 1)  # let the async writer flush

        _say("step 4/7: refreshing the loss table on the worker")
        refresh = json.loads(_cli(["jobs", "run", "refresh_losses"], env))
        _say(f"loss rows written: {refresh['result']['rows_written']}")

        _say("step 5/7: training a candidate router on the worker (LoRA)")
        train = json.loads(_cli(["jobs", "run", "train_router"], env))
        result = train["result"]
        candidate = result["version_id"]
        _say(f"candidate router version {candidate}; holdout metrics:\n{_metrics_table(result['metrics'])}")

        _say(f"step 6/7: approving version {candidate} with the admin CLI under live traffic")
        loop = traffic.start_loop()
        time.sleep(1.0)
        approved_at = time.perf_counter()
        _cli(["admin", "approve", str(candidate), "--actor", "demo"], env)
        swapped = None
        while time.perf_counter() - approved_at < 60:
            if _active_version(base, headers) == candidate:
                swapped = time.perf_counter() - approved_at
                break
            time.sleep(0.1)
        time.sleep(1.0)
        traffic.stop(loop)
        after = _active_version(base, headers)
        _say(f"daemon now serves version {after}; swap took {swapped if swapped is None else round(swapped, 2)} s")

        status = httpx.get(f"{base}/v1/status", timeout=5, headers=headers).json()
        counts = status.get("counts", {})
        report = {
            "requests": traffic.sent,
            "failed_requests": len(traffic.failures),
            "failures_sample": traffic.failures[:5],
            "loss_rows": counts.get("loss_rows", refresh["result"]["rows_written"]),
            "first_version": first_version,
            "candidate_version": candidate,
            "active_version_after_swap": after,
            "swap_seconds": None if swapped is None else round(swapped, 3),
            "route_latency_ms_p50": round(p50, 2),
            "router_latency_ms_p50": round(statistics.median(traffic.server_ms), 2) if traffic.server_ms else None,
            "route_latency_ms_p95": round(sorted(traffic.latencies_ms)[int(0.95 * len(traffic.latencies_ms)) - 1], 2),
            "train_seconds": result["metrics"].get("train_seconds"),
            "candidate_metrics": result["metrics"].get("candidate"),
            "active_metrics": result["metrics"].get("active"),
        }
    finally:
        _say("step 7/7: stopping everything")
        stop_process(daemon, timeout=30)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    path = Path(settings.home) / "demo-report.json"
    path.write_text(json.dumps(report, indent=2))
    _say(f"report written to {path}")
    for key in ("requests", "failed_requests", "loss_rows", "candidate_version", "active_version_after_swap",
                "swap_seconds", "route_latency_ms_p50", "router_latency_ms_p50", "train_seconds", "wall_seconds"):
        print(f"  {key:26} {report[key]}")
    return report


def _failed(report: dict[str, Any]) -> bool:
    """A request failed, or the daemon did not end up serving the approved candidate."""
    return bool(report["failed_requests"] != 0 or report["active_version_after_swap"] != report["candidate_version"])


GROUP = Group(None, "demo", (
    verb("demo", run_demo, arg("--prompts", type=positive_int, default=300, help="traffic prompts to send"),
         fails=_failed),
))
