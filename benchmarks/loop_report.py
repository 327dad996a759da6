"""The loop benchmark's report: windows, promotions, the final held-out score, the targets, a plot.

Scores are ``1 − loss`` (the datasets' own score when they hold scores). "Best single" is the
expert with the best mean on the pool among those registered at the start, kept fixed (so it
suffers a degradation like any fixed choice); "best remaining" excludes the scenario's expert.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loop import LoopRun
from router.metrics import paired_bootstrap


def _fixed(loop: LoopRun, exclude: str | None = None) -> str:
    """The best single expert on the pool among those registered at the start (minus ``exclude``)."""
    pool = loop.stream.pool
    means = np.nanmean(pool.losses, axis=0)
    names = [n for n in loop.stream.available(0) if n != exclude]
    return min(names, key=lambda n: float(means[pool.experts.index(n)]))


def windows(loop: LoopRun) -> list[dict[str, Any]]:
    """Per window of ``plan.window`` requests: served, baselines, regret, traffic and exploration shares."""
    stream, records = loop.stream, loop.records
    single = _fixed(loop)
    remaining = _fixed(loop, exclude=stream.event_expert) if stream.scenario == "degraded" else None
    names = stream.pool.experts
    out = []
    for start in range(0, len(stream), loop.plan.window):
        part = [r for r in records if start <= r.t < start + loop.plan.window]
        if not part:
            continue
        served = np.array([r.loss for r in part])
        row: dict[str, Any] = {
            "start": start, "end": start + len(part), "n": len(part),
            "score": float(1 - served.mean()),
            # What the router's own argmin would have served on the same requests: its knowledge, without
            # the exploration's cost or gain.
            "greedy_score": float(1 - np.mean([r.greedy_loss for r in part])),
            "oracle": float(1 - np.mean([r.oracle for r in part])),
            "best_single": float(1 - np.mean([stream.loss(r.t, single) for r in part])),
            "regret": float(np.mean([r.loss - r.oracle for r in part])),
            "explored": float(np.mean([r.explored for r in part])),
            "share": {n: c / len(part) for n, c in sorted(Counter(r.expert for r in part).items())},
            "version": part[-1].version,
        }
        if remaining is not None:
            row["best_remaining"] = float(1 - np.mean([stream.loss(r.t, remaining) for r in part]))
        if loop.offline_choice is not None:
            chosen = [names[int(loop.offline_choice[int(stream.order[r.t])])] for r in part]
            row["offline"] = float(1 - np.mean([stream.loss(r.t, c) for r, c in zip(part, chosen, strict=True)]))
            row["offline_share"] = {n: c / len(part) for n, c in sorted(Counter(chosen).items())}
        out.append(row)
    return out


def _estimate(off_policy: dict[str, Any] | None) -> dict[str, float] | None:
    """The candidate's doubly robust estimate of its expected loss, with its 95 % interval."""
    if not off_policy:
        return None
    candidate = off_policy.get("candidate") or {}
    dr = candidate.get("dr") or {}
    if dr.get("value") is None:
        return None
    return {"loss": float(dr["value"]), "low": float(dr["low"]), "high": float(dr["high"]),
            "n": int(off_policy.get("n_rows", candidate.get("n_rows", 0)) or 0)}


def _promoted_off_policy(gate: str | None) -> bool:
    """The gate's recorded verdict promoted on the off-policy estimate (not on "no router is active")."""
    return (gate or "").startswith("promote (off-policy)")


def promotions(loop: LoopRun) -> list[dict[str, Any]]:
    """Each promotion: the off-policy estimate the gate used and the loss realised in the next window."""
    out = []
    by_t = {r.t: r for r in loop.records}
    for cycle in loop.cycles:
        if not cycle.promoted:
            continue
        end = cycle.t + loop.plan.window
        after = [by_t[t] for t in range(cycle.t, end) if t in by_t]
        before = [by_t[t] for t in range(cycle.t - loop.plan.window, cycle.t) if t in by_t]
        estimate = _estimate(cycle.off_policy)
        realised = float(np.mean([r.loss for r in after])) if after else None
        row: dict[str, Any] = {"t": cycle.t, "version": cycle.version, "estimate": estimate, "gate": cycle.gate,
                               "realised_loss": realised,
                               "previous_window_loss": float(np.mean([r.loss for r in before])) if before else None}
        replaced = _against_replaced(loop, cycle, after)
        if replaced is not None:
            row["vs_replaced"] = replaced
        # judged only where it decided
        if estimate is not None and realised is not None and _promoted_off_policy(cycle.gate):
            row["inside"] = estimate["low"] <= realised <= estimate["high"]
            window = window_interval(estimate, [r.loss for r in after])
            if window is not None:
                row["window_interval"] = window
                row["inside_window_interval"] = window["low"] <= realised <= window["high"]
        out.append(row)
    return out


def window_interval(estimate: dict[str, float], window_losses: list[float]) -> dict[str, float] | None:
    """A 95 % prediction interval for the mean loss of one window of ``len(window_losses)`` requests.

    The DR interval is for the candidate's *expected* loss; one window's mean also carries its own
    sampling noise (about ±0.06 for 250 scores in {0, 1}), so even an exact estimate's interval misses
    most realised windows. Widen it: half-width 1.96 · √(se² + σ²/n), se from the DR interval, σ² the
    window's sample variance. None for a window of fewer than two requests.
    """
    n = len(window_losses)
    if n < 2:
        return None
    se = (estimate["high"] - estimate["low"]) / (2 * 1.959964)
    half = 1.959964 * math.sqrt(se**2 + float(np.var(window_losses, ddof=1)) / n)
    return {"low": estimate["loss"] - half, "high": estimate["loss"] + half, "n": n}


def _against_replaced(loop: LoopRun, cycle: Any, after: list[Any]) -> dict[str, Any] | None:
    """Promoted − replaced router on the same requests of the next window: each one's argmin loss (the
    world's loss of what each would have served without exploring), mean with a 95 % paired bootstrap."""
    if not cycle.replaced:
        return None
    choice, names = cycle.replaced["choice"], loop.stream.pool.experts
    pairs = [(r.greedy_loss, loop.stream.loss(r.t, names[int(choice[str(r.t)])])) for r in after
             if str(r.t) in choice and np.isfinite(r.greedy_loss)]
    if len(pairs) < 2:
        return None
    new, old = (np.array(x) for x in zip(*pairs, strict=True))
    value, low, high = paired_bootstrap(new, old, n=2000, seed=0)
    return {"version": cycle.replaced["version"], "n": len(pairs), "loss_difference": value, "low": low, "high": high}


def heldout(loop: LoopRun) -> dict[str, Any]:
    """The final router on the held-out prompts (never streamed) against best single, offline, oracle."""
    stream = loop.stream
    if loop.online_heldout is None:
        return {}
    last = len(stream) - 1
    names = stream.pool.experts
    rows = range(len(stream.heldout.prompts))

    def losses_of(choice: np.ndarray) -> np.ndarray:
        return np.array([stream.loss(last, names[int(c)], stream.heldout, i) for i, c in zip(rows, choice,
                                                                                           strict=True)])

    online = losses_of(loop.online_heldout)
    available = [names.index(n) for n in stream.available(last)]
    single = names.index(_fixed(loop))
    fixed = losses_of(np.full(len(online), single))
    world = np.array([[stream.loss(last, names[j], stream.heldout, i) if j in available else np.nan
                       for j in range(len(names))] for i in rows])
    out: dict[str, Any] = {"n": len(online), "online": float(1 - online.mean()), "best_single": float(1 - fixed.mean()),
                           "oracle": float(1 - np.nanmin(world, axis=1).mean())}
    diff = paired_bootstrap(fixed, online, n=2000, seed=0)  # single loss − online loss: > 0 = online better
    out["online_minus_single"] = {"mean": diff[0], "low": diff[1], "high": diff[2]}
    if loop.offline_heldout is not None:
        offline = losses_of(loop.offline_heldout)
        out["offline"] = float(1 - offline.mean())
        gain = out["offline"] - out["best_single"]
        out["gap_captured"] = (out["online"] - out["best_single"]) / gain if gain > 1e-12 else None
    return out


def targets(loop: LoopRun, wins: list[dict[str, Any]], proms: list[dict[str, Any]],
            final: dict[str, Any], cost: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The issue's targets that this run can check, each with its numbers and a verdict (``cost``: the
    run's :func:`exploration_cost`, computed once by :func:`build`)."""
    stream, plan = loop.stream, loop.plan
    out: dict[str, dict[str, Any]] = {}
    if plan.scenario == "cold" and final:
        out["cold_at_or_above_best_single"] = {"value": final["online"] - final["best_single"],
                                               "passed": final["online"] >= final["best_single"]}
    if plan.scenario == "cold" and final.get("gap_captured") is not None:  # None: no offline gain to capture
        out["cold_gap_captured_at_least_0.8"] = {"value": final["gap_captured"],
                                                 "passed": final["gap_captured"] >= 0.8}
    if plan.scenario == "degraded" and stream.event_at is not None:
        first = next((c for c in loop.cycles if c.t > stream.event_at and c.version is not None), None)
        if first is not None:
            horizon = first.t + plan.cycle
            after = [r for r in loop.records if first.t <= r.t < horizon]
            share = float(np.mean([r.expert == stream.event_expert for r in after])) if after else None
            out["degraded_share_below_10pct_within_one_cycle"] = {
                "value": share, "window": [first.t, horizon], "passed": share is not None and share < 0.10}
            recovered = [r for r in loop.records if r.t >= horizon]
            if len(recovered) >= 2:
                out["degraded_score_within_0.01_of_best_remaining"] = _behind_remaining(loop, recovered, wins, horizon)
    if plan.scenario == "new-expert" and stream.event_at is not None and loop.offline_choice is not None:
        start = stream.event_at + 2 * plan.cycle
        part = [r for r in loop.records if start <= r.t < start + plan.window] or \
            [r for r in loop.records if r.t >= stream.event_at + plan.cycle]
        names = stream.pool.experts
        new = stream.event_expert
        online = float(np.mean([r.expert == new for r in part])) if part else 0.0
        offline = float(np.mean([names[int(loop.offline_choice[int(stream.order[r.t])])] == new for r in part])) \
            if part else 0.0
        out["new_expert_share_at_least_0.8_of_offline"] = {
            "value": online / offline if offline > 0 else None, "online_share": online, "offline_share": offline,
            "passed": offline == 0 or online >= 0.8 * offline}
    judged = [p for p in proms if "inside" in p]
    if judged:
        inside = float(np.mean([p["inside"] for p in judged]))
        out["gate_intervals_cover_90pct"] = {"value": inside, "n": len(judged), "passed": inside >= 0.9}
    windowed = [p for p in proms if "inside_window_interval" in p]
    if windowed:
        inside = float(np.mean([p["inside_window_interval"] for p in windowed]))
        out["gate_window_intervals_cover_90pct"] = {"value": inside, "n": len(windowed), "passed": inside >= 0.9}
    # Worse than the router it replaced, on the same requests of the next window (not the previous window's
    # requests: two windows' prompts differ by more than 0.01 on their own).
    compared = [p["vs_replaced"] for p in proms if p.get("vs_replaced")]
    if compared:
        worst = float(max(c["loss_difference"] for c in compared))
        # The verdict is on the point values; beside it, how many were worse by more than 0.01 beyond doubt
        # (their whole interval above 0.01): one window's paired difference is about ±0.02 of noise.
        surely = sum(c["low"] > 0.01 for c in compared)
        out["no_promotion_worse_by_0.01"] = {"value": worst, "n": len(compared), "surely_worse_by_0.01": surely,
                                             "passed": worst <= 0.01}
    if cost is not None and cost["explored"] > 0:
        out["exploration_costs_at_most_0.01"] = {"value": cost["cost"], "passed": cost["cost"] <= 0.01}
    out["zero_failed_requests"] = {"value": len(loop.failures), "passed": not loop.failures}
    failed_jobs = [c.t for c in loop.cycles if c.failed]
    out["zero_failed_jobs"] = {"value": len(failed_jobs), "at": failed_jobs, "passed": not failed_jobs}
    return out


def _behind_remaining(loop: LoopRun, recovered: list[Any], wins: list[dict[str, Any]],
                      horizon: int) -> dict[str, Any]:
    """Best remaining expert's score − served score over every request from ``horizon`` (one cycle after
    the first training after the drop) to the end, paired per request, with a 95 % bootstrap interval.
    One window alone (the last one holds 141 requests at full size) is ±0.08 of noise in scores in {0, 1};
    the last window's gap is kept beside it."""
    remaining = _fixed(loop, exclude=loop.stream.event_expert)
    served = np.array([r.loss for r in recovered])
    best = np.array([loop.stream.loss(r.t, remaining) for r in recovered])
    value, low, high = paired_bootstrap(served, best, n=2000, seed=0)  # served − best loss = best − served score
    tail = [w for w in wins if w["start"] >= horizon]
    last = tail[-1]["best_remaining"] - tail[-1]["score"] if tail else None
    return {"value": value, "low": low, "high": high, "n": len(recovered), "from": horizon,
            "last_window": last, "passed": value <= 0.01}


def exploration_cost(loop: LoopRun) -> dict[str, Any] | None:
    """What exploring cost on this very stream: mean (served loss − the router's argmin's loss) over every
    request, with a 95 % bootstrap interval. The same router, requests and feedback, so unlike a second
    run with exploration off it carries no training noise; it does not count what exploring taught."""
    pairs = [(r.loss, r.greedy_loss) for r in loop.records if np.isfinite(r.greedy_loss)]
    if not pairs:
        return None
    served, greedy = (np.array(x) for x in zip(*pairs, strict=True))
    mean, low, high = paired_bootstrap(served, greedy, n=2000, seed=0)
    return {"n": len(pairs), "explored": float(np.mean([r.explored for r in loop.records])),
            "cost": float(mean), "low": float(low), "high": float(high)}


def build(loop: LoopRun) -> dict[str, Any]:
    """The JSON-able report of a run."""
    from dataclasses import asdict

    wins, proms, final, cost = windows(loop), promotions(loop), heldout(loop), exploration_cost(loop)
    records = loop.records
    return {
        "plan": asdict(loop.plan), "policy": loop.policy, "scenario": loop.stream.scenario,
        "experts": loop.stream.pool.experts,
        "n_pool": len(loop.stream.pool.prompts), "n_heldout": len(loop.stream.heldout.prompts),
        "event": {"at": loop.stream.event_at, "expert": loop.stream.event_expert},
        "stream": {"n": len(records), "score": float(1 - np.mean([r.loss for r in records])) if records else None,
                   "explored": float(np.mean([r.explored for r in records])) if records else None,
                   "labelled": int(sum(r.labelled for r in records)), "exploration_cost": cost},
        "windows": wins, "promotions": proms, "heldout": final,
        "cycles": [asdict(c) for c in loop.cycles], "failures": loop.failures[:20],
        "gate_truth": gate_truth([asdict(c) for c in loop.cycles]),
        "targets": targets(loop, wins, proms, final, cost),
        "seconds": {k: round(v, 1) for k, v in loop.seconds.items()},
    }


def format_report(report: dict[str, Any]) -> str:
    """Plain-text tables for a person."""
    plan = report["plan"]
    lines = [f"scenario {report['scenario']} · {plan['feedback']} feedback · {report['stream']['n']} requests · "
             f"jobs every {plan['cycle']} · seed {plan['seed']} · explore {_explore(report)}"]
    if report["event"]["at"] is not None:
        lines.append(f"event at request {report['event']['at']}: {report['event']['expert']}")
    has_offline = any("offline" in w for w in report["windows"])
    has_remaining = any("best_remaining" in w for w in report["windows"])
    head = "| requests | score | best single |" + (" best remaining |" if has_remaining else "") + \
        (" offline |" if has_offline else "") + " oracle | regret | explored | top expert (share) | version |"
    lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
    for w in report["windows"]:
        top, share = max(w["share"].items(), key=lambda kv: kv[1])
        cells = [f"{w['start']}–{w['end']}", f"{w['score']:.3f}", f"{w['best_single']:.3f}"]
        if has_remaining:
            cells.append(f"{w.get('best_remaining', float('nan')):.3f}")
        if has_offline:
            cells.append(f"{w.get('offline', float('nan')):.3f}")
        cells += [f"{w['oracle']:.3f}", f"{w['regret']:.3f}", f"{w['explored']:.1%}", f"{top} ({share:.0%})",
                  str(w["version"])]
        lines.append("| " + " | ".join(cells) + " |")
    if report["promotions"]:
        lines += ["", "| promoted at | version | gate | off-policy loss [95 % CI] | realised next window | inside | "
                      "inside the window's 95 % prediction interval | promoted − replaced, next window (loss) |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in report["promotions"]:
            e = p["estimate"]
            est = f"{e['loss']:.3f} [{e['low']:.3f}, {e['high']:.3f}]" if e else "–"
            real = f"{p['realised_loss']:.3f}" if p["realised_loss"] is not None else "–"
            basis = (p.get("gate") or "–").split(":")[0]
            vs = p.get("vs_replaced")
            versus = (f"{vs['loss_difference']:+.4f} [{vs['low']:+.4f}, {vs['high']:+.4f}] vs v{vs['version']}"
                      if vs else "–")
            win = p.get("window_interval")
            inside_window = f"{p['inside_window_interval']} [{win['low']:.3f}, {win['high']:.3f}]" if win else "–"
            lines.append(f"| {p['t']} | {p['version']} | {basis} | {est} | {real} | {p.get('inside', '–')} | "
                         f"{inside_window} | {versus} |")
    judged = [c for c in report["cycles"] if c.get("version") is not None]
    if judged:
        lines += ["", "| jobs at | candidate | gate | off-policy DR candidate − active (loss) | held-out truth "
                      "candidate − active | truth inside |", "|---|---|---|---|---|---|"]
        for c in judged:
            lines.append(_cycle_row(c))
    final = report["heldout"]
    if final:
        offline = f" · offline {final['offline']:.4f}" if "offline" in final else ""
        lines += ["", f"held-out ({final['n']} prompts never streamed): online {final['online']:.4f} · best single "
                      f"{final['best_single']:.4f}{offline} · oracle {final['oracle']:.4f}"]
        d = final["online_minus_single"]
        captured = f" · gap captured {final['gap_captured']:.2f}" if final.get("gap_captured") is not None else ""
        lines.append(f"online − best single = {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]{captured}")
    truth = report.get("gate_truth")
    if truth and truth.get("covered") is not None:
        lines.append(f"off-policy DR intervals holding the held-out truth: {truth['covered']:.0%} of {truth['n']}; "
                     f"held although better by > 0.01: {truth['held_but_better_by_0.01'] or 'none'}")
    value = (truth or {}).get("value")
    if value:
        promoted = (f"{value['promoted']:.0%} of the {value['n_promoted']} promoted on it"
                    if value["promoted"] is not None else "none promoted on it")
        lines.append(f"candidates' DR loss intervals holding their held-out loss: {value['all']:.0%} of {value['n']} "
                     f"cycles; {promoted}")
    labelled = report["stream"].get("labelled")
    if labelled and report["plan"].get("feedback") == "labelled":
        lines.append(f"labelled: every expert's loss posted on {labelled} of {report['stream']['n']} requests "
                     "(the daemon's label sample)")
    cost = report["stream"].get("exploration_cost")
    if cost:
        lines.append(f"exploration: {cost['explored']:.1%} of requests explored; cost in score against the argmin on "
                     f"the same requests {cost['cost']:+.4f} [{cost['low']:+.4f}, {cost['high']:+.4f}]")
    lines += ["", "| target | value | passed |", "|---|---|---|"]
    for name, t in report["targets"].items():
        value = t["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        if "low" in t and "high" in t:
            shown += f" [{t['low']:.4g}, {t['high']:.4g}]"
        lines.append(f"| {name} | {shown} |")
        lines[-1] += f" {'yes' if t['passed'] else 'NO'} |"
    s = report["seconds"]
    lines.append("\n" + " · ".join(f"{k} {v:.0f} s" for k, v in s.items()))
    return "\n".join(lines)


def _explore(report: dict[str, Any]) -> str:
    """The policy the run served with, e.g. ``epsilon:0.1 (margin 1)`` or ``epsilon:0.1 (margin 1, top 2)``."""
    explore = (report.get("policy") or {}).get("explore")
    if not explore:
        return str(report["plan"].get("explore") or "product default")
    top = f", top {explore['top']}" if explore.get("top") else ""
    return f"{explore['policy']} (margin {explore['margin']:g}{top})"


def _interval(d: dict[str, Any] | None) -> str:
    return "–" if not d or d.get("value") is None else f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def _estimate_and_truth(cycle: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A cycle's off-policy DR difference (candidate − active) and its held-out truth, each None when absent."""
    dr = ((cycle.get("off_policy") or {}).get("difference") or {}).get("dr")
    return (dr if dr and dr.get("value") is not None else None), (cycle.get("truth") or {}).get("difference")


def _cycle_row(cycle: dict[str, Any]) -> str:
    """One training cycle: the gate's decision and estimate beside the truth on the held-out prompts."""
    dr, truth = _estimate_and_truth(cycle)
    inside = "–"
    if dr and truth:
        inside = "yes" if dr["low"] <= truth["value"] <= dr["high"] else "no"
    decision = (cycle.get("gate") or cycle.get("error") or "–").split(":")[0]
    return f"| {cycle['t']} | {cycle['version']} | {decision} | {_interval(dr)} | {_interval(truth)} | {inside} |"


def gate_truth(report_cycles: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How the gate's off-policy DR intervals relate to the truth on the held-out prompts: the share
    that contain the true difference, the held candidates that were in truth better by > 0.01, and
    (``value``) the share of the candidates' own loss intervals that contain their true held-out loss,
    over every judged cycle and over the promoted ones (:func:`value_truth`)."""
    pairs: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []
    for c in report_cycles:
        dr, truth = _estimate_and_truth(c)
        if dr and truth:
            pairs.append((dr, truth, c))
    value = value_truth(report_cycles)
    if not pairs and value is None:
        return None
    covered = [dr["low"] <= truth["value"] <= dr["high"] for dr, truth, _ in pairs]
    missed = [c["t"] for _, truth, c in pairs if not c.get("promoted") and truth["value"] < -0.01]
    out: dict[str, Any] = {"n": len(pairs), "covered": float(np.mean(covered)) if covered else None,
                           "held_but_better_by_0.01": missed}
    if value is not None:
        out["value"] = value
    return out


def value_truth(report_cycles: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The candidate's off-policy DR loss interval against its true loss on the held-out prompts, per cycle.

    Separates the estimator from the gate: ``all`` is the share of every cycle's interval that holds the
    truth (the estimator's calibration), ``promoted`` the share among the candidates the gate promoted
    on the off-policy basis. The gate promotes on these estimates, so the promoted ones are selected for
    a low estimate, and their intervals miss more often than the estimator's calibration says (the
    winner's curse of a decision rule). None without a cycle that has both numbers.
    """
    every, promoted = [], []
    for c in report_cycles:
        estimate = _estimate(c.get("off_policy"))
        loss = (c.get("truth") or {}).get("candidate_loss")
        if estimate is None or loss is None:
            continue
        inside = bool(estimate["low"] <= loss <= estimate["high"])
        every.append(inside)
        if c.get("promoted") and _promoted_off_policy(c.get("gate")):
            promoted.append(inside)
    if not every:
        return None
    return {"n": len(every), "all": float(np.mean(every)), "n_promoted": len(promoted),
            "promoted": float(np.mean(promoted)) if promoted else None}


def plot(report: dict[str, Any], out: Path) -> None:
    """Windowed score over the stream with the baselines and the promotion points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wins = report["windows"]
    x = [w["end"] for w in wins]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(x, [w["score"] for w in wins], "o-", label="thalamus (online)", color="C0", linewidth=2)
    ax.plot(x, [w["best_single"] for w in wins], "--", label="best single (fixed)", color="C1")
    if any("best_remaining" in w for w in wins):
        ax.plot(x, [w.get("best_remaining") for w in wins], ":", label="best remaining single", color="C4")
    if any("offline" in w for w in wins):
        ax.plot(x, [w.get("offline") for w in wins], "-.", label="offline full-information router", color="C2")
    ax.plot(x, [w["oracle"] for w in wins], ":", label="oracle", color="C3")
    for p in report["promotions"]:
        ax.axvline(p["t"], color="grey", alpha=0.4)
    if report["event"]["at"] is not None:
        ax.axvline(report["event"]["at"], color="black", linestyle="--", alpha=0.6,
                   label=f"{report['scenario']}: {report['event']['expert']}")
    ax.set_xlabel("requests served (grey lines: promotions)")
    ax.set_ylabel(f"mean score per window of {report['plan']['window']}")
    ax.set_title(f"thalamus bench loop · {report['scenario']} · {report['plan']['feedback']} feedback")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
