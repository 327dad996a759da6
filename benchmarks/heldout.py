"""Held-out evaluation of stored router versions against a full loss matrix (the demo's report).

Every expert scores every held-out prompt (prompts no expert and no router ever learnt from), so
the best single expert and the oracle are exact. A router version is loaded the way a daemon
loads it (``router.serving.load_for_serving``: checksum, expert order, warm-up, the experts'
constraint matrix) and chooses with the daemon's rule (``router.constraints.choose``), with or
without λ (e.g. from ``[Flag: smallest model]``); nothing is sent to the daemon, so held-out
prompts never reach the request log and cannot be labelled for training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.metrics import paired_bootstrap
from store.settings import Settings

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class HeldOut:
    """The full held-out loss matrix: ``losses[i, j]`` is expert ``experts[j]``'s loss on ``prompts[i]``."""

    prompts: list[str]
    experts: list[str]
    losses: np.ndarray  # (N, E)
    params: np.ndarray  # (E,)

    @property
    def best_single(self) -> int:
        return int(np.argmin(self.losses.mean(axis=0)))

    def column(self, name: str) -> int:
        return self.experts.index(name)


def score_heldout(prompts: Sequence[str], experts: Sequence[Mapping[str, Any]], batch_size: int = 64,
                  progress: Progress | None = None) -> HeldOut:
    """Score ``prompts`` with every expert (``{"name", "kind", "uri", "attributes": {"params"}}`` entries)."""
    from experts.local import LocalExpert

    say = progress or (lambda fraction, message: None)
    texts = list(prompts)
    columns = []
    for index, entry in enumerate(experts):
        expert = LocalExpert.load(entry["name"], entry["kind"], entry["uri"])
        losses: list[float] = []
        for start in range(0, len(texts), batch_size):
            losses += expert.losses(texts[start:start + batch_size])
        columns.append(losses)
        say((index + 1) / len(experts), f"held-out losses of {entry['name']}")
    params = np.array([float(e["attributes"]["params"]) for e in experts])
    return HeldOut(texts, [str(e["name"]) for e in experts], np.array(columns, dtype=np.float64).T, params)


def route_heldout(settings: Settings, version_id: int, heldout: HeldOut,
                  lambdas: Mapping[str, float] | None = None) -> np.ndarray:
    """Column in ``heldout`` of the expert that router version ``version_id`` chooses for each prompt."""
    from router.constraints import choose
    from router.serving import load_for_serving
    from store.db import session_scope
    from store.queries import expert_by_name
    from store.schema import RouterVersion

    with session_scope(settings) as session:
        version = session.get(RouterVersion, version_id)
        if version is None:
            raise ValueError(f"no router version {version_id}")
        order = [str(name) for name in version.expert_order]
        rows = [expert_by_name(session, name) for name in order]
        attributes = [dict(row.attributes or {}) if row is not None else {} for row in rows]
        uri, sha = version.checkpoint_uri, version.checkpoint_sha256
    from pathlib import Path

    router, constraints = load_for_serving(Path(uri), sha, order, attributes)
    predicted = np.asarray(router.predict(heldout.prompts), dtype=np.float64)
    chosen, _ = choose(predicted, constraints, dict(lambdas or {}))
    return np.array([heldout.column(order[int(i)]) for i in np.atleast_1d(chosen)])


def routed_summary(heldout: HeldOut, chosen: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Mean routed loss and params, the share of each expert, and (best single − routed) with its 95 %
    paired-bootstrap interval (above 0: routing beats the best single expert on these prompts)."""
    rows = np.arange(len(heldout.prompts))
    routed = heldout.losses[rows, chosen]
    single = heldout.losses[:, heldout.best_single]
    gain, low, high = paired_bootstrap(single, routed, seed=seed)
    shares = np.bincount(chosen, minlength=len(heldout.experts)) / max(len(chosen), 1)
    return {
        "routed_loss": round(float(routed.mean()), 4),
        "mean_params": round(float(heldout.params[chosen].mean())),
        "gain_over_best_single": round(gain, 4),
        "gain_ci95": [round(low, 4), round(high, 4)],
        "share": {name: round(float(s), 3) for name, s in zip(heldout.experts, shares, strict=True)},
    }


def baselines(heldout: HeldOut) -> dict[str, Any]:
    """The best single expert (lowest mean held-out loss) and the oracle (per-prompt minimum)."""
    best = heldout.best_single
    return {
        "n_prompts": len(heldout.prompts),
        "best_single_expert": heldout.experts[best],
        "best_single_loss": round(float(heldout.losses[:, best].mean()), 4),
        "best_single_params": round(float(heldout.params[best])),
        "oracle_loss": round(float(heldout.losses.min(axis=1).mean()), 4),
    }
