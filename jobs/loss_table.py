"""Read the loss table into a prompt × expert matrix (NaN where unobserved)."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from router.hashing import Salt, stable_fraction
from store.loss_bounds import DEFAULT_MAX_LOSS, bounds_of, loss_problem
from store.schema import Expert, ExpertLoss, Prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossTable:
    hashes: list[str]
    prompts: list[str]
    experts: list[str]
    targets: np.ndarray  # (N, E) float32, NaN = unobserved
    rows_read: dict[str, int] = field(default_factory=dict)  # loss rows used, by source
    skipped: dict[str, int] = field(default_factory=dict)  # rows outside [0, max_loss] or not finite, by expert

    def __len__(self) -> int:
        return len(self.hashes)

    def subset(self, rows: np.ndarray) -> LossTable:
        return LossTable([self.hashes[i] for i in rows], [self.prompts[i] for i in rows], self.experts,
                         self.targets[rows], self.rows_read, self.skipped)

    def mean_losses(self) -> list[float | None]:
        means = []
        for column in self.targets.T:
            observed = column[~np.isnan(column)]
            means.append(float(observed.mean()) if observed.size else None)
        return means


def load_loss_table(session: Session, experts: Sequence[Expert], max_loss: float = DEFAULT_MAX_LOSS) -> LossTable:
    """Rows for the experts' current versions; computed and reported losses of one cell are averaged.

    A row that is not finite or lies outside the expert's ``[0, max_loss]`` (one written before the
    bound existed, or by hand) is skipped and counted in ``skipped``: one bad row never stops training.
    """
    names = [expert.name for expert in experts]
    column = {name: index for index, name in enumerate(names)}
    bounds = bounds_of(experts, max_loss)
    keys = [(expert.name, expert.version) for expert in experts]
    cells: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    read: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    if keys:
        query = select(ExpertLoss.prompt_hash, ExpertLoss.expert, ExpertLoss.loss, ExpertLoss.source).where(
            tuple_(ExpertLoss.expert, ExpertLoss.expert_version).in_(keys)
        )
        for prompt_hash, expert, loss, source in session.execute(query):
            if loss is None or loss_problem(loss, bounds[expert]) is not None:
                skipped[expert] += 1
                continue
            cells[prompt_hash][column[expert]].append(loss)
            read[source] += 1
    if skipped:
        log.warning("skipped %d loss rows that are not finite or lie outside [0, max_loss]: %s",
                    sum(skipped.values()), dict(skipped))
    hashes = sorted(cells)
    texts: dict[str, str] = {}
    for start in range(0, len(hashes), 900):
        chunk = hashes[start : start + 900]
        texts.update((h, t) for h, t in session.execute(select(Prompt.hash, Prompt.text).where(Prompt.hash.in_(chunk))))
    targets = np.full((len(hashes), len(names)), np.nan, dtype=np.float32)
    for row, prompt_hash in enumerate(hashes):
        for col, values in cells[prompt_hash].items():
            targets[row, col] = float(np.mean(values))
    return LossTable(hashes, [texts[h] for h in hashes], names, targets, dict(read), dict(skipped))


def holdout_mask(hashes: Sequence[str], share: float) -> np.ndarray:
    """Deterministic split by prompt hash: a prompt is in the holdout forever, whatever else changes."""
    return np.array([stable_fraction(h, salt=Salt.HOLDOUT) < share for h in hashes], dtype=bool)
