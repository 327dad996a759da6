"""The quality benchmark's report: one row per policy, the summary over seeds, the text tables and
the λ_size Pareto plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def policy_row(chosen_losses: np.ndarray, test_losses: np.ndarray, single: int, params: np.ndarray,
               chosen: np.ndarray | None, higher_is_better: bool) -> dict[str, float]:
    """One table row from the per-prompt loss of a policy's choice (complete test rows only).

    score = 1 − loss when the data are scores. hit_rate counts ties with the best expert.
    regret = policy loss − oracle loss; gap_captured = (single − policy) / (single − oracle).
    """
    best = test_losses.min(axis=1)
    routed, single_loss, oracle = float(chosen_losses.mean()), float(test_losses[:, single].mean()), float(best.mean())
    gap = single_loss - oracle
    row = {
        "loss": routed,
        "hit_rate": float(np.mean(chosen_losses <= best + 1e-12)),
        "regret": routed - oracle,
        "gap_captured": (single_loss - routed) / gap if gap > 1e-12 else float(routed <= oracle + 1e-12),
    }
    if higher_is_better:
        row["score"] = 1.0 - routed
    if chosen is not None and np.isfinite(params).any():
        row["mean_params"] = float(np.nanmean(params[chosen]))
    return row


def summarize(policies: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Mean and sd over seeds of every numeric field, per policy."""
    out: dict[str, dict[str, float]] = {}
    for name, rows in policies.items():
        keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float)) and rows[0][k] is not None]
        out[name] = {"n": len(rows)}
        for k in keys:
            values = np.array([r.get(k) for r in rows if r.get(k) is not None], dtype=float)
            out[name][k] = float(values.mean())
            out[name][f"{k}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def format_report(report: dict[str, Any]) -> str:
    """Plain-text tables: one row per policy (mean ± sd over seeds), the CI and the Pareto sweep."""
    hib = report["higher_is_better"]
    metric = "score" if hib else "loss"
    lines = [f"dataset {report['dataset']}: {report['n_train']} train / {report['n_test']} test prompts, "
             f"{len(report['experts'])} experts; best single on train = {report['best_single_expert']}",
             f"| policy | seeds | mean {metric} | hit rate | regret | gap captured | mean params | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in report["summary"].items():
        params = f"{s['mean_params']:.4g}" if "mean_params" in s else "–"
        lines.append(f"| {name} | {s['n']} | {s[metric]:.4f} ± {s[metric + '_sd']:.4f} | {s['hit_rate']:.3f} | "
                     f"{s['regret']:.4f} | {s['gap_captured']:.3f} | {params} | {s['seconds']:.1f} |")
    eps = report["summary"].get("thalamus", {}).get("examples_per_second")
    if eps:
        lines.append(f"router training: {eps:.0f} examples/s (whole run incl. caching the frozen layers)")
    served = report["summary"].get("thalamus_served")
    if served:
        precisions = sorted({str(r.get("inference")) for r in report["policies"]["thalamus_served"]})
        lines.append(f"served path (the bundle's ONNX export, {'/'.join(precisions)}): decisions agree with PyTorch "
                     f"on {served['agreement']:.4f} of the test prompts, max |Δ predicted loss| "
                     f"{served['max_abs_diff']:.4f}, {metric} {served[metric]:.4f} "
                     f"vs {report['summary']['thalamus'][metric]:.4f}")
    lines += selection_lines(report)
    boot = report["bootstrap"]
    sign = 1.0 if hib else -1.0
    for i, (d, lo, hi) in enumerate(boot["per_seed"]):
        lines.append(f"seed {i}: thalamus − best single = {d:+.4f} {metric} (95% paired bootstrap "
                     f"[{lo:+.4f}, {hi:+.4f}])" if hib else
                     f"seed {i}: best single − thalamus = {d:+.4f} loss (95% CI [{lo:+.4f}, {hi:+.4f}])")
    d, lo, hi = boot["seed_mean_policy"]
    lines.append(f"seed-averaged: {d:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    lines += ["", f"| λ_size | mean {metric} | sd | mean params |", "|---|---|---|---|"]
    for p in report["pareto"]["thalamus"]:
        value = 1 - p["loss"] if hib else p["loss"]
        lines.append(f"| {p['lambda_size']:g} | {value:.4f} | {p['loss_sd']:.4f} | {p['mean_params']:.4g} |")
    for p in report["pareto"]["single"]:
        value = 1 - p["loss"] if hib else p["loss"]
        lines.append(f"| single {p['expert']} | {value:.4f} | – | {p['mean_params']} |")
    cheap = report["pareto"]["cheapest_keeping_best_single"]
    lines.append("cheapest λ keeping the best single model's quality: " + (
        f"λ_size={cheap['lambda_size']:g} at {cheap['mean_params']:.4g} mean params" if cheap else "none"))
    lines.append(f"wall time {report['wall_seconds']:.0f}s sign={sign:+.0f}")
    return "\n".join(lines)


def plot(report: dict[str, Any], out: Path) -> None:
    """Quality vs mean params: the router's λ sweep and every single expert (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hib = report["higher_is_better"]
    conv = (lambda v: 1 - v) if hib else (lambda v: v)
    sweep = report["pareto"]["thalamus"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["mean_params"] for p in sweep], [conv(p["loss"]) for p in sweep], "o-", label="thalamus (λ_size sweep)")
    for p in sweep:
        ax.annotate(f"{p['lambda_size']:g}", (p["mean_params"], conv(p["loss"])), fontsize=7)
    singles = [p for p in report["pareto"]["single"] if p["mean_params"] is not None]
    ax.scatter([p["mean_params"] for p in singles], [conv(p["loss"]) for p in singles], c="grey", marker="s",
               label="single experts")
    ax.set_xlabel("mean params of the chosen expert (B)")
    ax.set_ylabel("mean score" if hib else "mean loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def selection_lines(report: dict[str, Any]) -> list[str]:
    """The selected head per seed, its timing and interval coverage, and the first seed's CV table."""
    from router.selection import format_table

    lines: list[str] = []
    rows = report["policies"].get("thalamus", [])
    for seed, row in enumerate(rows):
        if not row.get("head"):
            continue
        cov = [f"{label} {row[key]:.3f}" for key, label in (("holdout_coverage", "holdout"), ("test_coverage", "test"))
               if row.get(key) is not None]
        timing = (f"selection {row.get('selection_seconds') or 0:.1f}s of {row.get('train_seconds') or 0:.1f}s "
                  f"training (frozen-layer cache {row.get('cache_seconds') or 0:.1f}s)")
        lines.append(f"seed {seed}: selected head {row['head']}; {timing}"
                     + (f"; 80 % interval coverage: {', '.join(cov)}" if cov else ""))
    fixed = report["policies"].get("thalamus_fixed_head", [])
    if fixed and rows and rows[0].get("train_seconds") and fixed[0].get("train_seconds"):
        lines.append(f"training time, selected vs fixed head (same run): {rows[0]['train_seconds']:.1f}s vs "
                     f"{fixed[0]['train_seconds']:.1f}s = {rows[0]['train_seconds'] / fixed[0]['train_seconds']:.2f}×")
    selections = [s for s in report.get("selections", []) if s.get("table")]
    if selections:
        lines += ["", format_table(selections[0])]
    return lines


BASELINES = ("knn", "ridge_probe", "mlp_probe", "best_single")


def summary_row(report: dict[str, Any]) -> dict[str, Any]:
    """One dataset's line of the ``--datasets`` summary: thalamus against its best non-oracle baseline
    (in "higher is better" units: score, or −loss), the selected heads and the interval coverage."""
    hib = report["higher_is_better"]
    metric = "score" if hib else "loss"
    summary = report["summary"]
    sign = 1.0 if hib else -1.0
    baselines = {name: summary[name][metric] for name in BASELINES if name in summary}
    best_name = max(baselines, key=lambda n: sign * baselines[n])
    rows = report["policies"].get("thalamus", [])
    fixed = summary.get("thalamus_fixed_head", {})
    return {"dataset": report["dataset"], "metric": metric, "n_train": report["n_train"], "n_test": report["n_test"],
            "thalamus": summary["thalamus"][metric], "thalamus_sd": summary["thalamus"][f"{metric}_sd"],
            "seeds": int(summary["thalamus"]["n"]), "best_baseline": best_name,
            "best_baseline_value": baselines[best_name],
            "margin": sign * (summary["thalamus"][metric] - baselines[best_name]),
            "fixed_head": fixed.get(metric), "heads": [r.get("head") for r in rows],
            "holdout_coverage": summary["thalamus"].get("holdout_coverage"),
            "test_coverage": summary["thalamus"].get("test_coverage"),
            "train_seconds": summary["thalamus"].get("train_seconds"),
            "fixed_train_seconds": fixed.get("train_seconds"),
            "selection_seconds": summary["thalamus"].get("selection_seconds")}


def format_many(result: dict[str, Any]) -> str:
    """Every dataset's full report, then one summary table."""
    parts = [format_report(r) for r in result["runs"]]
    lines = ["| dataset | metric | thalamus (mean ± sd, seeds) | best non-oracle baseline | thalamus − baseline "
             "(higher is better) | fixed head (before selection) | selected heads | 80 % coverage holdout / test "
             "| train s (fixed head) |", "|---|---|---|---|---|---|---|---|---|"]

    def num(value: Any, fmt: str = ".4f") -> str:
        return "–" if value is None else format(value, fmt)

    for row in result["summary"]:
        heads = ", ".join(sorted(set(h for h in row["heads"] if h))) or "–"
        lines.append(f"| {row['dataset']} | {row['metric']} | "
                     f"{row['thalamus']:.4f} ± {row['thalamus_sd']:.4f} ({row['seeds']}) "
                     f"| {row['best_baseline']} {row['best_baseline_value']:.4f} | {row['margin']:+.4f} "
                     f"| {num(row['fixed_head'])} | {heads} | {num(row['holdout_coverage'], '.3f')} / "
                     f"{num(row['test_coverage'], '.3f')} | {num(row['train_seconds'], '.0f')} "
                     f"({num(row['fixed_train_seconds'], '.0f')}) |")
    return "\n\n".join([*parts, "\n".join(lines)])
