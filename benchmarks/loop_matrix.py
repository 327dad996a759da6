"""Every loop scenario over several seeds, and the issue's targets as means over the seeds.

    python -m benchmarks.loop_matrix --dataset ../shared/data/dcrouter --out DIR [--seeds 0,1,2]
        [--scenarios cold,drift,new-expert,degraded] [--feedback bandit|labelled|full] [--no-cost]

One process runs the runs one after another (each exactly ``thalamus bench loop --dataset D
--scenario S --seed K``), so the frozen encoder's features are computed once for all of them
(router/feature_cache.py); each run's report goes to ``DIR/S-K.json`` and its plot to ``DIR/S-K.png``
(a run whose JSON exists is not run again, so a second invocation only summarises). The summary
(``DIR/summary.json`` and a Markdown table on stdout) gives, per scenario, each target's value per
seed, its mean over the seeds, and whether the mean meets it. Plus the exploration-cost target:
``cold`` with full feedback, exploration on (the product default) against off, per seed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loop_stream import FEEDBACK, SCENARIOS

# The target each scenario is judged on (loop_report.targets names), with its threshold and direction.
TARGETS: dict[str, list[tuple[str, float, str]]] = {
    "cold": [("cold_at_or_above_best_single", 0.0, ">="), ("cold_gap_captured_at_least_0.8", 0.8, ">=")],
    "degraded": [("degraded_share_below_10pct_within_one_cycle", 0.10, "<"),
                 ("degraded_score_within_0.01_of_best_remaining", 0.01, "<=")],
    "new-expert": [("new_expert_share_at_least_0.8_of_offline", 0.8, ">=")],
    "drift": [],
}
EVERY = [("gate_intervals_cover_90pct", 0.9, ">="), ("gate_window_intervals_cover_90pct", 0.9, ">="),
         ("no_promotion_worse_by_0.01", 0.01, "<="),
         ("zero_failed_requests", 0, "<="), ("zero_failed_jobs", 0, "<=")]


def _run_one(dataset: Path, out: Path, scenario: str, seed: int, feedback: str = "bandit",
             explore: str | None = None, offline: bool = True) -> dict[str, Any]:
    from benchmarks import loop_report
    from benchmarks.loop import LoopPlan, run
    from store.settings import Settings

    name = f"{scenario}-{seed}" + (f"-{feedback}" if feedback != "bandit" else "") + \
        (f"-explore-{explore.replace(':', '')}" if explore else "")
    target = out / f"{name}.json"
    if target.exists():
        return dict(json.loads(target.read_text()))
    plan = LoopPlan(scenario=scenario, feedback=feedback, seed=seed, explore=explore, offline=offline)
    report = loop_report.build(run(dataset, plan, Settings(), say=lambda m: print(f"[{name}] {m}", flush=True)))
    target.write_text(json.dumps(report, indent=2, default=str))
    loop_report.plot(report, out / f"{name}.png")
    print(loop_report.format_report(report), flush=True)
    return report


def _passes(value: float | None, threshold: float, direction: str) -> bool:
    if value is None:
        return False
    return {">=": value >= threshold, "<=": value <= threshold, "<": value < threshold}[direction]


def summarize(reports: dict[str, list[dict[str, Any]]], costs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per scenario: each target's per-seed values and mean; the held-out scores; the run times."""
    out: dict[str, Any] = {}
    for scenario, runs in reports.items():
        rows = {}
        for name, threshold, direction in TARGETS.get(scenario, []) + EVERY:
            values = [(r["targets"].get(name) or {}).get("value") for r in runs]
            known = [float(v) for v in values if v is not None]
            mean = float(np.mean(known)) if known else None
            rows[name] = {"values": values, "mean": mean, "threshold": f"{direction} {threshold}",
                          "passed": _passes(mean, threshold, direction) if len(known) == len(runs) else False}
        held = [r["heldout"] for r in runs]
        out[scenario] = {
            "seeds": [r["plan"]["seed"] for r in runs], "targets": rows,
            "heldout": {k: float(np.mean([h[k] for h in held if h.get(k) is not None]))
                        for k in ("online", "best_single", "offline", "oracle")
                        if any(h.get(k) is not None for h in held)},
            "promotions": [len(r["promotions"]) for r in runs],
            "gate_truth": [r.get("gate_truth") for r in runs],
            "wall_seconds": [r["seconds"]["wall"] for r in runs],
        }
    if costs:
        pairs = [(c["on"]["stream"]["score"], c["off"]["stream"]["score"]) for c in costs]
        diffs = [off - on for on, off in pairs]
        out["exploration_cost_full_feedback"] = {"on": [p[0] for p in pairs], "off": [p[1] for p in pairs],
                                                 "cost": diffs, "mean": float(np.mean(diffs)),
                                                 "passed": float(np.mean(diffs)) <= 0.01}
    return out


def table(summary: dict[str, Any]) -> str:
    lines = ["| scenario | target | per seed | mean | threshold | met |", "|---|---|---|---|---|---|"]
    for scenario, s in summary.items():
        if scenario == "exploration_cost_full_feedback":
            per = ", ".join(f"{v:+.4f}" for v in s["cost"])
            lines.append(f"| cold, full feedback | exploration cost (off − on score) | {per} | {s['mean']:+.4f} | "
                         f"<= 0.01 | {'yes' if s['passed'] else 'NO'} |")
            continue
        for name, t in s["targets"].items():
            per = ", ".join("–" if v is None else f"{v:.4g}" for v in t["values"])
            mean = "–" if t["mean"] is None else f"{t['mean']:.4g}"
            met = "yes" if t["passed"] else "NO"
            lines.append(f"| {scenario} | {name} | {per} | {mean} | {t['threshold']} | {met} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--feedback", choices=FEEDBACK, default="bandit",
                        help="the scenario runs' feedback (bandit, the default; labelled; full)")
    parser.add_argument("--no-cost", dest="cost", action="store_false",
                        help="skip the exploration-cost pair (cold, full feedback, exploration on and off)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    reports = {s: [_run_one(args.dataset, args.out, s, k, feedback=args.feedback) for k in seeds] for s in scenarios}
    costs = []
    if args.cost:
        for k in seeds:
            costs.append({"on": _run_one(args.dataset, args.out, "cold", k, feedback="full", offline=False),
                          "off": _run_one(args.dataset, args.out, "cold", k, feedback="full", explore="off",
                                          offline=False)})
    summary = summarize(reports, costs)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table(summary))


if __name__ == "__main__":
    main()
