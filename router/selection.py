"""Head selection by cross-validation on the training rows, and the calibrated spread of a prediction.

The training job hands this module the pooled embeddings of its own training rows (never the
holdout) and their losses. :func:`select_head` cross-validates every candidate head on K folds of
those rows and scores each by the objective the router serves: the mean true loss of the expert
with the lowest predicted loss (over rows where at least two experts are observed). When there are too
few such rows (bandit feedback: one observed expert per row) it is the squared error in loss units,
**averaged per expert, then over experts** (``expert_mse``): the argmin needs every expert's prediction,
while a plain mean over the observed cells is mostly the greedy expert's error (on a cold ``bench
loop`` home 1,408 of 3,524 cells belonged to one expert, 41 to another). On the three cold homes of
docs/benchmarks.md its rank correlation with the candidates' routed loss on the held-out truth was
+0.78, +0.81, +0.80 against +0.60, +0.64, +0.64 for the plain mean, and in the loop itself the routers
at the end of those three streams captured 0.18, 0.27, 0.54 of the offline router's gain instead of
0.13, −0.05, 0.22 (the served stream was 0.002–0.008 lower: the first cycles learnt slower). The candidates:

* ``ridge``: a linear head fitted in closed form (ridge, α relative to the mean eigenvalue of the
  centred Gram matrix, so the grid does not depend on the encoder's feature scale);
* ``shared`` (opt-in, ``SelectionConfig.shared``): each expert's ridge shrunk toward one weight fitted on
  every observed cell (:meth:`RidgePath.shared`), so what makes a prompt costly for every expert is learnt
  from all rows; served as the linear head;
* ``neighbour``: the mean observed loss of the k most cosine-similar training prompts;
* ``blend``: the average of a ridge and a neighbour prediction;
* ``shrink``: the neighbour mean shrunk toward the ridge prediction, (Σ observed + κ · ridge) /
  (count + κ) over the k neighbours: an expert observed by few neighbours (bandit feedback: most
  experts, on most prompts) leans on the ridge head, one observed by all of them on its neighbours;
* ``mlp``: one hidden GELU layer trained by AdamW (on the pool setting of the best other head);

each over the top p pooled hidden states for every p of the grid. The rule resists noise with the
one-standard-error rule toward the simpler head family (ridge < shared < neighbour < blend < shrink < mlp): the
chosen family is the simplest one with a candidate whose excess over the best candidate is within
``PAIRED_SE`` (2) *paired* standard errors (of the per-row differences of their out-of-fold routed
losses), and inside it the best-scoring candidate. Paired, because every candidate is scored on the
same rows: the spread of fold means (Breiman's one-SE) also holds how hard each fold's prompts are,
which is common to all candidates; on the demo library it let a ridge head 0.02 nats behind the best
neighbour head through (excess 0.0200, fold s.e. 0.0201, paired s.e. 0.0027). Two, not one: the best
is the minimum of dozens of noisy candidates (a winner's curse), and on features that carry no
signal one paired s.e. sometimes kept a lucky complex head.

The spread: the half-width of a nominal ``coverage`` (80 %) interval around each predicted loss,
``scale[e] · max(dispersion, floor[e])``, where the dispersion is the standard deviation of the
losses of the prompt's k nearest training prompts and ``scale`` is the split-conformal quantile of
the out-of-fold residuals divided by their dispersion (normalised conformal prediction).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from router.neighbours import shrunk_mean
from router.selection_config import SelectionConfig

FAMILIES: tuple[str, ...] = ("ridge", "shared", "neighbour", "blend", "shrink", "mlp")
"""Head families from the simplest to the most complex (the one-SE rule prefers the earlier)."""

PAIRED_SE = 2.0
"""A simpler candidate is as good as the best when its excess is within this many paired standard errors."""
MIN_SCORED_ROWS = 20
"""Fewer rows with two or more observed experts than this: candidates are scored by ``expert_mse``."""
SPREAD_FLOOR = 0.1
"""A neighbour dispersion below this share of the expert's median dispersion counts as that share."""


@dataclass(frozen=True)
class Candidate:
    family: str
    pool_layers: int
    alpha: float | None = None  # relative ridge α (ridge, blend; shared: each expert's pull toward the shared weight)
    shared_alpha: float | None = None  # relative ridge α of the weight shared by every expert (shared)
    k: int | None = None  # neighbour k (neighbour, blend, shrink)
    kappa: float | None = None  # shrinkage pseudo-count (shrink)
    hidden: int | None = None  # MLP width

    @property
    def label(self) -> str:
        parts = [self.family, f"p={self.pool_layers}"]
        if self.shared_alpha is not None:
            parts.append(f"αs={self.shared_alpha:g}")
        if self.alpha is not None:
            parts.append(f"α={self.alpha:g}")
        if self.k is not None:
            parts.append(f"k={self.k}")
        if self.kappa is not None:
            parts.append(f"κ={self.kappa:g}")
        if self.hidden is not None:
            parts.append(f"h={self.hidden}")
        return " ".join(parts)


@dataclass
class Selection:
    """The outcome: the chosen head, the CV table, and what the spread needs."""

    chosen: Candidate
    table: list[dict[str, Any]]  # one row per candidate: label, family, params, mean, se, chosen
    objective: str  # "routed_loss", or "expert_mse" (one observed expert per row)
    best: str  # label of the best-scoring candidate
    threshold: float  # best mean + PAIRED_SE × the chosen candidate's paired standard error: the bound it met
    folds: np.ndarray  # (N,) fold of every row (the rows given to select_head, nothing else)
    spread_k: int  # neighbours whose dispersion scales the spread
    spread_scale: np.ndarray  # (E,) conformal factor per expert (NaN = no calibration data)
    spread_floor: np.ndarray  # (E,) smallest dispersion used per expert
    oof_coverage: float | None  # coverage of the calibrated intervals on the out-of-fold predictions
    seconds: float = 0.0
    ridge_alpha: float | None = None  # relative α of the best ridge at the chosen pool setting
    extra: dict[str, Any] = field(default_factory=dict)

    def to_metrics(self) -> dict[str, Any]:
        """JSON-able summary for the version's metrics (``head_selection``)."""
        return {"chosen": asdict(self.chosen) | {"label": self.chosen.label}, "objective": self.objective,
                "best": self.best, "threshold": self.threshold, "folds": int(self.folds.max()) + 1,
                "rows": int(self.folds.size), "table": self.table, "spread_k": self.spread_k,
                "spread_scale": [None if not math.isfinite(v) else float(v) for v in self.spread_scale],
                "oof_coverage": self.oof_coverage, "seconds": round(self.seconds, 3),
                "ridge_alpha": self.ridge_alpha, **self.extra}


# ---- feature helpers ------------------------------------------------------------------------
def top_layers(features: np.ndarray, pool_layers: int, max_pool: int) -> np.ndarray:
    """The columns of the top ``pool_layers`` states out of features pooled over ``max_pool`` states
    (concatenated lowest first, as :meth:`router.model.Router.upper` does)."""
    width = features.shape[1] // max_pool
    return features[:, (max_pool - pool_layers) * width:]


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
    """Seeded fold of each of ``n`` rows (balanced sizes)."""
    folds = min(folds, n)
    return np.random.RandomState(seed).permutation(n) % folds


def normalizer(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-expert mean and std over observed entries (std 1 where undefined)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():  # an expert with no loss yet: an empty column
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(targets, axis=0)
        std = np.nanstd(targets, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
    return mean, std


# ---- ridge -------------------------------------------------------------------------------
class RidgePath:
    """Ridge fits of every column (over its observed rows) for several α, by linear solves.

    Columns observed on the same rows share one Gram matrix. ``gram`` may pass precomputed
    (uncentred XᵀX, Σx, n) per column pattern so cross-validation can subtract a fold instead of
    recomputing (see :func:`select_head`). α is relative to the mean eigenvalue of the centred Gram
    matrix (its trace / D).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray,
                 grams: dict[bytes, tuple[np.ndarray, np.ndarray, int]] | None = None) -> None:
        self.x = np.asarray(x, dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64)
        self.groups: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        seen = ~np.isnan(self.y)
        for key, cols in column_patterns(seen).items():
            rows = seen[:, cols[0]]
            xs = self.x[rows]
            if grams is not None and key in grams:
                square, total, n = grams[key]
            else:
                square, total, n = xs.T @ xs, xs.sum(axis=0), int(rows.sum())
            x_mean = total / n
            centred = square - n * np.outer(x_mean, x_mean)
            ys = self.y[rows][:, cols]
            y_mean = ys.mean(axis=0)
            rhs = xs.T @ (ys - y_mean)  # = centred xᵀ (y − ȳ), since Σ(y − ȳ) = 0
            self.groups.append((np.array(cols), x_mean, y_mean, centred, rhs))
        traces = [float(np.trace(g[3])) / max(g[3].shape[0], 1) for g in self.groups]
        self.mean_eig = float(np.mean(traces)) if traces else 1.0

    def absolute(self, relative_alpha: float) -> float:
        return relative_alpha * max(self.mean_eig, 1e-12)

    def _weights(self, centred: np.ndarray, rhs: np.ndarray, relative_alpha: float) -> np.ndarray:
        system = centred + self.absolute(relative_alpha) * np.eye(centred.shape[0])
        return np.asarray(np.linalg.solve(system, rhs))

    def predict(self, x_test: np.ndarray, relative_alphas: Sequence[float]) -> list[np.ndarray]:
        """Predictions (N_test, E) for each α; an unobserved column predicts 0 (the normalised mean)."""
        x_test = np.asarray(x_test, dtype=np.float64)
        outs = [np.zeros((x_test.shape[0], self.y.shape[1])) for _ in relative_alphas]
        for cols, x_mean, y_mean, centred, rhs in self.groups:
            shifted = x_test - x_mean
            for out, rel in zip(outs, relative_alphas, strict=True):
                out[:, cols] = shifted @ self._weights(centred, rhs, rel) + y_mean
        return outs

    def shared(self, pairs: Sequence[tuple[float, float]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Ridge toward a shared weight: (weight (E, D), bias (E,)) per (α_shared, α) pair.

        First one weight ``w`` for every expert, fitted on every observed cell with a per-expert
        intercept (ridge at α_shared relative to the mean eigenvalue of the pooled Gram matrix); then each
        expert's own ridge at α shrunk toward ``w`` instead of toward 0: weight_e = w + v_e with
        v_e = argmin ‖y_e − X̃_e (w + v_e)‖² + α ‖v_e‖². The pooled fit sees every row, so the part of the
        loss all experts share (how hard the prompt is) is learnt from all the feedback, not again from each
        expert's few rows; α → ∞ gives the shared weight with per-expert offsets, α → 0 each expert's own fit.
        """
        dims = self.x.shape[1]
        pooled = sum((len(cols) * centred for cols, _, _, centred, _ in self.groups), np.zeros((dims, dims)))
        target = sum((rhs.sum(axis=1) for *_, rhs in self.groups), np.zeros(dims))
        pooled_eig = max(float(np.trace(pooled)) / max(dims, 1), 1e-12)
        shared_alphas = sorted({a for a, _ in pairs})
        shared = {a: np.linalg.solve(pooled + a * pooled_eig * np.eye(dims), target) for a in shared_alphas}
        stacked = np.stack([shared[a] for a in shared_alphas], axis=1)  # (D, S)
        out = {pair: (np.zeros((self.y.shape[1], dims)), np.zeros(self.y.shape[1])) for pair in pairs}
        alphas = sorted({a for _, a in pairs})
        for cols, x_mean, y_mean, centred, rhs in self.groups:
            pulled = centred @ stacked  # the shared fit's part of each expert's normal equations
            for alpha in alphas:
                solved = self._weights(centred, np.concatenate([rhs, pulled], axis=1), alpha)
                own, toward = solved[:, :len(cols)], solved[:, len(cols):]
                for s, shared_alpha in enumerate(shared_alphas):
                    if (shared_alpha, alpha) not in out:
                        continue
                    w = own - toward[:, [s]] + shared[shared_alpha][:, None]  # (D, |cols|)
                    weight, bias = out[(shared_alpha, alpha)]
                    weight[cols] = w.T
                    bias[cols] = y_mean - x_mean @ w
        return [out[pair] for pair in pairs]

    def solution(self, relative_alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """(weight (E, D), bias (E,)) so that prediction = x @ weight.T + bias."""
        weight = np.zeros((self.y.shape[1], self.x.shape[1]))
        bias = np.zeros(self.y.shape[1])
        for cols, x_mean, y_mean, centred, rhs in self.groups:
            w = self._weights(centred, rhs, relative_alpha)  # (D, |cols|)
            weight[cols] = w.T
            bias[cols] = y_mean - x_mean @ w
        return weight, bias


def column_patterns(seen: np.ndarray) -> dict[bytes, list[int]]:
    """Columns grouped by the rows they are observed on (columns never observed are left out)."""
    patterns: dict[bytes, list[int]] = {}
    for j in range(seen.shape[1]):
        if seen[:, j].any():
            patterns.setdefault(np.packbits(seen[:, j]).tobytes(), []).append(j)
    return patterns


# ---- neighbours ----------------------------------------------------------------------------
def unit_rows(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x).float()
    return t / t.norm(dim=1, keepdim=True).clamp(min=1e-12)


def neighbour_stats(query: torch.Tensor, keys: torch.Tensor, losses: torch.Tensor,
                    ks: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each k: (mean, std) of the observed losses of the k most cosine-similar keys, (B, E) each.

    ``query`` rows need not be unit-norm; ``keys`` must be. NaN where none of the k observed an expert
    (the std is 0 where exactly one did).
    """
    return [(mean, std) for mean, std, _ in neighbour_moments(query, keys, losses, ks)]


def neighbour_moments(query: torch.Tensor, keys: torch.Tensor, losses: torch.Tensor,
                      ks: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`neighbour_stats` with the count of observed losses: (mean, std, count) per k."""
    n = keys.shape[0]
    k_max = max(1, min(max(int(k) for k in ks), n))
    nearest = (unit_rows(query) @ keys.float().T).topk(k_max, dim=1, sorted=True).indices
    values = losses.float()[nearest]  # (B, k_max, E)
    seen = ~torch.isnan(values)
    filled = torch.where(seen, values, torch.zeros_like(values))
    total, squares, count = filled.cumsum(1), (filled ** 2).cumsum(1), seen.float().cumsum(1)
    out = []
    for k in ks:
        i = max(1, min(int(k), n)) - 1
        c = count[:, i]
        mean = torch.where(c > 0, total[:, i] / c.clamp(min=1), torch.full_like(c, float("nan")))
        var = (squares[:, i] / c.clamp(min=1) - torch.nan_to_num(mean) ** 2).clamp(min=0)
        out.append((mean, torch.where(c > 0, var.sqrt(), torch.full_like(c, float("nan"))), c))
    return out


# ---- MLP -----------------------------------------------------------------------------------
def fit_mlp(x: np.ndarray, y: np.ndarray, hidden: int, epochs: int, seed: int,
            ) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    """One-hidden-layer GELU MLP on (x, normalised y with NaN), masked MSE, AdamW; the input
    standardisation is folded into the first layer, so the result takes raw features.

    Runs on one thread: its many small steps gain nothing from intra-op threads, and on a shared
    CPU the threads' synchronisation made it ~80× slower (measured: 18 s vs 0.2 s)."""
    with single_threaded():
        return _fit_mlp(x, y, hidden, epochs, seed)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch and the BLAS numpy uses on one thread: selection is many small operations, and on a
    shared CPU the threads' synchronisation cost more than they gained (measured on the dev box:
    an MLP fit 18 s on two threads vs 0.2 s on one; the whole CV on dcrouter's quick slice 168 s vs 8 s)."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


def _fit_mlp(x: np.ndarray, y: np.ndarray, hidden: int, epochs: int, seed: int,
             ) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        xt = torch.as_tensor(x, dtype=torch.float32)
        mu, sd = xt.mean(0), xt.std(0) + 1e-6
        xs = (xt - mu) / sd
        yt = torch.as_tensor(y, dtype=torch.float32)
        seen = ~torch.isnan(yt)
        yt = torch.nan_to_num(yt)
        first, last = torch.nn.Linear(xs.shape[1], hidden), torch.nn.Linear(hidden, yt.shape[1])
        dropout = torch.nn.Dropout(0.1)
        parameters = [*first.parameters(), *last.parameters()]
        optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=1e-2)
        for _ in range(epochs):
            order = torch.randperm(xs.shape[0], generator=generator)
            for start in range(0, xs.shape[0], 128):
                i = order[start:start + 128]
                err = (last(dropout(torch.nn.functional.gelu(first(xs[i])))) - yt[i]) ** 2
                loss = (err * seen[i]).sum() / seen[i].sum().clamp(min=1)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():  # fold the standardisation into the first layer
            first.weight.div_(sd[None, :])
            first.bias.sub_(first.weight @ mu)
    return first, last


def mlp_apply(first: torch.nn.Linear, last: torch.nn.Linear, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = last(torch.nn.functional.gelu(first(torch.as_tensor(x, dtype=torch.float32))))
    return out.double().numpy()


# ---- scoring --------------------------------------------------------------------------------
def routed_row_losses(predicted: np.ndarray, true: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """True loss of the argmin of the prediction among each row's observed experts (``rows`` only)."""
    pred, tru = predicted[rows], true[rows]
    masked = np.where(np.isnan(tru), np.inf, np.nan_to_num(pred, nan=np.inf))
    chosen = masked.argmin(axis=1)
    return tru[np.arange(len(rows)), chosen]


def expert_balanced_weights(y: np.ndarray) -> np.ndarray:
    """(E,) weight of an observed cell of each expert so that the mean over the rows with an observation
    of Σ weight · error equals the mean over observed experts of each expert's mean error."""
    seen = ~np.isnan(y)
    counts = seen.sum(axis=0)
    observed = max(int((counts > 0).sum()), 1)
    rows = max(int(seen.any(axis=1).sum()), 1)
    return np.where(counts > 0, rows / (observed * np.maximum(counts, 1)), 0.0)


def conformal_quantile(values: np.ndarray, coverage: float) -> float:
    """The split-conformal quantile: the ⌈(n+1)·coverage⌉-th smallest of n values (inf when n is too small)."""
    values = np.sort(values[np.isfinite(values)])
    n = values.size
    rank = math.ceil((n + 1) * coverage)
    return float(values[rank - 1]) if 0 < rank <= n else math.inf


def calibrate(true: np.ndarray, predicted: np.ndarray, dispersion: np.ndarray, coverage: float,
              ) -> tuple[np.ndarray, np.ndarray]:
    """(scale (E,), floor (E,)) so that |true − predicted| ≤ scale · max(dispersion, floor) holds for
    a share ``coverage`` of the observed entries of each expert (normalised split conformal)."""
    experts = true.shape[1]
    scale, floor = np.full(experts, np.nan), np.full(experts, np.nan)
    for e in range(experts):
        ok = ~np.isnan(true[:, e]) & ~np.isnan(predicted[:, e]) & ~np.isnan(dispersion[:, e])
        if not ok.any():
            continue
        d = dispersion[ok, e]
        positive = d[d > 0]
        base = float(np.median(positive)) if positive.size else float(np.std(true[ok, e])) or 1.0
        floor[e] = max(SPREAD_FLOOR * base, 1e-6)
        ratio = np.abs(true[ok, e] - predicted[ok, e]) / np.maximum(d, floor[e])
        q = conformal_quantile(ratio, coverage)
        scale[e] = q if math.isfinite(q) else float(np.max(ratio))
    return scale, floor


def coverage_of(true: np.ndarray, predicted: np.ndarray, spread: np.ndarray) -> float | None:
    """Share of observed entries with |true − predicted| ≤ spread (entries with a known spread)."""
    ok = ~np.isnan(true) & ~np.isnan(predicted) & np.isfinite(spread)
    if not ok.any():
        return None
    return float(np.mean(np.abs(true[ok] - predicted[ok]) <= spread[ok] + 1e-12))


# ---- selection --------------------------------------------------------------------------
def candidates(config: SelectionConfig, dims: int) -> list[Candidate]:
    """Every non-MLP candidate of the grid (pool settings above ``dims`` states are skipped)."""
    out: list[Candidate] = []
    for p in sorted(set(config.pool_layers)):
        if p > dims:
            continue
        out += [Candidate("ridge", p, alpha=a) for a in config.alphas]
        if config.shared:
            out += [Candidate("shared", p, alpha=a, shared_alpha=s) for s in config.alphas for a in config.alphas]
        out += [Candidate("neighbour", p, k=k) for k in config.neighbors]
        if config.blend:
            out += [Candidate("blend", p, alpha=a, k=k) for a in config.alphas for k in config.neighbors]
        out += [Candidate("shrink", p, alpha=a, k=k, kappa=kappa) for a in config.alphas for k in config.neighbors
                for kappa in config.shrinks]
    return out


def fit_candidates(x_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray, cands: Sequence[Candidate],
                   alphas: Sequence[float], ks: Sequence[int],
                   grams: dict[bytes, tuple[np.ndarray, np.ndarray, int]] | None = None,
                   ) -> tuple[dict[Candidate, np.ndarray], dict[int, np.ndarray]]:
    """Every non-MLP candidate in ``cands`` fitted on (``x_train``, ``y_train``) and applied to ``x_query``
    (features of one pool setting; losses with NaN where unobserved), (Q, E) each; and per k the
    dispersion of the k nearest training losses. A neighbour mean that no neighbour observed falls
    back to the expert's mean loss. ``grams``: precomputed Gram blocks for :class:`RidgePath`."""
    mean, std = normalizer(y_train)
    path = RidgePath(x_train, (y_train - mean) / std, grams=grams)
    ridge = {a: v * std + mean for a, v in zip(alphas, path.predict(x_query, alphas), strict=True)}
    pairs = [(float(c.shared_alpha or 0.0), float(c.alpha or 0.0)) for c in cands if c.family == "shared"]
    shared = {pair: (np.asarray(x_query, dtype=np.float64) @ weight.T + bias) * std + mean
              for pair, (weight, bias) in zip(pairs, path.shared(pairs) if pairs else [], strict=True)}
    moments = neighbour_moments(torch.as_tensor(x_query), unit_rows(x_train), torch.as_tensor(y_train), ks)
    near, counts, dispersion = {}, {}, {}
    for k, (m, spread, count) in zip(ks, moments, strict=True):
        value = m.double().numpy()
        near[k] = np.where(np.isnan(value), mean, value)  # no neighbour observed it: the mean
        counts[k] = count.double().numpy()
        dispersion[k] = spread.double().numpy()
    out: dict[Candidate, np.ndarray] = {}
    for c in cands:
        if c.family == "ridge":
            out[c] = ridge[float(c.alpha or 0.0)]
        elif c.family == "shared":
            out[c] = shared[(float(c.shared_alpha or 0.0), float(c.alpha or 0.0))]
        elif c.family == "neighbour":
            out[c] = near[int(c.k or 0)]
        elif c.family == "shrink":
            k = int(c.k or 0)
            out[c] = shrunk_mean(near[k] * counts[k], counts[k], ridge[float(c.alpha or 0.0)], float(c.kappa or 0.0))
        elif c.family == "blend":
            out[c] = 0.5 * ridge[float(c.alpha or 0.0)] + 0.5 * near[int(c.k or 0)]
        else:
            raise ValueError(f"fit_candidates fits no {c.family!r} head")
    return out, dispersion


def select_head(features: np.ndarray, targets: np.ndarray, config: SelectionConfig,
                max_pool: int | None = None) -> Selection:
    """Cross-validate every candidate on these rows and choose by the one-SE rule (module docstring).

    ``features``: (N, max_pool · H) pooled embeddings of the training rows, ``targets``: (N, E)
    losses in original units with NaN for unobserved entries. Only these rows are read.
    """
    with single_threaded():
        return _select_head(features, targets, config, max_pool)


def _select_head(features: np.ndarray, targets: np.ndarray, config: SelectionConfig,
                 max_pool: int | None) -> Selection:
    started = time.perf_counter()
    config.validate()
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"features {x.shape} and targets {y.shape} must be (N, D) and (N, E)")
    n = y.shape[0]
    if n < 2 * config.folds:
        raise ValueError(f"head selection needs at least {2 * config.folds} rows for {config.folds} folds, got {n}")
    max_pool = max_pool or config.max_pool
    folds = fold_ids(n, config.folds, config.seed)
    k_folds = int(folds.max()) + 1
    pool_settings = sorted(p for p in set(config.pool_layers) if p <= max_pool)
    cands = candidates(config, max_pool)
    oof = {c: np.full(y.shape, np.nan) for c in cands}
    ks = sorted(set(config.neighbors))
    dispersion = {(p, k): np.full(y.shape, np.nan) for p in pool_settings for k in ks}
    for f in range(k_folds):
        tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        # One Gram matrix per fold (and column pattern) over every pooled state; fewer states are a sub-block.
        x_tr, seen_tr = x[tr], ~np.isnan(y[tr])
        grams = {key: (x_tr[seen].T @ x_tr[seen], x_tr[seen].sum(axis=0), int(seen.sum()))
                 for key, cols in column_patterns(seen_tr).items()
                 for seen in [seen_tr[:, cols[0]]]}
        width = x.shape[1] // max_pool
        for p in pool_settings:
            xp = top_layers(x, p, max_pool)
            cut = (max_pool - p) * width
            sub = {key: (square[cut:, cut:], total[cut:], count) for key, (square, total, count) in grams.items()}
            predicted, spread_of = fit_candidates(xp[tr], y[tr], xp[te], [c for c in cands if c.pool_layers == p],
                                                  config.alphas, ks, grams=sub)
            for c, value in predicted.items():
                oof[c][te] = value
            for k, value in spread_of.items():
                dispersion[(p, k)][te] = value
    observed = ~np.isnan(y)
    scored = np.flatnonzero(observed.sum(axis=1) >= 2)
    objective = "routed_loss" if scored.size >= MIN_SCORED_ROWS else "expert_mse"
    # expert_mse: the rows with an observation and the cells' weights are the same for every candidate.
    kept = observed.any(axis=1)
    observed_kept, y_kept, folds_kept = observed[kept], y[kept], folds[kept]
    weight = expert_balanced_weights(y)

    def row_losses(pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(per-row value, fold of that row) of the CV objective."""
        if objective == "routed_loss":
            return routed_row_losses(pred, y, scored), folds[scored]
        return np.where(observed_kept, (pred[kept] - y_kept) ** 2 * weight, 0.0).sum(axis=1), folds_kept

    def summary(pred: np.ndarray) -> tuple[float, float]:
        values, fold_of = row_losses(pred)
        means = np.array([values[fold_of == f].mean() for f in range(k_folds) if (fold_of == f).any()])
        se = float(means.std(ddof=1) / math.sqrt(means.size)) if means.size > 1 else 0.0
        return float(values.mean()), se

    results = {c: summary(oof[c]) for c in cands}
    if config.mlp_hidden > 0:
        p_best = min(results, key=lambda c: results[c][0]).pool_layers
        mlp = Candidate("mlp", p_best, hidden=config.mlp_hidden)
        pred = np.full(y.shape, np.nan)
        xp = top_layers(x, p_best, max_pool)
        for f in range(k_folds):
            tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
            mean, std = normalizer(y[tr])
            first, last = fit_mlp(xp[tr], (y[tr] - mean) / std, config.mlp_hidden, config.mlp_epochs,
                                  config.seed + f)
            pred[te] = mlp_apply(first, last, xp[te]) * std + mean
        oof[mlp] = pred
        results[mlp] = summary(pred)
    best = min(results, key=lambda c: (results[c][0], FAMILIES.index(c.family)))
    best_rows, _ = row_losses(oof[best])

    def excess(c: Candidate) -> tuple[float, float]:
        diff = row_losses(oof[c])[0] - best_rows
        return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(max(diff.size, 1))) if diff.size > 1 else 0.0

    gaps = {c: excess(c) for c in results}
    chosen = best
    for family in FAMILIES:
        within = [c for c in results if c.family == family and gaps[c][0] <= PAIRED_SE * gaps[c][1] + 1e-12]
        if within:
            chosen = min(within, key=lambda c: results[c][0])
            break
    threshold = results[best][0] + PAIRED_SE * gaps[chosen][1]
    # The spread: dispersion of the chosen head's own k, else of the best neighbour k at its pool setting.
    neighbour_scores = {int(c.k or 0): results[c][0] for c in results if c.family == "neighbour"
                        and c.pool_layers == chosen.pool_layers}
    spread_k = int(chosen.k) if chosen.k is not None else min(neighbour_scores, key=lambda k: neighbour_scores[k])
    disp = dispersion[(chosen.pool_layers, spread_k)]
    scale, floor = calibrate(y, oof[chosen], disp, config.coverage)
    spread = scale[None, :] * np.maximum(disp, floor[None, :])
    ridge_scores = {float(c.alpha or 0.0): results[c][0] for c in results if c.family == "ridge"
                    and c.pool_layers == chosen.pool_layers}
    ridge_alpha = chosen.alpha if chosen.alpha is not None else min(ridge_scores, key=lambda a: ridge_scores[a])
    table = []
    for c in sorted(results, key=lambda c: results[c][0]):
        gap, gap_se = gaps[c]
        table.append({"label": c.label, **{k: v for k, v in asdict(c).items() if v is not None},
                      "mean": round(results[c][0], 6), "se": round(results[c][1], 6),
                      "vs_best": round(gap, 6), "vs_best_se": round(gap_se, 6), "chosen": c == chosen})
    return Selection(chosen=chosen, table=table, objective=objective, best=best.label, threshold=threshold,
                     folds=folds, spread_k=spread_k, spread_scale=scale, spread_floor=floor,
                     oof_coverage=coverage_of(y, oof[chosen], spread), seconds=time.perf_counter() - started,
                     ridge_alpha=ridge_alpha)


def format_table(selection: dict[str, Any], limit: int = 12) -> str:
    """The CV table of a version's ``head_selection`` metrics as text (best first, chosen marked)."""
    lines = [f"head selection: {selection.get('chosen', {}).get('label')} "
             f"({selection.get('folds')}-fold CV on {selection.get('rows')} training rows, "
             f"objective {selection.get('objective')} (lower is better), best {selection.get('best')}, "
             f"bound {selection.get('threshold', float('nan')):.4f} (best + 2 paired s.e. of the chosen), "
             f"{selection.get('seconds', 0):.1f}s)",
             "| candidate | CV mean | s.e. over folds | excess over best ± paired s.e. | |", "|---|---|---|---|---|"]
    table = list(selection.get("table") or [])
    shown = table[:limit] + [r for r in table[limit:] if r.get("chosen")]
    for row in shown:
        mark = "chosen" if row.get("chosen") else ""
        gap = f"{row['vs_best']:+.4f} ± {row['vs_best_se']:.4f}" if "vs_best" in row else "–"
        lines.append(f"| {row['label']} | {row['mean']:.4f} | {row['se']:.4f} | {gap} | {mark} |")
    if len(table) > len(shown):
        lines.append(f"({len(table) - len(shown)} more candidates)")
    return "\n".join(lines)


def intervals_overlap(predicted: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """(N,) True where the interval of the expert with the lowest predicted loss overlaps the
    interval of the runner-up: the router cannot tell them apart at the calibrated coverage. An
    input for an exploration policy (explore where it is True); False where a spread is unknown."""
    predicted = np.asarray(predicted, dtype=np.float64)
    spread = np.asarray(spread, dtype=np.float64)
    if predicted.shape[1] < 2:
        return np.zeros(predicted.shape[0], dtype=bool)
    order = np.argsort(predicted, axis=1)
    rows = np.arange(predicted.shape[0])
    first, second = order[:, 0], order[:, 1]
    gap = predicted[rows, second] - predicted[rows, first]
    reach = spread[rows, first] + spread[rows, second]
    return np.where(np.isfinite(reach), gap <= reach, False)
