"""The head-selection grid and CV protocol, torch-free: the settings validate it at start-up, and the
Celery worker's parent (which reads the settings) must never import torch."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SelectionConfig:
    """The candidate grid and the CV protocol (``THALAMUS_TRAIN_SELECT_*`` settings).

    alphas: ridge penalties relative to the mean eigenvalue of the centred Gram matrix of the
        features (α = r · trace(XᵀX) / D).
    neighbors: k values of the neighbour head.
    pool_layers: how many of the top hidden states are pooled and concatenated.
    blend: also try ridge + neighbour averages (every α × k pair).
    shared: also try ridge toward a weight shared by every expert (every α_shared × α pair,
        ``RidgePath.shared``).
    shrinks: pseudo-counts κ of the shrunk neighbour candidates (every α × k × κ: the neighbour mean
        shrunk toward the ridge prediction, ``RouterConfig.head_shrink``); empty (the default) = none.
    mlp_hidden: width of the MLP head candidate; 0 = no MLP candidate.
    mlp_epochs: AdamW epochs of the MLP candidate.
    folds: K of the K-fold cross-validation.
    coverage: nominal coverage of the interval the spread is the half-width of.
    """

    alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
    neighbors: tuple[int, ...] = (10, 30, 100, 300)
    pool_layers: tuple[int, ...] = (1, 2, 3)
    blend: bool = True
    shared: bool = False
    shrinks: tuple[float, ...] = ()
    mlp_hidden: int = 64
    mlp_epochs: int = 10
    folds: int = 5
    coverage: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        object.__setattr__(self, "neighbors", tuple(int(k) for k in self.neighbors))
        object.__setattr__(self, "pool_layers", tuple(int(p) for p in self.pool_layers))
        object.__setattr__(self, "shrinks", tuple(float(k) for k in self.shrinks))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with one clear sentence for an unusable grid."""
        if not self.alphas:
            raise ValueError("the ridge α grid (THALAMUS_TRAIN_SELECT_ALPHAS) is empty")
        if not self.neighbors:
            raise ValueError("the neighbour k grid (THALAMUS_TRAIN_SELECT_NEIGHBORS) is empty")
        if not self.pool_layers:
            raise ValueError("the pooled-layer grid (THALAMUS_TRAIN_SELECT_POOL_LAYERS) is empty")
        if any(not (a > 0 and math.isfinite(a)) for a in self.alphas):
            raise ValueError(f"every ridge α must be a finite number > 0, got {list(self.alphas)}")
        if any(k <= 0 for k in self.neighbors):
            raise ValueError(f"every neighbour k must be >= 1, got {list(self.neighbors)}")
        if any(not (k > 0 and math.isfinite(k)) for k in self.shrinks):
            raise ValueError(f"every shrinkage pseudo-count κ must be a finite number > 0, got {list(self.shrinks)}")
        if any(p <= 0 for p in self.pool_layers):
            raise ValueError(f"every pooled-layer count must be >= 1, got {list(self.pool_layers)}")
        if self.mlp_hidden < 0 or self.mlp_epochs < 1:
            raise ValueError(f"mlp_hidden must be >= 0 and mlp_epochs >= 1, got {self.mlp_hidden}, {self.mlp_epochs}")
        if self.folds < 2:
            raise ValueError(f"head selection needs at least 2 folds, got {self.folds}")
        if not 0.0 < self.coverage < 1.0:
            raise ValueError(f"coverage must be in (0, 1), got {self.coverage}")

    @property
    def max_pool(self) -> int:
        return max(self.pool_layers)
