"""Offline routing metrics (pure numpy): hit rate, regret, share of the oracle gap, Pareto front."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def routing_metrics(predicted: np.ndarray, true: np.ndarray, params: np.ndarray | None = None,
                    constraints: np.ndarray | None = None, lambdas: Mapping[str, float] | None = None,
                    best_single: int | None = None) -> dict[str, float]:
    """Metrics on the rows where every expert's true loss is known (lower loss is better).

    ``best_single`` is the index of the best single expert chosen elsewhere (on train); by default
    it is the expert with the lowest mean loss on these rows.
    """
    predicted, true = np.asarray(predicted, dtype=np.float64), np.asarray(true, dtype=np.float64)
    observed = ~np.isnan(true)
    loss_mae = float(np.abs(predicted - true)[observed].mean()) if observed.any() else float("nan")
    complete = observed.all(1)
    pred, truth = predicted[complete], true[complete]
    if len(truth) == 0:
        return {"n_rows": 0, "loss_mae": loss_mae}
    scores = pred
    if constraints is not None and lambdas:
        from router.constraints import objective

        scores = objective(pred, constraints, lambdas)
    chosen = np.argmin(scores, axis=1)
    routed = truth[np.arange(len(truth)), chosen]
    oracle = truth.min(1)
    single = int(np.argmin(truth.mean(0))) if best_single is None else int(best_single)
    best_single_loss = float(truth[:, single].mean())
    routed_loss, oracle_loss = float(routed.mean()), float(oracle.mean())
    gap = best_single_loss - oracle_loss
    result = {
        "n_rows": int(len(truth)),
        "loss_mae": loss_mae,
        "hit_rate": float(np.mean(routed <= oracle + 1e-12)),
        "routed_loss": routed_loss,
        "best_single_loss": best_single_loss,
        "best_single_index": single,
        "oracle_loss": oracle_loss,
        "regret": routed_loss - oracle_loss,
        "gap_captured": float((best_single_loss - routed_loss) / gap) if gap > 1e-12 else 0.0,
    }
    if params is not None:
        sizes = np.asarray(params, dtype=np.float64)
        result["mean_params"] = float(np.nanmean(sizes[chosen])) if np.isfinite(sizes[chosen]).any() else float("nan")
    return result


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated (cost, loss) points — lower is better on both — sorted by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best_loss = [], float("inf")
    for i in order:
        if points[i][1] < best_loss - 1e-12:
            front.append(i)
            best_loss = points[i][1]
    return front


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of (a − b) over paired items and its 95 % percentile-bootstrap interval."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(diff), size=(n, len(diff)))
    means = diff[samples].mean(1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
