"""The stream a loop benchmark replays: which prompt arrives when, and what the application reports.

Everything comes from a dataset's train split (:func:`benchmarks.data.load_dataset`), seeded:
a share of its prompts (``heldout_share``) is never streamed and scores the router at the end; the
rest (the *pool*) is the traffic. A scenario decides the order of arrival and one event:

- ``cold``: the pool in a seeded random order, no event;
- ``drift``: the pool grouped by family (k-means clusters of the frozen embeddings), families in
  a seeded order, so new kinds of prompts appear over time;
- ``new-expert``: the strongest expert is unknown until mid-stream, when it is registered;
- ``degraded``: from mid-stream on, the strongest expert's scores are multiplied by a factor (an
  upstream model that silently regressed).

Nothing here names a dataset; it needs only a prompt × expert loss matrix (losses = 1 − score).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks.data import Split

SCENARIOS = ("cold", "drift", "new-expert", "degraded")
FEEDBACK = ("bandit", "labelled", "full")
"""bandit: the served expert's loss only; labelled: that, and every expert's on the requests the daemon
marks ``sampled`` (its label share, ``THALAMUS_LABEL_SHARE``); full: every expert's on every request."""


@dataclass(frozen=True)
class Stream:
    """Arrival order over the pool, the held-out split, and the scenario's event."""

    scenario: str
    pool: Split  # the prompts that may arrive (complete rows: every expert's loss is known)
    heldout: Split  # never streamed; the final evaluation
    order: np.ndarray  # (N,) row of ``pool`` for each request, in arrival order
    event_at: int | None  # request index at which the event happens (new-expert, degraded)
    event_expert: str | None  # the expert withheld or degraded
    degrade_factor: float = 1.0
    families: np.ndarray | None = None  # (len(pool),) family of each pool row (drift)

    def __len__(self) -> int:
        return len(self.order)

    def available(self, t: int) -> list[str]:
        """The experts registered when request ``t`` arrives."""
        experts = self.pool.experts
        if self.scenario == "new-expert" and self.event_at is not None and t < self.event_at:
            return [e for e in experts if e != self.event_expert]
        return list(experts)

    def loss(self, t: int, expert: str, split: Split | None = None, row: int | None = None) -> float:
        """The loss the application reports for ``expert`` on request ``t`` (degradation applied)."""
        split = split or self.pool
        row = int(self.order[t]) if row is None else row
        value = float(split.losses[row, split.experts.index(expert)])
        if self.degraded(t) and expert == self.event_expert:
            value = 1.0 - self.degrade_factor * (1.0 - value)  # score × factor
        return value

    def degraded(self, t: int) -> bool:
        return self.scenario == "degraded" and self.event_at is not None and t >= self.event_at

    def losses_at(self, t: int) -> np.ndarray:
        """Every expert's loss for request ``t`` as the world is then (NaN for an expert not yet registered)."""
        names = self.available(t)
        return np.array([self.loss(t, e) if e in names else np.nan for e in self.pool.experts])


def split_heldout(train: Split, share: float, seed: int) -> tuple[Split, Split]:
    """(pool, heldout): a seeded ``share`` of the complete train rows is held out, the rest is the pool."""
    complete = np.flatnonzero(~np.isnan(train.losses).any(axis=1))
    if complete.size < 10:
        raise ValueError(f"the train split has {complete.size} prompts with every expert's loss; need at least 10")
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(complete)
    n_held = max(1, round(share * complete.size))
    return train.subset(np.sort(shuffled[n_held:])), train.subset(np.sort(shuffled[:n_held]))


def strongest_expert(split: Split) -> str:
    """The expert with the lowest mean loss (the best single expert)."""
    return split.experts[int(np.nanargmin(np.nanmean(split.losses, axis=0)))]


def kmeans(x: np.ndarray, k: int, seed: int, iterations: int = 50) -> np.ndarray:
    """Cluster labels of the rows of ``x`` (cosine k-means, k-means++ start, seeded)."""
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        distance = np.min(np.stack([1.0 - x @ c for c in centers]), axis=0).clip(0)
        centers.append(x[rng.choice(len(x), p=distance / distance.sum())] if distance.sum() > 0
                       else x[rng.integers(len(x))])
    c = np.stack(centers)
    labels = np.zeros(len(x), dtype=int)
    for _ in range(iterations):
        new = np.argmax(x @ c.T, axis=1)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                center = members.mean(axis=0)
                c[j] = center / max(float(np.linalg.norm(center)), 1e-12)
    return labels


def make_stream(train: Split, scenario: str, *, requests: int | None, seed: int, heldout_share: float = 0.2,
                families: int = 5, degrade_factor: float = 0.3,
                embed: Callable[[Sequence[str]], np.ndarray] | None = None) -> Stream:
    """The seeded stream of a scenario. ``requests`` defaults to one pass over the pool; more cycle
    through fresh permutations of it (prompts repeat, as they do in production)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if requests is not None and requests < 1:
        raise ValueError(f"requests must be at least 1, got {requests}")
    pool, heldout = split_heldout(train, heldout_share, seed)
    rng = np.random.default_rng(seed + 1)
    n = requests or len(pool.prompts)
    labels = None
    if scenario == "drift":
        if embed is None:
            raise ValueError("the drift scenario needs an embedding function to find prompt families")
        labels = kmeans(embed(pool.prompts), families, seed)
        family_order = rng.permutation(families)
        passes: list[np.ndarray] = []
        while sum(len(p) for p in passes) < n:
            passes.append(np.concatenate([rng.permutation(np.flatnonzero(labels == f)) for f in family_order]))
        order = np.concatenate(passes)[:n]
    else:
        passes = []
        while sum(len(p) for p in passes) < n:
            passes.append(rng.permutation(len(pool.prompts)))
        order = np.concatenate(passes)[:n]
    event_at = n // 2 if scenario in ("new-expert", "degraded") else None
    event_expert = strongest_expert(pool) if event_at is not None else None
    return Stream(scenario, pool, heldout, order, event_at, event_expert,
                  degrade_factor if scenario == "degraded" else 1.0, labels)
