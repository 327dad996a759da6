"""TrainRecipe: how a router is built and trained, read from the settings in one place.

The production jobs (cold start, training) and the benchmarks all build their router and training
configuration from a recipe; a benchmark that trains differently passes its own recipe (a
``dataclasses.replace`` of the product's) instead of rewriting settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from router.config import RouterConfig
from router.training import TrainConfig
from store.settings import Settings


@dataclass(frozen=True)
class TrainRecipe:
    """Every ``THALAMUS_TRAIN_*`` setting plus the backbone, typed."""

    backbone: str
    max_length: int
    lora_r: int
    lora_layers: int
    pool_layers: int
    head_neighbors: int
    head_ridge: float
    epochs: int
    batch_size: int
    learning_rate: float
    loss: str
    holdout_share: float
    seed: int

    @classmethod
    def from_settings(cls, settings: Settings) -> TrainRecipe:
        """The product's recipe: the one mapping from settings to a recipe."""
        return cls(
            backbone=settings.backbone_path, max_length=settings.train_max_length, lora_r=settings.train_lora_r,
            lora_layers=settings.train_lora_layers, pool_layers=settings.train_pool_layers,
            head_neighbors=settings.train_head_neighbors, head_ridge=settings.train_head_ridge,
            epochs=settings.train_epochs, batch_size=settings.train_batch_size,
            learning_rate=settings.train_learning_rate, loss=settings.train_loss,
            holdout_share=settings.train_holdout_share, seed=settings.train_seed,
        )

    def router_config(self, expert_names: Sequence[str]) -> RouterConfig:
        """The architecture of a new router for these experts."""
        return RouterConfig(backbone=self.backbone, expert_names=list(expert_names), max_length=self.max_length,
                            lora_r=self.lora_r, lora_layers=self.lora_layers, pool_layers=self.pool_layers,
                            head_neighbors=self.head_neighbors)

    def train_config(self, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
        """The training run's hyper-parameters; ``overrides`` (a job's params) may set any
        :class:`TrainConfig` field, other keys are ignored."""
        values: dict[str, Any] = {"epochs": self.epochs, "batch_size": self.batch_size,
                                  "learning_rate": self.learning_rate, "loss": self.loss, "seed": self.seed,
                                  "head_ridge": self.head_ridge}
        known = {f.name for f in fields(TrainConfig)}
        values.update({k: v for k, v in (overrides or {}).items() if k in known})
        return TrainConfig(**values)
