"""TEMPORARY exact neighbour search (replaced by the neighbours branch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class NeighbourIndex:
    def __init__(self, keys: np.ndarray) -> None:
        self.keys = np.ascontiguousarray(keys, dtype=np.float32)

    @classmethod
    def build(cls, keys: np.ndarray) -> NeighbourIndex:
        return cls(keys)

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        k = max(1, min(int(k), self.keys.shape[0]))
        q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        sims = q @ self.keys.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1, kind="stable")
        return np.take_along_axis(part, order, 1)


def neighbour_mean(losses: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    return neighbour_mean_std(losses, nearest, [nearest.shape[1]])[0][0]


def neighbour_mean_std(losses: np.ndarray, nearest: np.ndarray, ks: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    values = losses[nearest]
    seen = ~np.isnan(values)
    filled = np.where(seen, values, 0.0)
    total, squares, count = filled.cumsum(1), (filled**2).cumsum(1), seen.cumsum(1).astype(np.float32)
    out = []
    for k in ks:
        i = max(1, min(int(k), nearest.shape[1])) - 1
        c = count[:, i]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(c > 0, total[:, i] / np.maximum(c, 1), np.nan)
            var = np.maximum(squares[:, i] / np.maximum(c, 1) - np.nan_to_num(mean) ** 2, 0)
        out.append((mean, np.where(c > 0, np.sqrt(var), np.nan)))
    return out
