"""How wide are the off-policy intervals, and do they cover the truth? A seeded synthetic bandit (numpy only).

Prompts fall in ``contexts`` kinds; each expert has a true mean loss per kind (uniform in [0.2, 0.8],
seeded) and an observed loss is that mean plus uniform noise of ±0.2 (so within [0, 1]). The active
router is the argmin of a noisy belief (wrong on some kinds), the candidate the true argmin. The
logging policy serves the active router's choice with probability 1 − ε and a uniformly random expert
with ε (its propensities are logged). For each size and ε, ``repetitions`` logged sets are drawn, the
production estimators (``router.offpolicy``, the same cross-fitted ridge direct model on one-hot kinds)
estimate candidate − active, and the report gives each estimator's mean 95 % interval width and the
share of intervals covering the true difference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from router.offpolicy import ESTIMATORS, Logged, compare, cross_fit, folds_by_key, ridge_fit


@dataclass(frozen=True)
class WidthRow:
    n_rows: int
    epsilon: float
    estimator: str
    difference_width: float  # mean width of the candidate − active interval
    candidate_width: float
    coverage: float  # share of repetitions whose difference interval holds the true difference
    mean_ess: float  # the candidate's effective sample size
    repetitions: int

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _world(seed: int, contexts: int, experts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.uniform(0.2, 0.8, (contexts, experts))  # ± 0.2 noise never clips: the truth is the mean
    belief = means + rng.normal(0, 0.15, means.shape)
    return means, belief.argmin(axis=1), means.argmin(axis=1)


def _draw(rng: np.random.Generator, means: np.ndarray, active: np.ndarray, n: int,
          epsilon: float) -> tuple[Logged, np.ndarray]:
    contexts, experts = means.shape
    kinds = rng.integers(0, contexts, n)
    probs = np.full((n, experts), epsilon / experts)
    probs[np.arange(n), active[kinds]] += 1 - epsilon
    actions = (rng.random(n)[:, None] > probs.cumsum(axis=1)).sum(axis=1).clip(max=experts - 1)
    losses = means[kinds, actions] + rng.uniform(-0.2, 0.2, n)
    return Logged(losses, actions, probs[np.arange(n), actions], experts), kinds


def run(sizes: Sequence[int] = (1000, 5000), epsilons: Sequence[float] = (0.05, 0.1, 0.2), repetitions: int = 40,
        n_boot: int = 400, seed: int = 0, contexts: int = 8, experts: int = 3,
        log: Callable[[str], None] | None = None) -> list[WidthRow]:
    means, active, candidate = _world(seed, contexts, experts)
    truth = float(np.mean(means[np.arange(contexts), candidate]) - np.mean(means[np.arange(contexts), active]))
    rows = []
    for n in sizes:
        for epsilon in epsilons:
            widths: dict[str, list[tuple[float, float, bool]]] = {name: [] for name in ESTIMATORS}
            ess = []
            for repetition in range(repetitions):
                rng = np.random.default_rng([seed, n, int(epsilon * 1000), repetition])
                logged, kinds = _draw(rng, means, active, n, epsilon)
                observed = np.full((n, experts), np.nan)
                observed[np.arange(n), logged.actions] = logged.losses
                folds = folds_by_key([f"{repetition}:{i}" for i in range(n)])
                direct = cross_fit(folds, ridge_fit(np.eye(contexts)[kinds], observed), experts)
                result = compare(logged, np.eye(experts)[candidate[kinds]], np.eye(experts)[active[kinds]], direct,
                                 n_boot=n_boot, seed=repetition)
                ess.append(result.candidate.ess)
                for name in ESTIMATORS:
                    d, c = result.difference[name], result.candidate.estimates[name]
                    if d.low is None or d.high is None or c.low is None or c.high is None:
                        continue
                    widths[name].append((d.high - d.low, c.high - c.low, d.low <= truth <= d.high))
            for name in ESTIMATORS:
                values = np.array(widths[name]) if widths[name] else np.full((1, 3), np.nan)
                rows.append(WidthRow(n, epsilon, name, float(values[:, 0].mean()), float(values[:, 1].mean()),
                                     float(values[:, 2].mean()), float(np.mean(ess)), len(widths[name])))
            if log is not None:
                log(f"n={n} ε={epsilon}: " + ", ".join(f"{r.estimator} width {r.difference_width:.3f} "
                                                      f"coverage {r.coverage:.2f}" for r in rows[-len(ESTIMATORS):]))
    return rows


def table(rows: Sequence[WidthRow]) -> str:
    lines = ["| logged rows | ε | estimator | width of candidate − active | width of candidate | coverage | "
             "candidate ESS |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.n_rows} | {r.epsilon:g} | {r.estimator.upper()} | {r.difference_width:.3f} | "
              f"{r.candidate_width:.3f} | {r.coverage:.2f} | {r.mean_ess:.0f} |" for r in rows]
    return "\n".join(lines)
