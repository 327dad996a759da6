"""Offline routing metrics (pure numpy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from router.constraints import objective


def routing_metrics(predicted: np.ndarray, true: np.ndarray, params: np.ndarray | None = None,
                    constraints: np.ndarray | None = None, lambdas: Mapping[str, float] | None = None,
                    best_single: int | None = None) -> dict[str, float]:
    """Quality of routing by ``predicted`` (N, E) against ``true`` (N, E) losses (NaN = unknown).

    loss_mae is over every observed entry; everything else is over the rows where every
    expert's true loss is known (``n_rows`` of them). The route is argmin of the prediction,
    plus the λ-weighted constraints when both ``constraints`` and ``lambdas`` are given.
    hit_rate counts ties with the best true loss as hits. best_single is the expert with the
    lowest mean loss on these rows unless an index (chosen on training data) is given.
    gap_captured = (best_single − routed) / (best_single − oracle); when best_single already
    equals the oracle it is 1.0 if routing matches it too, else 0.0 (no NaN: metrics go to JSON).
    mean_params (with ``params``; NaN params ignored) is the mean size of chosen experts.
    All values are plain floats.
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if predicted.shape != true.shape or predicted.ndim != 2:
        raise ValueError(f"predicted {predicted.shape} and true {true.shape} must be equal (N, E) shapes")
    out: dict[str, float] = {}
    observed = ~np.isnan(true)
    if observed.any():
        out["loss_mae"] = float(np.abs(predicted[observed] - true[observed]).mean())
    complete = observed.all(axis=1)
    out["n_rows"] = float(complete.sum())
    if not complete.any():
        return out
    pred, tru = predicted[complete], true[complete]
    if constraints is not None and lambdas is not None:
        scores = objective(pred, constraints, lambdas)
    else:
        scores = pred
    chosen = np.argmin(scores, axis=1)
    rows = np.arange(tru.shape[0])
    routed = tru[rows, chosen]
    best = tru.min(axis=1)
    single = int(best_single) if best_single is not None else int(np.argmin(tru.mean(axis=0)))
    if not 0 <= single < tru.shape[1]:
        raise ValueError(f"best_single index {single} is out of range for {tru.shape[1]} experts")
    routed_loss, oracle_loss, single_loss = float(routed.mean()), float(best.mean()), float(tru[:, single].mean())
    out["hit_rate"] = float(np.mean(routed <= best + 1e-12))
    out["routed_loss"] = routed_loss
    out["best_single_loss"] = single_loss
    out["oracle_loss"] = oracle_loss
    out["regret"] = routed_loss - oracle_loss
    gap = single_loss - oracle_loss
    if gap > 1e-12:
        out["gap_captured"] = (single_loss - routed_loss) / gap
    else:
        out["gap_captured"] = 1.0 if routed_loss <= oracle_loss + 1e-12 else 0.0
    if params is not None:
        sizes = np.asarray(params, dtype=np.float64)
        if sizes.shape != (tru.shape[1],):
            raise ValueError(f"params must have shape ({tru.shape[1]},), got {sizes.shape}")
        picked = sizes[chosen]
        if not np.isnan(picked).all():
            out["mean_params"] = float(np.nanmean(picked))
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated (cost, loss) points — lower is better on both — sorted by
    cost (then loss). Identical points do not dominate each other; both are kept."""
    pts = [(float(c), float(loss)) for c, loss in points]
    keep = []
    for i, (c, loss) in enumerate(pts):
        dominated = any(c2 <= c and l2 <= loss and (c2 < c or l2 < loss) for j, (c2, l2) in enumerate(pts) if j != i)
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: (pts[i][0], pts[i][1], i))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of (a − b) over paired samples and its 95 % percentile-bootstrap interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"a and b must be non-empty 1-D arrays of equal length, got {a.shape} and {b.shape}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n, diff.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)
