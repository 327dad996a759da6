"""Divergences between predicted and observed expert losses, over observed entries only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

KINDS: tuple[str, ...] = ("mse", "huber", "bce")
_EPS = 1e-6


def masked_divergence(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      kind: str = "huber") -> torch.Tensor:
    """Mean divergence over entries where ``mask`` is true; 0 (with a graph) when nothing is observed.

    ``target`` may hold NaN where ``mask`` is false. For "bce" the losses must lie in [0, 1]
    (e.g. loss = 1 − score): ``pred`` is read as the predicted loss itself, clamped to
    [1e-6, 1 − 1e-6] (no logit link, so the router's outputs stay in loss units everywhere;
    the clamp stops gradients only for predictions already outside [0, 1]).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown divergence {kind!r}; choose one of {', '.join(KINDS)}")
    if pred.shape != target.shape or pred.shape != mask.shape:
        raise ValueError(f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask {tuple(mask.shape)} differ")
    mask = mask.bool()
    count = mask.sum()
    if int(count) == 0:
        return pred.sum() * 0.0
    p = pred[mask]
    t = target[mask].to(p.dtype)
    if kind == "mse":
        return F.mse_loss(p, t)
    if kind == "huber":
        return F.huber_loss(p, t, delta=1.0)
    if bool(((t < 0) | (t > 1)).any()):
        raise ValueError("bce needs observed losses in [0, 1]; use 'huber' or 'mse' for unbounded losses")
    return F.binary_cross_entropy(p.clamp(_EPS, 1 - _EPS), t)


@dataclass
class Normalizer:
    """Per-expert mean/std over observed entries (NaN = missing).

    Experts without observations get mean 0, std 1; a std below 1e-6 (constant or single
    observation) is replaced by 1 so that normalised values never blow up.
    """

    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray

    @classmethod
    def fit(cls, targets: np.ndarray) -> Normalizer:
        targets = np.asarray(targets, dtype=np.float64)
        if targets.ndim != 2:
            raise ValueError(f"targets must be (N, E), got shape {targets.shape}")
        observed = ~np.isnan(targets)
        count = observed.sum(axis=0)
        safe = np.where(observed, targets, 0.0)
        mean = np.divide(safe.sum(axis=0), count, out=np.zeros(targets.shape[1]), where=count > 0)
        var = np.divide((np.where(observed, targets - mean, 0.0) ** 2).sum(axis=0), count,
                        out=np.zeros(targets.shape[1]), where=count > 0)
        std = np.sqrt(var)
        std = np.where(std < 1e-6, 1.0, std)
        return cls(mean=mean, std=std, count=count)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) - self.mean) / self.std

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64) * self.std + self.mean
