"""Divergences between predicted and observed losses, over observed entries only."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DIVERGENCES = ("mse", "huber", "bce")


def masked_divergence(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str = "huber") -> torch.Tensor:
    """Mean divergence over entries where ``mask`` is true (a row may observe one expert or all).

    ``mse`` and ``huber`` compare normalised values; ``bce`` takes ``pred`` as logits of a loss in [0, 1].
    """
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; known: {', '.join(DIVERGENCES)}")
    mask = mask.to(pred.dtype)
    target = torch.where(mask > 0, target, torch.zeros_like(target))
    if kind == "mse":
        elementwise = (pred - target) ** 2
    elif kind == "huber":
        elementwise = F.huber_loss(pred, target, reduction="none", delta=1.0)
    else:
        elementwise = F.binary_cross_entropy_with_logits(pred, target.clamp(0, 1), reduction="none")
    return (elementwise * mask).sum() / mask.sum().clamp(min=1.0)


def observed_stats(targets: np.ndarray, min_std: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Per-expert mean and std over observed (non-NaN) entries; experts never observed get 0 and 1."""
    observed = ~np.isnan(targets)
    counts = observed.sum(0)
    filled = np.where(observed, targets, 0.0)
    mean = np.divide(filled.sum(0), counts, out=np.zeros(targets.shape[1]), where=counts > 0)
    var = np.divide((np.where(observed, targets - mean, 0.0) ** 2).sum(0), counts,
                    out=np.ones(targets.shape[1]), where=counts > 0)
    std = np.maximum(np.sqrt(var), min_std)
    std[counts < 2] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)
