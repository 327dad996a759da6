"""The exploration policy: which expert serves a request, with what probability (pure numpy).

A deterministic argmin never sends a prompt to an expert it believes is worse, so with bandit
feedback (an application reports the loss of the expert that served it) a wrong belief is never
corrected and no off-policy estimator can judge another router. The daemon therefore serves, with
a small bounded probability, a *near-best* expert instead of the argmin, and logs the whole action
distribution with the exact probability (propensity) of what it served.

``THALAMUS_EXPLORE`` sets the policy, over the routing objective ``o_i = L̂_i + Σ λ_j C_j(i)``:

* ``off``: the argmin, propensity 1.
* ``epsilon:ε`` (ε in [0, 1]): the eligible experts other than the argmin share ε equally; the
  argmin (the greedy choice) gets the remaining mass 1 − ε. With no other expert eligible the
  argmin gets 1. So ε is exactly the share of requests that explore whenever an alternative exists.
* ``softmax:τ`` (τ > 0): eligible experts get weights ``exp(−g_i / τ)`` of their standardised gap
  ``g_i`` (below), normalised; the argmin gets the remaining mass.

**Margin** (``THALAMUS_EXPLORE_MARGIN``, ``m``): only experts whose objective is within ``m`` of
the best are eligible; any other has probability 0, so a request is never sent to an expert the
router is confident is much worse. The margin, and τ, are in units of the router's **loss scale**
``s`` — the mean over experts of the standard deviation of their training losses, which every
router bundle carries for its normaliser (``Router.loss_std``): the standardised gap is
``g_i = (o_i − min o) / s``, and expert ``i`` is eligible when ``g_i ≤ m``. An absolute margin
would mean a different thing for scores in [0, 1] (loss = 1 − score, s ≈ 0.3–0.5) than for
masked-LM losses in nats (≈ 2–8, s ≈ 1), and a margin relative to the best objective breaks down
near a loss of 0; the loss scale makes one setting work for both. (A cold-start router has
s = 1, so its margin is absolute: wide for scores, which is when exploring matters most.)

**Default** ``epsilon:0.1`` with margin 1.0, chosen in the loop benchmark (docs/benchmarks.md, "The
exploration default" and "Runs reproduced per seed, and where the cold loop stalls"): from a cold
start with bandit feedback, exploration off never learns (held-out −0.25 against the best single
expert); ε = 0.05 stayed stuck on one of two seeds (−0.29), ε = 0.1 recovered on both (−0.04 and
+0.02); with full feedback, where exploring can only cost, ε = 0.1 cost 0.002 in served score at
margin 0.25 and 0.0067 at 1.0 (full-size cold run; ≤ 0.01). The margin was 0.25 until 2026-11-25: a
first router trained on the warm-up's few losses per expert is often confidently wrong, and a margin
that narrow kept the best single expert out of the exploration on 52–68 % of prompts (cold seed 1),
so the data could never correct the belief and the loop stalled below the best single expert; at 1.0
the same seeds' candidates routed 0.010–0.051 better at every cycle from t = 1,000 (seed 0, which
had not stalled, lost 0.027). With ε-greedy the expected regret per request, by the router's own
predictions, is at most ε · m · s = 10 % of a loss standard deviation, a bound a softmax lacks (its
exploration rate depends on the gaps); and every explored expert has propensity ≥ ε / (E − 1), which
bounds the importance weights of the off-policy estimators.

**Scope** (``THALAMUS_EXPLORE_SCOPE``): ``margin`` (default) makes every expert within the margin
eligible on every request. ``overlap`` uses the router's calibrated spreads (router/selection.py:
the half-width of a nominal 80 % interval per predicted loss) and, within the margin, keeps only
the experts whose interval ``[o_i − w_i, o_i + w_i]`` overlaps the argmin's: the router explores
where it cannot tell the experts apart and serves the argmin where it can. An expert without a
calibrated spread (a router trained without one, or no calibration data for that expert) counts
as uncertain, so ``overlap`` falls back to ``margin`` for it.

**Top** (``THALAMUS_EXPLORE_TOP``, ``k``; 0, the default, for no limit): only the ``k`` eligible
experts nearest the argmin's objective may be explored, so ε is shared by ``k`` instead of up to
E − 1: each explored action has propensity ≥ ε / k, which bounds the off-policy estimators'
importance weights at k / ε instead of (E − 1) / ε (with the warm-up on, (1 − w) · ε / k for a
proven expert), and the exploring goes where the decision is close. Under ``softmax`` the weights
are normalised over the argmin and those ``k``. The warm-up still reaches every unproven expert.

**Determinism**: the draw uses ``u = stable_fraction("request_id:prompt", salt=Salt.EXPLORE)``, so a
replay of (prompt, request id, objective) reproduces the same choice and propensities.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from router.hashing import Salt, stable_fraction

PolicyKind = Literal["off", "epsilon", "softmax"]
Scope = Literal["margin", "overlap"]
SCOPES: tuple[Scope, ...] = ("margin", "overlap")

DEFAULT_EXPLORE = "epsilon:0.1"
DEFAULT_MARGIN = 1.0

_SPEC = re.compile(r"^\s*(off|epsilon|softmax)\s*(?::\s*(\S+)\s*)?$", re.IGNORECASE)


class ExploreError(ValueError):
    """``THALAMUS_EXPLORE`` (or its margin) does not describe a policy; the message is one sentence."""


@dataclass(frozen=True)
class ExplorePolicy:
    """A parsed exploration policy: ``kind``, its parameter (ε or τ; 0 for off) and the margin."""

    kind: PolicyKind
    value: float = 0.0
    margin: float = DEFAULT_MARGIN
    # Warm-up: an expert with fewer than ``warmup_rows`` loss rows at its version is *unproven* (new,
    # or everything at a cold start); whatever its predicted objective, the unproven experts other
    # than the argmin share ``warmup_share`` of the requests, so the router learns about them.
    warmup_share: float = 0.0
    warmup_rows: int = 0
    scope: Scope = "margin"  # "overlap": only experts whose calibrated interval overlaps the argmin's
    top: int = 0  # > 0: only the ``top`` eligible experts nearest the argmin's objective may be explored

    @property
    def active(self) -> bool:
        """False when the policy always serves the argmin (``off`` or ε = 0)."""
        return self.kind != "off" and not (self.kind == "epsilon" and self.value == 0.0)

    @property
    def spec(self) -> str:
        """The ``THALAMUS_EXPLORE`` string of this policy (``off``, ``epsilon:0.05``, ``softmax:0.1``)."""
        return "off" if self.kind == "off" else f"{self.kind}:{self.value:g}"

    def as_dict(self) -> dict[str, object]:
        return {"policy": self.spec, "kind": self.kind, "value": self.value, "margin": self.margin,
                "scope": self.scope, "top": self.top}


OFF = ExplorePolicy("off", 0.0, 0.0)


@functools.lru_cache(maxsize=64)
def parse_policy(text: str, margin: float = DEFAULT_MARGIN) -> ExplorePolicy:
    """``off`` | ``epsilon:ε`` (0 ≤ ε ≤ 1) | ``softmax:τ`` (τ > 0); raises :class:`ExploreError`."""
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not math.isfinite(margin) or margin < 0:
        raise ExploreError(f"THALAMUS_EXPLORE_MARGIN must be a finite number >= 0, got {margin!r}")
    match = _SPEC.match(str(text))
    if match is None:
        raise ExploreError(f"THALAMUS_EXPLORE must be 'off', 'epsilon:ε' (0 <= ε <= 1) or 'softmax:τ' (τ > 0), "
                           f"got {text!r}")
    kind, raw = match.group(1).lower(), match.group(2)
    if kind == "off":
        if raw is not None:
            raise ExploreError(f"THALAMUS_EXPLORE 'off' takes no parameter, got {text!r}")
        return ExplorePolicy("off", 0.0, float(margin))
    if raw is None:
        raise ExploreError(f"THALAMUS_EXPLORE {kind!r} needs a parameter, e.g. "
                           f"'{'epsilon:0.05' if kind == 'epsilon' else 'softmax:0.1'}', got {text!r}")
    try:
        value = float(raw)
    except ValueError:
        raise ExploreError(f"THALAMUS_EXPLORE parameter {raw!r} of {kind!r} is not a number") from None
    if kind == "epsilon" and not (0.0 <= value <= 1.0):
        raise ExploreError(f"THALAMUS_EXPLORE epsilon must lie in [0, 1], got {raw}")
    if kind == "softmax" and not (math.isfinite(value) and value > 0.0):
        raise ExploreError(f"THALAMUS_EXPLORE softmax temperature must be a finite number > 0, got {raw}")
    return ExplorePolicy(kind, value, float(margin))  # type: ignore[arg-type]


def parse_scope(text: str) -> Scope:
    """``margin`` | ``overlap``; raises :class:`ExploreError`."""
    value = str(text).strip().lower()
    if value not in SCOPES:
        raise ExploreError(f"THALAMUS_EXPLORE_SCOPE must be 'margin' or 'overlap', got {text!r}")
    return value


def action_probabilities(objective: np.ndarray, policy: ExplorePolicy, scale: float = 1.0,
                         unproven: np.ndarray | None = None, spread: np.ndarray | None = None) -> np.ndarray:
    """The policy's distribution over experts, shape of ``objective`` ((E,) or (N, E)); rows sum to 1.

    ``scale`` is the router's loss scale ``s`` (margin and τ are in its units). Ties for the best
    objective go to the lower index, like :func:`router.constraints.choose`. ``unproven`` (an (E,)
    bool mask) marks experts in warm-up: the policy's distribution is mixed with a uniform one over
    the unproven experts other than the argmin, with weight ``policy.warmup_share``. ``spread`` (the
    shape of ``objective``, NaN where unknown) is used by the ``overlap`` scope only.
    """
    probs = _policy_probabilities(objective, policy, scale, spread)
    if unproven is None or not policy.active or policy.warmup_share <= 0:
        return probs
    values = np.asarray(objective, dtype=np.float64)
    flat, mixed = values.reshape(-1, values.shape[-1]), probs.reshape(-1, values.shape[-1]).copy()
    mask = np.asarray(unproven, dtype=bool)
    for row in range(flat.shape[0]):
        others = mask.copy()
        others[int(np.argmin(flat[row]))] = False
        if others.any():
            mixed[row] = (1.0 - policy.warmup_share) * mixed[row] + policy.warmup_share * others / others.sum()
    return mixed.reshape(values.shape)


def _policy_probabilities(objective: np.ndarray, policy: ExplorePolicy, scale: float,
                          spread: np.ndarray | None = None) -> np.ndarray:
    values = np.asarray(objective, dtype=np.float64)
    flat = values.reshape(-1, values.shape[-1])
    n, e = flat.shape
    rows = np.arange(n)
    greedy = np.argmin(flat, axis=1)
    probs = np.zeros_like(flat)
    probs[rows, greedy] = 1.0
    if not policy.active or e < 2:
        return probs.reshape(values.shape)
    s = float(scale) if math.isfinite(scale) and scale > 0 else 1.0
    gap = (flat - flat[rows, greedy][:, None]) / s
    eligible = gap <= policy.margin
    if policy.scope == "overlap" and spread is not None:
        eligible &= _overlaps_best(flat, np.asarray(spread, dtype=np.float64).reshape(flat.shape), greedy)
    others = eligible.copy()
    others[rows, greedy] = False
    if policy.top > 0:
        others &= _nearest(gap, others, policy.top)
    if policy.kind == "epsilon":
        count = others.sum(axis=1, keepdims=True)
        probs = np.where(others, policy.value / np.maximum(count, 1), 0.0)
    else:
        pool = others.copy()  # the argmin and the alternatives it may explore (all eligible ones unless top)
        pool[rows, greedy] = True
        weights = np.where(pool, np.exp(-np.where(pool, gap, 0.0) / policy.value), 0.0)
        probs = np.where(others, weights / weights.sum(axis=1, keepdims=True), 0.0)
    probs[rows, greedy] = 1.0 - probs.sum(axis=1)
    return probs.reshape(values.shape)


def _nearest(gap: np.ndarray, others: np.ndarray, top: int) -> np.ndarray:
    """(N, E) True for the ``top`` experts of ``others`` with the smallest gap (ties to the lower index)."""
    ranked = np.argsort(np.where(others, gap, np.inf), axis=1, kind="stable")[:, :top]
    keep = np.zeros_like(others)
    np.put_along_axis(keep, ranked, True, axis=1)
    return keep & others


def _overlaps_best(values: np.ndarray, spread: np.ndarray, greedy: np.ndarray) -> np.ndarray:
    """(N, E) True where expert i's interval overlaps the argmin's (unknown spreads count as overlapping)."""
    rows = np.arange(values.shape[0])
    known = np.isfinite(spread)
    width = np.where(known, spread, 0.0)
    best_known = known[rows, greedy][:, None]
    best_top = (values[rows, greedy] + width[rows, greedy])[:, None]
    overlap = values - width <= best_top
    return overlap | ~known | ~best_known


def draw(probabilities: np.ndarray, fraction: float) -> int:
    """The index whose cumulative interval holds ``fraction`` ∈ [0, 1); never one of probability 0."""
    probs = np.asarray(probabilities, dtype=np.float64)
    index = int(np.searchsorted(np.cumsum(probs), fraction, side="right"))
    if index >= probs.size or probs[index] <= 0.0:  # rounding at the top end of the cumulative sum
        index = int(np.flatnonzero(probs > 0.0)[-1])
    return index


def explore_fraction(prompt: str, request_id: str) -> float:
    """The uniform draw of one request, fixed by (prompt, request id) so a replay reproduces it."""
    return stable_fraction(f"{request_id}:{prompt}", salt=Salt.EXPLORE)


@dataclass(frozen=True)
class Choice:
    """One request's choice under a policy: the index served, the argmin, and the distribution."""

    index: int
    greedy: int
    probabilities: np.ndarray  # (E,), sums to 1
    propensity: float  # probabilities[index]

    @property
    def explored(self) -> bool:
        return self.index != self.greedy


def choose(objective: np.ndarray, policy: ExplorePolicy, fraction: float, scale: float = 1.0,
           unproven: np.ndarray | None = None, spread: np.ndarray | None = None) -> Choice:
    """Draw one expert for an (E,) objective with the uniform ``fraction`` (see :func:`explore_fraction`)."""
    values = np.asarray(objective, dtype=np.float64)
    probs = action_probabilities(values, policy, scale, unproven, spread)
    index = draw(probs, fraction)
    return Choice(index=index, greedy=int(np.argmin(values)), probabilities=probs, propensity=float(probs[index]))
