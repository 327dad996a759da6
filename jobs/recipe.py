"""TrainRecipe: how a router is built and trained, read from the settings in one place.

The production jobs (cold start, training) and the benchmarks all build their router and training
configuration from a recipe; a benchmark that trains differently passes its own recipe (a
``dataclasses.replace`` of the product's) instead of rewriting settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from router.config import RouterConfig
from router.selection import SelectionConfig
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
    head_select: bool
    select_alphas: tuple[float, ...]
    select_neighbors: tuple[int, ...]
    select_pool_layers: tuple[int, ...]
    select_blend: bool
    select_shared: bool
    select_shrinks: tuple[float, ...]
    select_mlp_hidden: int
    select_folds: int
    spread_coverage: float
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
            head_select=settings.train_head_select, select_alphas=tuple(settings.train_select_alphas),
            select_neighbors=tuple(settings.train_select_neighbors),
            select_pool_layers=tuple(settings.train_select_pool_layers), select_blend=settings.train_select_blend,
            select_shared=settings.train_select_shared,
            select_shrinks=tuple(settings.train_select_shrinks),
            select_mlp_hidden=settings.train_select_mlp_hidden, select_folds=settings.train_select_folds,
            spread_coverage=settings.train_spread_coverage,
            epochs=settings.train_epochs, batch_size=settings.train_batch_size,
            learning_rate=settings.train_learning_rate, loss=settings.train_loss,
            holdout_share=settings.train_holdout_share, seed=settings.train_seed,
        )

    def selection(self) -> SelectionConfig | None:
        """The head-selection grid, or None when the head is fixed (``head_select`` off)."""
        if not self.head_select:
            return None
        return SelectionConfig(alphas=self.select_alphas, neighbors=self.select_neighbors,
                               pool_layers=self.select_pool_layers, blend=self.select_blend,
                               shared=self.select_shared,
                               shrinks=self.select_shrinks,
                               mlp_hidden=self.select_mlp_hidden, folds=self.select_folds,
                               coverage=self.spread_coverage, seed=self.seed)

    def router_config(self, expert_names: Sequence[str]) -> RouterConfig:
        """The architecture of a new router for these experts (pooling the most states any
        selection candidate needs, when the head is selected)."""
        selection = self.selection()
        pool_layers = selection.max_pool if selection is not None else self.pool_layers
        return RouterConfig(backbone=self.backbone, expert_names=list(expert_names), max_length=self.max_length,
                            lora_r=self.lora_r, lora_layers=self.lora_layers, pool_layers=pool_layers,
                            head_neighbors=self.head_neighbors)

    def train_config(self, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
        """The training run's hyper-parameters; ``overrides`` (a job's params) may set any
        :class:`TrainConfig` field, other keys are ignored."""
        values: dict[str, Any] = {"epochs": self.epochs, "batch_size": self.batch_size,
                                  "learning_rate": self.learning_rate, "loss": self.loss, "seed": self.seed,
                                  "head_ridge": self.head_ridge}
        selection = self.selection()
        if selection is not None and overrides and "seed" in overrides:
            selection = SelectionConfig(**{**asdict(selection), "seed": int(overrides["seed"])})
        values["selection"] = selection
        known = {f.name for f in fields(TrainConfig)}
        values.update({k: v for k, v in (overrides or {}).items() if k in known})
        return TrainConfig(**values)
