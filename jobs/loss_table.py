"""Read the loss table into a prompt × expert matrix (NaN where unobserved)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from router.hashing import Salt, stable_fraction
from store.schema import Expert, ExpertLoss, Prompt


@dataclass(frozen=True)
class LossTable:
    hashes: list[str]
    prompts: list[str]
    experts: list[str]
    targets: np.ndarray  # (N, E) float32, NaN = unobserved

    def __len__(self) -> int:
        return len(self.hashes)

    def subset(self, rows: np.ndarray) -> "LossTable":
        return LossTable([self.hashes[i] for i in rows], [self.prompts[i] for i in rows], self.experts, self.targets[rows])

    def mean_losses(self) -> list[float | None]:
        means = []
        for column in self.targets.T:
            observed = column[~np.isnan(column)]
            means.append(float(observed.mean()) if observed.size else None)
        return means


def load_loss_table(session: Session, experts: Sequence[Expert]) -> LossTable:
    """Rows for the experts' current versions; computed and reported losses of one cell are averaged."""
    names = [expert.name for expert in experts]
    column = {name: index for index, name in enumerate(names)}
    keys = [(expert.name, expert.version) for expert in experts]
    cells: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    if keys:
        query = select(ExpertLoss.prompt_hash, ExpertLoss.expert, ExpertLoss.loss).where(
            tuple_(ExpertLoss.expert, ExpertLoss.expert_version).in_(keys)
        )
        for prompt_hash, expert, loss in session.execute(query):
            cells[prompt_hash][column[expert]].append(loss)
    hashes = sorted(cells)
    texts: dict[str, str] = {}
    for start in range(0, len(hashes), 900):
        chunk = hashes[start : start + 900]
        texts.update((h, t) for h, t in session.execute(select(Prompt.hash, Prompt.text).where(Prompt.hash.in_(chunk))))
    targets = np.full((len(hashes), len(names)), np.nan, dtype=np.float32)
    for row, prompt_hash in enumerate(hashes):
        for col, values in cells[prompt_hash].items():
            targets[row, col] = float(np.mean(values))
    return LossTable(hashes, [texts[h] for h in hashes], names, targets)


def holdout_mask(hashes: Sequence[str], share: float) -> np.ndarray:
    """Deterministic split by prompt hash: a prompt is in the holdout forever, whatever else changes."""
    return np.array([stable_fraction(h, salt=Salt.HOLDOUT) < share for h in hashes], dtype=bool)
