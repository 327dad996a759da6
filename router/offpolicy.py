"""Off-policy estimates of a routing policy's expected LOSS from logged, partially observed traffic.

Every logged request is one row: the expert that served it (the *action*), the probability the
logging policy gave that action (its *propensity*), and the loss observed for it. A *target*
policy is an (n, E) matrix whose row i is its distribution over the E experts for request i (a
greedy router is one-hot: :func:`greedy`). Lower is better everywhere in this module.

* IPS   = 1/n Σ w_i ℓ_i,                 w_i = π(a_i | x_i) / p_i
* SNIPS = Σ w_i ℓ_i / Σ w_i              (self-normalised; undefined when every w_i = 0)
* DR    = 1/n Σ [Σ_e π(e | x_i) q(x_i, e) + w_i (ℓ_i − q(x_i, a_i))]
* ESS   = (Σ w_i)² / Σ w_i²              (how many rows the estimate effectively rests on)

q is a direct model of the loss. It must not have seen row i's loss when it scores row i (else
the correction term ℓ_i − q(x_i, a_i) shrinks toward 0 and DR inherits q's bias): :func:`cross_fit`
fits it on the other folds only. Each estimate is a ratio Σ num / Σ den of per-row terms, so one
percentile bootstrap over rows (:func:`compare`) gives the intervals of both policies *and* of
their paired difference from the same resamples.

Pure numpy (no torch, no database), so it can be checked by hand: see tests/router/test_offpolicy.py.
Open Bandit Pipeline (``obp``) has these estimators but requires Python < 3.11 and pins torch 1.12,
so it cannot be installed next to this project (docs/architecture.md, issue 9).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from router.hashing import Salt, stable_fraction

ESTIMATORS: tuple[str, ...] = ("ips", "snips", "dr")
RIDGE_ALPHAS: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
"""Penalties tried per expert by the direct model; leave-one-out error picks one (closed form)."""

Fit = Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]
"""``fit(train_rows)`` returns ``score(rows) -> (len(rows), E)`` predicted losses."""


@dataclass(frozen=True)
class Logged:
    """The logged rows: observed loss of the served action, the action's index and its propensity."""

    losses: np.ndarray  # (n,) float
    actions: np.ndarray  # (n,) int in [0, n_actions)
    propensities: np.ndarray  # (n,) in (0, 1]
    n_actions: int

    def __post_init__(self) -> None:
        losses = np.asarray(self.losses, dtype=np.float64)
        actions = np.asarray(self.actions, dtype=np.int64)
        propensities = np.asarray(self.propensities, dtype=np.float64)
        n = losses.shape[0] if losses.ndim == 1 else -1
        if n < 0 or actions.shape != (n,) or propensities.shape != (n,):
            raise ValueError(f"losses, actions and propensities must be 1-D of one length, got "
                             f"{np.shape(self.losses)}, {np.shape(self.actions)}, {np.shape(self.propensities)}")
        if not np.all(np.isfinite(losses)):
            raise ValueError("every logged loss must be finite")
        if n and (actions.min() < 0 or actions.max() >= self.n_actions):
            raise ValueError(f"actions must lie in [0, {self.n_actions})")
        if n and not np.all((propensities > 0) & (propensities <= 1)):
            raise ValueError("propensities must lie in (0, 1]")
        object.__setattr__(self, "losses", losses)
        object.__setattr__(self, "actions", actions)
        object.__setattr__(self, "propensities", propensities)

    def __len__(self) -> int:
        return int(self.losses.shape[0])

    def check(self, matrix: np.ndarray, what: str) -> np.ndarray:
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.shape != (len(self), self.n_actions):
            raise ValueError(f"{what} must have shape ({len(self)}, {self.n_actions}), got {matrix.shape}")
        return matrix


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval (``None`` where undefined, e.g. SNIPS with Σw = 0)."""

    value: float | None
    low: float | None
    high: float | None

    def as_dict(self) -> dict[str, float | None]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class PolicyEstimate:
    """One policy's estimates, its effective sample size and the share of its mass the logging policy covered."""

    estimates: dict[str, Interval]
    ess: float
    support: float

    def as_dict(self) -> dict[str, object]:
        return {**{name: self.estimates[name].as_dict() for name in ESTIMATORS}, "ess": self.ess,
                "support": self.support}


@dataclass(frozen=True)
class Comparison:
    """Candidate and active estimates and the paired difference candidate − active, per estimator."""

    candidate: PolicyEstimate
    active: PolicyEstimate
    difference: dict[str, Interval]
    n_rows: int

    def as_dict(self) -> dict[str, object]:
        return {"n_rows": self.n_rows, "candidate": self.candidate.as_dict(), "active": self.active.as_dict(),
                "difference": {name: self.difference[name].as_dict() for name in ESTIMATORS}}


# ---- the estimators --------------------------------------------------------------------------

def importance_weights(logged: Logged, target: np.ndarray) -> np.ndarray:
    """w_i = π(a_i | x_i) / p_i."""
    target = logged.check(target, "target")
    return target[np.arange(len(logged)), logged.actions] / logged.propensities


def effective_sample_size(weights: np.ndarray) -> float:
    """(Σw)² / Σw²; 0 when every weight is 0."""
    w = np.asarray(weights, dtype=np.float64)
    square = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / square if square > 0 else 0.0


def terms(logged: Logged, target: np.ndarray, direct: np.ndarray | None,
          estimator: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (numerator, denominator): the estimate is Σ num / Σ den, and so is each bootstrap replicate."""
    w = importance_weights(logged, target)
    ones = np.ones(len(logged))
    if estimator == "ips":
        return w * logged.losses, ones
    if estimator == "snips":
        return w * logged.losses, w
    if estimator == "dr":
        if direct is None:
            raise ValueError("the doubly robust estimate needs a direct model's predictions")
        q = logged.check(direct, "direct")
        target = logged.check(target, "target")
        baseline = np.sum(target * q, axis=1)
        return baseline + w * (logged.losses - q[np.arange(len(logged)), logged.actions]), ones
    raise ValueError(f"unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")


def _ratio(num: np.ndarray, den: np.ndarray) -> float | None:
    total = float(np.sum(den))
    return float(np.sum(num)) / total if total > 0 else None


def ips(logged: Logged, target: np.ndarray) -> float | None:
    return _ratio(*terms(logged, target, None, "ips"))


def snips(logged: Logged, target: np.ndarray) -> float | None:
    return _ratio(*terms(logged, target, None, "snips"))


def doubly_robust(logged: Logged, target: np.ndarray, direct: np.ndarray) -> float | None:
    return _ratio(*terms(logged, target, direct, "dr"))


def support(logged_probs: np.ndarray, target: np.ndarray) -> float:
    """Mean over rows of the target's mass on actions the logging policy could take (probability > 0).

    Below 1, part of the target is unobservable from these logs: IPS counts it as loss 0 (optimistic
    for losses), SNIPS ignores it, DR replaces it by the direct model.
    """
    logged_probs, target = np.asarray(logged_probs, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if logged_probs.shape != target.shape:
        raise ValueError(f"logging and target distributions differ in shape: {logged_probs.shape}, {target.shape}")
    if target.shape[0] == 0:
        return 0.0
    return float(np.mean(np.sum(np.where(logged_probs > 0, target, 0.0), axis=1)))


# ---- bootstrap -------------------------------------------------------------------------------

def bootstrap_replicates(parts: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int = 1000, seed: int = 0,
                         max_cells: int = 2_000_000) -> np.ndarray:
    """(len(parts), n_boot) replicates Σ num[idx] / Σ den[idx], every part resampled with the SAME rows idx.

    NaN where a replicate's Σ den is 0. Resampling is done in chunks of at most ``max_cells`` indices.
    """
    if not parts:
        return np.zeros((0, n_boot))
    n = parts[0][0].shape[0]
    if n == 0 or n_boot < 1:
        return np.full((len(parts), max(n_boot, 0)), np.nan)
    rng = np.random.default_rng(seed)
    out = np.empty((len(parts), n_boot))
    chunk = max(1, max_cells // n)
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        for j, (num, den) in enumerate(parts):
            top, bottom = num[idx].sum(axis=1), den[idx].sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[j, start:start + idx.shape[0]] = np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1), np.nan)
    return out


def percentile_interval(value: float | None, replicates: np.ndarray, confidence: float = 0.95) -> Interval:
    """``value`` with the percentile interval of the finite replicates (None when there is none)."""
    finite = replicates[np.isfinite(replicates)]
    if value is None or finite.size == 0:
        return Interval(value, None, None)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(float(value), float(low), float(high))


def estimate(logged: Logged, target: np.ndarray, direct: np.ndarray | None = None, *,
             logged_probs: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
             confidence: float = 0.95) -> PolicyEstimate:
    """IPS, SNIPS and (with ``direct``) DR of one policy, each with its bootstrap interval."""
    names = [name for name in ESTIMATORS if name != "dr" or direct is not None]
    parts = [terms(logged, target, direct, name) for name in names]
    replicates = bootstrap_replicates(parts, n_boot, seed)
    estimates = {name: percentile_interval(_ratio(*part), replicates[j], confidence)
                 for j, (name, part) in enumerate(zip(names, parts, strict=True))}
    estimates.setdefault("dr", Interval(None, None, None))
    probs = logged_probs if logged_probs is not None else _served_only(logged)
    return PolicyEstimate(estimates, effective_sample_size(importance_weights(logged, target)),
                          support(probs, target))


def compare(logged: Logged, candidate: np.ndarray, active: np.ndarray, direct: np.ndarray, *,
            logged_probs: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
            confidence: float = 0.95) -> Comparison:
    """Both policies' estimates and the paired difference candidate − active, from one set of resamples."""
    parts = {(who, name): terms(logged, target, direct, name)
             for who, target in (("candidate", candidate), ("active", active)) for name in ESTIMATORS}
    keys = list(parts)
    replicates = dict(zip(keys, bootstrap_replicates([parts[k] for k in keys], n_boot, seed), strict=True))
    points = {k: _ratio(*parts[k]) for k in keys}
    probs = logged_probs if logged_probs is not None else _served_only(logged)

    def policy(who: str, target: np.ndarray) -> PolicyEstimate:
        return PolicyEstimate({name: percentile_interval(points[who, name], replicates[who, name], confidence)
                               for name in ESTIMATORS},
                              effective_sample_size(importance_weights(logged, target)), support(probs, target))

    difference = {}
    for name in ESTIMATORS:
        a, b = points["candidate", name], points["active", name]
        value = None if a is None or b is None else a - b
        difference[name] = percentile_interval(value, replicates["candidate", name] - replicates["active", name],
                                               confidence)
    return Comparison(policy("candidate", candidate), policy("active", active), difference, len(logged))


def _served_only(logged: Logged) -> np.ndarray:
    """The logging distribution when only the served action's propensity is known: all mass on it."""
    probs = np.zeros((len(logged), logged.n_actions))
    probs[np.arange(len(logged)), logged.actions] = 1.0
    return probs


# ---- target policies -------------------------------------------------------------------------

def greedy(scores: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """One-hot (n, E) distribution on the argmin of ``scores`` over the ``allowed`` columns (ties: lower index)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (n, E), got {scores.shape}")
    masked = scores.copy()
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=bool)
        if not allowed.any():
            raise ValueError("no action is allowed")
        masked[:, ~allowed] = np.inf
    out = np.zeros_like(masked)
    if masked.shape[0]:
        out[np.arange(masked.shape[0]), np.argmin(masked, axis=1)] = 1.0
    return out


# ---- the direct model, cross-fitted ----------------------------------------------------------

def folds_by_key(keys: Sequence[str], k: int = 5) -> np.ndarray:
    """Fold of each row from its key's salted hash: every row of one prompt lands in one fold."""
    if k < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {k}")
    return np.array([min(k - 1, int(stable_fraction(key, salt=Salt.OPE_FOLD) * k)) for key in keys], dtype=np.int64)


def cross_fit(folds: np.ndarray, fit: Fit, n_actions: int) -> np.ndarray:
    """(n, E) predictions where row i comes from a model fit on the rows of the other folds only."""
    folds = np.asarray(folds)
    out = np.full((folds.shape[0], n_actions), np.nan)
    for fold in np.unique(folds):
        scored = np.flatnonzero(folds == fold)
        score = fit(np.flatnonzero(folds != fold))
        out[scored] = score(scored)
    return out


def _ridge_loo(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> tuple[np.ndarray, float]:
    """Ridge weights (on centred x, y) with the penalty of least leave-one-out squared error (closed form)."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    best: tuple[float, float, np.ndarray] | None = None
    m = x.shape[0]
    for alpha in alphas:
        shrink = s**2 / (s**2 + alpha)
        fitted = u @ (shrink * uty)
        leverage = np.sum(u**2 * shrink, axis=1) + 1.0 / m  # the intercept's leverage too
        loo = np.mean(((y - fitted) / np.clip(1.0 - leverage, 1e-6, None)) ** 2)
        if best is None or loo < best[0]:
            best = (float(loo), float(alpha), vt.T @ ((s / (s**2 + alpha)) * uty))
    assert best is not None
    return best[2], best[1]


def ridge_fit(features: np.ndarray, observed: np.ndarray, alphas: Sequence[float] = RIDGE_ALPHAS,
              min_rows: int = 5) -> Fit:
    """A :data:`Fit` of one ridge regression per expert on standardised ``features`` (n, d).

    ``observed`` (n, E) holds the known losses (NaN = unknown). An expert with fewer than ``min_rows``
    training rows is predicted by its training mean, or by the mean of every training loss, or 0.
    Predictions are clipped to the range of the training losses: a conditional mean lies within the
    losses' support, and an unclipped ridge on a few rows in high dimension extrapolates far outside it
    (found by ``bench loop``: a direct model predicting losses below 0 made DR values of −0.7 for scores
    in [0, 1], and promoted candidates' value intervals missed what they then served).
    """
    x_all = np.asarray(features, dtype=np.float64)
    y_all = np.asarray(observed, dtype=np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[0] != y_all.shape[0]:
        raise ValueError(f"features {x_all.shape} and observed {y_all.shape} must be (n, d) and (n, E)")

    def fit(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        y_train = y_all[train]
        seen_all = y_train[~np.isnan(y_train)]
        fallback = float(seen_all.mean()) if seen_all.size else 0.0
        low, high = (float(seen_all.min()), float(seen_all.max())) if seen_all.size else (-np.inf, np.inf)
        models: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = []  # (mean, scale, weight, bias)
        for e in range(y_all.shape[1]):
            rows = train[~np.isnan(y_all[train, e])]
            ys = y_all[rows, e]
            if rows.size < min_rows:
                constant = float(ys.mean()) if ys.size else fallback
                models.append((np.zeros(x_all.shape[1]), np.ones(x_all.shape[1]), np.zeros(x_all.shape[1]), constant))
                continue
            xs = x_all[rows]
            mean, scale = xs.mean(axis=0), xs.std(axis=0)
            scale = np.where(scale > 1e-12, scale, 1.0)
            weight, _ = _ridge_loo((xs - mean) / scale, ys - ys.mean(), alphas)
            models.append((mean, scale, weight, float(ys.mean())))

        def score(rows: np.ndarray) -> np.ndarray:
            x = x_all[rows]
            predicted = np.stack([((x - mean) / scale) @ weight + bias for mean, scale, weight, bias in models], axis=1)
            return np.clip(predicted, low, high)

        return score

    return fit
