"""What shadow mode adds to a routed request's latency: the same daemon with no shadow, and with one.

    HF_HUB_OFFLINE=1 python -m benchmarks.shadow_latency [--rate 10] [--seconds 30] [--rounds 2]
        [--shares 0.2 1.0] [--nice 0 10] [--backbone minilm|tiny|PATH]      (or: thalamus bench shadow ...)

One throw-away stack (``benchmarks/stack.py``: a fresh PostgreSQL database, three external experts,
the cold-start router version 1 active and a candidate version 2) and one real ``thalamus serve`` per
``THALAMUS_SHADOW_NICE`` value asked for (``--nice``).
Each round drives the same open-loop load (``benchmarks/loadgen.open_loop``, latency from each
request's scheduled start) with shadow mode off, and with version 2 as a shadow at each share
(``thalamus admin shadow 2 --share S``, waiting until the daemon reports it loaded); the order of
the modes rotates from round to round so drift in the machine's load hits every mode. Reports
p50/p95/p99 of end-to-end latency per mode, their ratio to "off", and the shadow's own counts
(decisions written, requests dropped on a full queue) while each mode ran.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import open_loop
from benchmarks.stack import ADMIN_URL, CODE, PROSE, Stack, build_tiny_backbone, kill

OFF = "off"


def bodies(n: int = 400, seed: int = 0) -> list[dict[str, Any]]:
    """Prompts of 20–60 words drawn from the stack's code and prose snippets."""
    words = " ".join(CODE + PROSE).split()
    rng = random.Random(seed)
    return [{"prompt": " ".join(rng.choice(words) for _ in range(rng.randint(20, 60))), "app": "bench-shadow"}
            for _ in range(n)]


def _set_mode(stack: Stack, version: int, mode: float | str, timeout: float = 120.0, wait: bool = True) -> None:
    """Make ``version`` a shadow at share ``mode`` (or stop every shadow), then wait until the daemon reports it."""
    from jobs.shadows import start_shadow, stop_shadows
    from store.db import session_scope

    with session_scope(stack.settings) as session:
        if mode == OFF:
            stop_shadows(session, None, actor="bench", reason="shadow latency benchmark")
        else:
            start_shadow(session, version, float(mode), actor="bench", reason="shadow latency benchmark")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = stack.status()
        shadows = [(s["version"], s["share"], s["loaded"]) for s in status["shadows"]]
        if shadows == ([] if mode == OFF else [(version, float(mode), True)]) and not status["shadow_queue"]["depth"]:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the daemon did not report shadow mode {mode} within {timeout:.0f} s")


def _counts(stack: Stack, version: int) -> dict[str, int]:
    listed = [s for s in stack.status()["shadows"] if s["version"] == version]
    return {k: listed[0][k] for k in ("routed", "dropped", "failed")} if listed else {}


def offer_cost(calls: int = 20_000) -> dict[str, float]:
    """Microseconds per ``ShadowRunner.offer`` — the only shadow work on the response path — with no shadow
    loaded, and with one at share 1.0 (hash, sample, enqueue). Timed in this process, not the daemon."""
    import types
    import uuid
    from typing import cast

    from daemon.holder import RouterHolder
    from daemon.metrics import Metrics
    from daemon.shadow import ShadowRunner
    from store.settings import Settings

    ids = [str(uuid.uuid4()) for _ in range(calls)]
    result = {}
    for label, shadows in (("none", {}), ("share 1.0", {2: types.SimpleNamespace(share=1.0)})):
        holder = cast(RouterHolder, types.SimpleNamespace(shadows=shadows))
        runner = ShadowRunner(Settings(), holder, metrics=Metrics(), max_queue=calls + 1)
        started = time.perf_counter()
        for request_id in ids:
            runner.offer(request_id, "a prompt of a few words", {}, "api")
        result[label] = 1e6 * (time.perf_counter() - started) / calls
    return result


def run(rate: float = 10.0, seconds: float = 30.0, rounds: int = 2, shares: Sequence[float] = (0.2, 1.0),
        backbone: str = "minilm", admin_url: str = ADMIN_URL, nices: Sequence[int] | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark; returns ``{"rows": [...], ...}``: a row per (shadow nice, mode) with n, p50/p95/p99
    and their ratios to the same daemon's "off" mode. One daemon per ``THALAMUS_SHADOW_NICE`` value."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # every load check would draw one
    from store.settings import Settings

    nices = list(nices) if nices else [Settings.model_fields["shadow_nice"].default]
    modes: list[float | str] = [OFF, *shares]
    rows: list[dict[str, Any]] = []
    load = bodies()
    with tempfile.TemporaryDirectory(prefix="thalamus-shadow-backbone-") as scratch:
        path = build_tiny_backbone(Path(scratch) / "tiny") if backbone == "tiny" else (
            None if backbone == "minilm" else backbone)
        with Stack("shadow", path, admin_url) as stack:
            for nice in nices:
                rows += _one_daemon(stack, nice, modes, rate, seconds, rounds, load, log)
    return {"rate": rate, "seconds": seconds, "rounds": rounds, "backbone": backbone, "rows": rows,
            "offer_us": offer_cost()}


def _one_daemon(stack: Stack, nice: int, modes: Sequence[float | str], rate: float, seconds: float, rounds: int,
                load: Sequence[dict[str, Any]], log: Callable[[str], None]) -> list[dict[str, Any]]:
    latencies: dict[str, list[float]] = {str(m): [] for m in modes}
    errors: dict[str, int] = {str(m): 0 for m in modes}
    shadow_counts: dict[str, dict[str, int]] = {str(m): {"routed": 0, "dropped": 0, "failed": 0} for m in modes}
    per_round: list[dict[str, dict[int, float]]] = []  # each round's percentiles by mode
    candidate = stack.versions[1]
    _set_mode(stack, candidate, OFF, wait=False)
    log(f"starting the daemon (THALAMUS_SHADOW_NICE={nice}) …")
    daemon = stack.serve(timeout=300, shadow_nice=nice)
    try:
        open_loop(stack.base, "/v1/route", load, rate=rate, seconds=5)  # warm-up, not counted
        for round_ in range(rounds):
            order = [*modes[round_ % len(modes):], *modes[: round_ % len(modes)]]
            per_round.append({})
            for mode in order:
                _set_mode(stack, candidate, mode)
                before = _counts(stack, candidate)
                result = open_loop(stack.base, "/v1/route", load, rate=rate, seconds=seconds)
                time.sleep(1.0)  # let the shadow thread finish what this mode queued before counting
                after = _counts(stack, candidate)
                key, summary = str(mode), result.summary()
                latencies[key] += result.latencies_ms
                per_round[-1][key] = {q: result.percentile(q) for q in (50, 95, 99)}
                errors[key] += summary["errors"]
                delta = {k: after.get(k, 0) - before.get(k, 0) for k in ("routed", "dropped", "failed")}
                for name, value in delta.items():
                    shadow_counts[key][name] += value
                log(f"nice {nice} round {round_} shadow={mode}: {json.dumps(summary)} shadow counts {delta}")
        _set_mode(stack, candidate, OFF)
    finally:
        kill(daemon)
    base = {q: float(np.percentile(latencies[OFF], q)) for q in (50, 95, 99)}
    rows = []
    for mode in modes:
        key = str(mode)
        values = np.array(latencies[key])
        row: dict[str, Any] = {"nice": nice, "shadow": key, "n": len(values), "errors": errors[key],
                               **shadow_counts[key]}
        for q in (50, 95, 99):
            row[f"p{q}_ms"] = float(np.percentile(values, q))
            row[f"p{q}_ratio"] = row[f"p{q}_ms"] / base[q]
            # Robust to the machine's drift: the ratio to "off" within each round, median over rounds.
            ratios = [r[key][q] / r[OFF][q] for r in per_round]
            row[f"p{q}_round_ratios"] = ratios
            row[f"p{q}_median_round_ratio"] = float(np.median(ratios))
        rows.append(row)
    return rows


def table(report: dict[str, Any]) -> str:
    """The rows as a Markdown table."""
    lines = ["| shadow nice | shadow share | requests | errors | p50 ms | p95 ms | p99 ms | p50 ratio | p95 ratio "
             "| p99 ratio | median per-round ratio p50 / p95 / p99 | shadow decisions | dropped |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['nice']} | {r['shadow']} | {r['n']} | {r['errors']} | {r['p50_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['p50_ratio']:.2f} | {r['p95_ratio']:.2f} | "
                     f"{r['p99_ratio']:.2f} | {r['p50_median_round_ratio']:.2f} / {r['p95_median_round_ratio']:.2f} / "
                     f"{r['p99_median_round_ratio']:.2f} | {r['routed']} | {r['dropped']} |")
    offer = report.get("offer_us", {})
    none, one = offer.get("none", float("nan")), offer.get("share 1.0", float("nan"))
    lines.append(f"\nShadowRunner.offer on the response path: {none:.2f} µs per call with no shadow, "
                 f"{one:.2f} µs with one shadow at share 1.0")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.2, 1.0])
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--admin-url", default=ADMIN_URL)
    parser.add_argument("--nice", type=int, nargs="+", help="THALAMUS_SHADOW_NICE values, a daemon each "
                        "(default: the setting's default)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = run(args.rate, args.seconds, args.rounds, args.shares, args.backbone, args.admin_url, args.nice)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
