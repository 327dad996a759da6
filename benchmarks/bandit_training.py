"""Training from bandit feedback: do 1/propensity weights help? (``thalamus bench bandit-training``)

Simulates the loop's data on a routing dataset with full scores (dcrouter): a **weak router** (the
product's neighbour head over a small fully-labelled seed of training prompts) serves every other
training prompt through the **exploration policy** (:mod:`router.exploration`), and only the served
expert's loss is observed, as an application's feedback would report it — one observed cell per
prompt, with its logged propensity. A router head is then trained on seed + logged rows in two ways
and routes the test prompts greedily:

* ``masked``: the product's recipe, a direct method — every observed cell counts once (masked
  regression; the neighbour head averages the observed losses of the k nearest prompts, with a
  ridge head where none of them observed the expert);
* ``ipw``: the same with each logged cell weighted by 1 / propensity (weighted neighbour mean and
  weighted ridge), which undoes the logging policy's preference for the experts it believed good;
* ``ipw_clip``: the same with the weights clipped at ``clip`` (variance control);
* ``ridge_masked`` / ``ridge_ipw``: the ridge head alone, unweighted and weighted — a global
  regression, the analogue of the parametric head that ``router/training.py``'s masked loss trains,
  where importance weights classically correct a misspecified model's covariate shift.

Reported per policy: the test mean score of each head (higher is better), the difference
``ipw − masked`` with a 95 % paired-bootstrap interval over test prompts (pooled over the logging
seeds), and the logging policy's own mean score on the logged prompts against its greedy score
(the exploration cost). Features are the frozen backbone's pooled embeddings (top-3 layers, as the
product recipe pools), so the whole benchmark runs in minutes on a CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.data import Split, load_dataset, quick_slice
from jobs.errors import JobInputError
from router.exploration import ExplorePolicy, action_probabilities, draw, parse_policy
from router.metrics import paired_bootstrap
from router.training import ridge_solution

Progress = Callable[[str], None]

DEFAULT_POLICIES = ("off", "epsilon:0.05", "epsilon:0.2", "softmax:0.1")
NEIGHBOURS = 100  # the product's k (THALAMUS_TRAIN_HEAD_NEIGHBORS)
RIDGE = 1000.0  # the product's ridge α (THALAMUS_TRAIN_HEAD_RIDGE)
METHODS = ("masked", "ipw", "ipw_clip", "ridge_masked", "ridge_ipw")
"""Heads trained on the logs: the product's (neighbour over ridge) unweighted, 1/p-weighted and clipped;
the ridge head alone, the analogue of the gradient-trained parametric head, unweighted and 1/p-weighted."""


@dataclass(frozen=True)
class Logged:
    """Simulated logs: the training loss matrix as the loop would hold it, and each cell's weight."""

    losses: np.ndarray  # (N, E), NaN where unobserved
    propensity: np.ndarray  # (N, E), the logged propensity of each observed cell (1 for full-information rows)
    logging_loss: float  # mean true loss the logging policy served on the logged prompts
    greedy_loss: float  # mean true loss its argmin would have served
    explored: float  # share of logged prompts served by exploration
    min_propensity: float


def embed(backbone: str, prompts: Sequence[str], max_length: int, pool_layers: int = 3) -> np.ndarray:
    """Pooled embeddings of the frozen backbone, top ``pool_layers`` hidden states as the product pools."""
    from router.model import Router, RouterConfig

    router = Router.from_config(RouterConfig(backbone=backbone, expert_names=["x"], lora_r=0, max_length=max_length,
                                             pool_layers=pool_layers))
    return router.embed(list(prompts), batch_size=64)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def weighted_ridge(x: np.ndarray, y: np.ndarray, w: np.ndarray, query: np.ndarray, alpha: float) -> np.ndarray:
    """Per-expert ridge regression on observed cells with sample weights ``w`` (the product's ridge head
    when every weight is 1); an expert never observed predicts the overall mean."""
    if np.allclose(w[~np.isnan(y)], 1.0):
        weight, bias = ridge_solution(x, y, alpha)
        out = query @ weight.T + bias
    else:
        out = np.empty((len(query), y.shape[1]))
        for j in range(y.shape[1]):
            seen = ~np.isnan(y[:, j])
            if not seen.any():
                out[:, j] = np.nan
                continue
            xs, ys, ws = x[seen], y[seen, j], w[seen, j]
            ws = ws / ws.mean()
            x_mean, y_mean = (ws[:, None] * xs).sum(0) / ws.sum(), (ws * ys).sum() / ws.sum()
            xc = xs - x_mean
            weighted = xc * ws[:, None]
            coef = np.linalg.solve(weighted.T @ xc + alpha * np.eye(x.shape[1]), weighted.T @ (ys - y_mean))
            out[:, j] = (query - x_mean) @ coef + y_mean
    never = np.isnan(y).all(axis=0)
    out[:, never] = np.nanmean(y)
    return out


def neighbour_head(keys: np.ndarray, y: np.ndarray, w: np.ndarray, query: np.ndarray, k: int,
                   fallback: np.ndarray) -> np.ndarray:
    """The product's neighbour head with weights: Σ w·loss / Σ w over the k nearest prompts that observed
    the expert (all weights 1: the plain mean), ``fallback`` where none of them did."""
    k = max(1, min(int(k), len(keys)))
    nearest = np.argpartition(-(_unit(query) @ _unit(keys).T), k - 1, axis=1)[:, :k]
    values, weights = y[nearest], np.where(np.isnan(y), 0.0, w)[nearest]  # (Q, k, E)
    total = (np.nan_to_num(values) * weights).sum(axis=1)
    mass = weights.sum(axis=1)
    return np.where(mass > 0, total / np.maximum(mass, 1e-300), fallback)


def fit_predict(x: np.ndarray, y: np.ndarray, w: np.ndarray, query: np.ndarray, k: int = NEIGHBOURS,
                alpha: float = RIDGE) -> np.ndarray:
    """Predicted losses of the product's head (neighbour head over a ridge head) trained on weighted cells."""
    return neighbour_head(x, y, w, query, k, weighted_ridge(x, y, w, query, alpha))


def simulate_logs(true: np.ndarray, weak_pred: np.ndarray, policy: ExplorePolicy, scale: float,
                  rng: np.random.Generator) -> Logged:
    """Serve each prompt with ``policy`` over the weak router's predictions; observe the served cell only."""
    probs = action_probabilities(weak_pred, policy, scale)
    uniforms = rng.random(len(true))
    served = np.array([draw(p, u) for p, u in zip(probs, uniforms, strict=True)])
    rows = np.arange(len(true))
    losses = np.full(true.shape, np.nan)
    losses[rows, served] = true[rows, served]
    propensity = np.ones(true.shape)
    propensity[rows, served] = probs[rows, served]
    greedy = weak_pred.argmin(axis=1)
    return Logged(losses, propensity, float(true[rows, served].mean()), float(true[rows, greedy].mean()),
                  float(np.mean(served != greedy)), float(probs[rows, served].min()))


def _score(higher_is_better: bool, losses: np.ndarray) -> np.ndarray:
    return 1.0 - losses if higher_is_better else -losses


def run(dataset: Path, backbone: str, *, quick: bool = False, seeds: int = 3, seed_prompts: int = 200,
        weak_neighbours: int = 20, policies: Sequence[str] = DEFAULT_POLICIES, margin: float = 0.25,
        clip: float = 10.0, progress: Progress | None = None) -> dict[str, Any]:
    """The whole benchmark; returns a JSON-able report (:func:`format_report` prints it)."""
    say = progress or (lambda message: None)
    started = time.perf_counter()
    parsed = [parse_policy(p, margin) for p in policies]
    train, test, _ = load_dataset(dataset)
    if quick:
        train, test = quick_slice(train, test)
    train = _complete(train)
    test = _complete(test)
    if len(train.prompts) <= seed_prompts + 10 or not len(test.prompts):
        raise JobInputError(f"{dataset}: too few complete rows for a seed of {seed_prompts} prompts")
    higher_is_better = bool(np.nanmax(np.r_[train.losses.ravel(), test.losses.ravel()]) <= 1.0)
    say(f"embedding {len(train.prompts) + len(test.prompts)} prompts with the frozen backbone")
    t = time.perf_counter()
    emb = embed(backbone, train.prompts + test.prompts, max_length=128 if quick else 256)
    embed_seconds = time.perf_counter() - t
    tr_x, te_x = emb[:len(train.prompts)], emb[len(train.prompts):]
    y_test = test.losses
    test_rows = np.arange(len(y_test))

    def test_losses(pred: np.ndarray) -> np.ndarray:
        return y_test[test_rows, pred.argmin(axis=1)]

    full = test_losses(fit_predict(tr_x, train.losses, np.ones_like(train.losses), te_x))
    report: dict[str, Any] = {
        "dataset": str(dataset), "quick": quick, "n_train": len(train.prompts), "n_test": len(y_test),
        "experts": train.experts, "seed_prompts": seed_prompts, "weak_neighbours": weak_neighbours,
        "seeds": seeds, "margin": margin, "clip": clip, "higher_is_better": higher_is_better,
        "embed_seconds": round(embed_seconds, 1),
        "reference": {"best_single": float(_score(higher_is_better, y_test[:, int(train.losses.mean(0).argmin())])
                                           .mean()),
                      "oracle": float(_score(higher_is_better, y_test.min(axis=1)).mean()),
                      "full_information": float(_score(higher_is_better, full).mean())},
        "policies": {}}
    masked_scores: dict[str, np.ndarray] = {}
    for policy in parsed:
        per_method: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
        logs: list[Logged] = []
        weak_scores = []
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            order = rng.permutation(len(train.prompts))
            seed_rows, logged_rows = np.sort(order[:seed_prompts]), np.sort(order[seed_prompts:])
            seed_y = train.losses[seed_rows]
            scale = float(np.mean(np.std(seed_y, axis=0))) or 1.0  # the weak router's loss scale
            ones = np.ones_like(seed_y)
            weak = fit_predict(tr_x[seed_rows], seed_y, ones, tr_x[logged_rows], k=weak_neighbours)
            weak_scores.append(test_losses(fit_predict(tr_x[seed_rows], seed_y, ones, te_x, k=weak_neighbours)))
            log = simulate_logs(train.losses[logged_rows], weak, policy, scale, rng)
            logs.append(log)
            x = np.concatenate([tr_x[seed_rows], tr_x[logged_rows]])
            y = np.concatenate([seed_y, log.losses])
            inverse = np.concatenate([ones, 1.0 / log.propensity])
            weights = {"masked": np.ones_like(y), "ipw": inverse, "ipw_clip": np.minimum(inverse, clip)}
            for method in METHODS:
                w = weights[method.removeprefix("ridge_")]
                ridge_only = method.startswith("ridge_")
                pred = weighted_ridge(x, y, w, te_x, RIDGE) if ridge_only else fit_predict(x, y, w, te_x)
                per_method[method].append(test_losses(pred))
        say(f"{policy.spec}: masked {np.mean(per_method['masked']):.4f}, ipw {np.mean(per_method['ipw']):.4f} "
            "(mean test loss)")
        scores = {m: _score(higher_is_better, np.concatenate(v)) for m, v in per_method.items()}
        masked_scores[policy.spec] = scores["masked"]
        report["policies"][policy.spec] = {
            "weak_router": float(_score(higher_is_better, np.concatenate(weak_scores)).mean()),
            "logging_score": float(np.mean([_score(higher_is_better, np.array(g.logging_loss)) for g in logs])),
            "logging_greedy_score": float(np.mean([_score(higher_is_better, np.array(g.greedy_loss)) for g in logs])),
            "explored_share": float(np.mean([g.explored for g in logs])),
            "min_propensity": float(min(g.min_propensity for g in logs)),
            "test_score": {m: float(s.mean()) for m, s in scores.items()},
            "ipw_minus_masked": _interval(paired_bootstrap(scores["ipw"], scores["masked"], n=2000, seed=0)),
            "ipw_clip_minus_masked": _interval(paired_bootstrap(scores["ipw_clip"], scores["masked"], n=2000, seed=0)),
            "ridge_ipw_minus_masked": _interval(paired_bootstrap(scores["ridge_ipw"], scores["ridge_masked"], n=2000,
                                                                 seed=0)),
        }
    if "off" in masked_scores:  # what exploring while logging did to the masked head (same seeds and splits)
        for name, row in report["policies"].items():
            row["masked_minus_off"] = _interval(paired_bootstrap(masked_scores[name], masked_scores["off"], n=2000,
                                                                 seed=0))
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    return report


def _complete(split: Split) -> Split:
    return split.subset(np.flatnonzero(~np.isnan(split.losses).any(axis=1)))


def _interval(values: tuple[float, float, float]) -> dict[str, float]:
    mean, low, high = values
    return {"mean": mean, "low": low, "high": high}


def format_report(report: dict[str, Any]) -> str:
    """A table a person reads: one row per logging policy."""
    ref = report["reference"]
    lines = [f"bandit training on {report['dataset']} ({report['n_train']} train / {report['n_test']} test prompts, "
             f"seed {report['seed_prompts']} fully labelled, {report['seeds']} logging seeds, "
             f"margin {report['margin']}, "
             f"quick={report['quick']}; {report['wall_seconds']} s)",
             f"reference test score: best single {ref['best_single']:.4f}, full-information head "
             f"{ref['full_information']:.4f}, oracle {ref['oracle']:.4f}", "",
             f"{'policy':<14}{'weak':>8}{'logging':>9}{'greedy':>8}{'explored':>9}{'min p':>8}"
             f"{'masked':>9}{'ipw':>8}{'clip':>8}  {'ipw − masked [95% CI]':<28}{'clip − masked [95% CI]':<28}"
             f"{'masked − off [95% CI]':<28}{'ridge':>8}{'r-ipw':>8}  ridge ipw − masked [95% CI]"]
    for name, row in report["policies"].items():
        d, c = row["ipw_minus_masked"], row["ipw_clip_minus_masked"]
        off = _fmt(row["masked_minus_off"]) if "masked_minus_off" in row else ""
        lines.append(f"{name:<14}{row['weak_router']:>8.4f}{row['logging_score']:>9.4f}{row['logging_greedy_score']:>8.4f}"
                     f"{row['explored_share']:>9.3f}{row['min_propensity']:>8.3f}{row['test_score']['masked']:>9.4f}"
                     f"{row['test_score']['ipw']:>8.4f}{row['test_score']['ipw_clip']:>8.4f}  "
                     f"{_fmt(d):<28}{_fmt(c):<28}{off:<28}"
                     f"{row['test_score']['ridge_masked']:>8.4f}{row['test_score']['ridge_ipw']:>8.4f}  "
                     f"{_fmt(row['ridge_ipw_minus_masked'])}")
    lines.append("")
    lines.append("weak: the logging router's test score; logging/greedy: the mean score it served on the logged "
                 "prompts with/without exploring; masked/ipw/clip: test score of the product's head trained on the "
                 "logs; ridge/r-ipw: the ridge head alone.")
    return "\n".join(lines)


def _fmt(d: dict[str, float]) -> str:
    if any(math.isnan(v) for v in d.values()):
        return "n/a"
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
