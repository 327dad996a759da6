"""What the request spool costs a routed request: the same daemon with THALAMUS_SPOOL=on and off.

    HF_HUB_OFFLINE=1 python -m benchmarks.spool_latency [--rates 5 10] [--seconds 40] [--rounds 2]

Creates a throw-away PostgreSQL database (``--admin-url``), registers eight external experts, and
starts a real ``thalamus serve`` (the default MiniLM router, cold-started) once per mode and round,
alternating off/on so drift in the machine's load hits both. Each (mode, rate) is driven by the
open-loop generator in ``benchmarks/loadgen.py``. Prints p50/p95/p99 of end-to-end latency per
mode and the spool's own group-commit time from the daemon's ``/metrics``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import create_engine, text

from benchmarks.loadgen import open_loop, wait_healthy
from benchmarks.tcpproxy import free_port

WORDS = ("route the prompt to the expert that answers best under size cost latency and recency constraints "
         "python function returns list of numbers sorted garden weather mild green translate summarise this "
         "paragraph about history physics chemistry law contract poem story code bug fix explain").split()


def _prompts(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))), "app": "bench"}
            for _ in range(n)]


def _database(admin_url: str) -> tuple[str, Any]:
    name = f"thalamus_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return admin_url.rsplit("/", 1)[0] + f"/{name}", drop


def _prepare(env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "cli", "db", "upgrade"], env=env, check=True, capture_output=True)
    for i in range(8):
        subprocess.run([sys.executable, "-m", "cli", "experts", "add", f"expert-{i}", "--kind", "external",
                        "--attr", f"params={(i + 1) * 1e9:g}", "--attr", f"cost={i + 1}"],
                       env=env, check=True, capture_output=True)


def _serve(env: dict[str, str], log: Path, base: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as handle:
        process = subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=env,
                                   stdout=handle, stderr=subprocess.STDOUT)
    try:
        wait_healthy(base, process, timeout=300, poll=0.5, log_tail=lambda: log.read_text()[-2000:])
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    return process


def _histogram(body: str, name: str) -> tuple[list[tuple[float, float]], float, float]:
    """Cumulative buckets (upper bound, count), sum and count of one Prometheus histogram."""
    buckets = [(float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2)))
               for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} ([0-9.e+-]+)$', body, re.M)]
    total = re.search(rf"^{name}_sum ([0-9.e+-]+)$", body, re.M)
    count = re.search(rf"^{name}_count ([0-9.e+-]+)$", body, re.M)
    return buckets, float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Linear interpolation inside the bucket holding quantile q (what Prometheus' histogram_quantile does)."""
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(cumulative - below, 1e-12)
        lower, below = upper, cumulative
    return lower


def _spool_stats(base: str) -> dict[str, float]:
    """The spool's own numbers from /metrics: per-request wait (p50/p95) and per-commit time, in ms."""
    body = httpx.get(f"{base}/metrics", timeout=10).text
    wait, _, waits = _histogram(body, "thalamus_spool_wait_seconds")
    commit, commit_sum, commits = _histogram(body, "thalamus_spool_commit_seconds")
    _, rows_sum, _ = _histogram(body, "thalamus_spool_commit_rows")
    if not waits:
        return {}
    return {"requests": waits, "wait_p50_ms": 1000 * _quantile(wait, 0.5), "wait_p95_ms": 1000 * _quantile(wait, 0.95),
            "commit_p50_ms": 1000 * _quantile(commit, 0.5), "commit_mean_ms": 1000 * commit_sum / commits,
            "rows_per_commit": rows_sum / commits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[5.0, 10.0])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args()

    url, drop = _database(args.admin_url)
    home = Path(tempfile.mkdtemp(prefix="thalamus-spool-bench-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "THALAMUS_HOME": str(home),
           "THALAMUS_DATABASE_URL": url, "THALAMUS_PORT": str(port), "THALAMUS_LABEL_SHARE": "0",
           "THALAMUS_AUTH": "off"}  # loopback only; the spool, not the key check, is measured
    bodies = _prompts(500)
    latencies: dict[tuple[str, float], list[float]] = {}
    spool: list[dict[str, float]] = []
    try:
        _prepare(env)
        for round_ in range(args.rounds):
            for mode in ("off", "on"):
                daemon = _serve({**env, "THALAMUS_SPOOL": mode}, home / "daemon.log", base)
                try:
                    open_loop(base, "/v1/route", bodies, rate=5, seconds=5)  # warm-up, not counted
                    for rate in args.rates:
                        result = open_loop(base, "/v1/route", bodies, rate=rate, seconds=args.seconds)
                        latencies.setdefault((mode, rate), []).extend(result.latencies_ms)
                        print(f"round {round_} spool={mode} {json.dumps(result.summary())}", flush=True)
                    if mode == "on":
                        spool.append(_spool_stats(base))
                        print(f"round {round_} spool itself: {json.dumps(spool[-1])}", flush=True)
                finally:
                    daemon.terminate()
                    daemon.wait(30)
    finally:
        drop()
        shutil.rmtree(home, ignore_errors=True)

    print("\n| rate (req/s) | spool | requests | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    table = []
    for rate in args.rates:
        for mode in ("off", "on"):
            values = np.array(latencies[(mode, rate)])
            row = {"rate": rate, "spool": mode, "n": len(values),
                   **{f"p{q}": float(np.percentile(values, q)) for q in (50, 95, 99)}}
            table.append(row)
            print(f"| {rate:g} | {mode} | {row['n']} | {row['p50']:.1f} | {row['p95']:.1f} | {row['p99']:.1f} |")
        off, on = (next(r for r in table if r["rate"] == rate and r["spool"] == m) for m in ("off", "on"))
        print(f"|   | on − off | | {on['p50'] - off['p50']:+.2f} | {on['p95'] - off['p95']:+.2f} | "
              f"{on['p99'] - off['p99']:+.2f} |")
    for stats in spool:
        print(f"spool per request: wait p50 {stats['wait_p50_ms']:.3f} ms, p95 {stats['wait_p95_ms']:.3f} ms; "
              f"group commit p50 {stats['commit_p50_ms']:.3f} ms (mean {stats['commit_mean_ms']:.3f}), "
              f"{stats['rows_per_commit']:.2f} rows per commit, {stats['requests']:.0f} requests")
    if args.json:
        args.json.write_text(json.dumps({"table": table, "spool": spool}, indent=2))


if __name__ == "__main__":
    main()
