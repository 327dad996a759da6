"""RouterConfig: everything needed to rebuild a router's architecture (not its weights)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

POOLINGS: tuple[str, ...] = ("mean", "cls")


@dataclass
class RouterConfig:
    """Architecture of a router.

    backbone: local path of a BERT-like encoder (``embeddings`` + ``encoder.layer``), loaded
        with ``AutoModel.from_pretrained``; never fetched from the network.
    expert_names: the head's output order.
    pooling: "mean" (mask-aware mean of the last hidden states) or "cls" (the first token's
        last hidden state; BERT's pooler dense layer is not used).
    lora_r: LoRA rank; 0 = head-only training (the whole encoder stays frozen).
    lora_layers: LoRA only on the top K encoder layers; the layers below are frozen, so
        training can cache their output once. K ≥ the number of layers means all layers.
    lora_targets: names of nn.Linear modules inside each encoder layer that get LoRA,
        matched by suffix as peft does: for BERT "query", "key", "value" (self-attention),
        "attention.output.dense", "intermediate.dense", "output.dense" ("dense" = all three).
    head_hidden: 0 = linear head on the pooled embedding; > 0 = one hidden GELU layer.
    pool_layers: pool each of the top N hidden states (the outputs of the last N encoder layers;
        the embeddings' output counts as the lowest state) and concatenate them, so the head sees
        N × hidden features.
    head_neighbors: k > 0 = neighbour head: an expert's predicted loss is the mean observed loss
        of the k most cosine-similar prompts in the router's memory (pooled embeddings and losses
        of its training prompts, rebuilt by every training run); the parametric head answers for
        an expert none of the k neighbours observed. 0 = parametric head only.
    head_blend: weight of the parametric head where the neighbour head answers (0 = the neighbour
        head alone, 0.5 = the average of the two; chosen by head selection, router/selection.py).
    head_shrink: κ ≥ 0, a pseudo-count: where the neighbour head answers, an expert's prediction is
        (Σ observed losses + κ · parametric prediction) / (observed count + κ) over the k neighbours,
        the neighbour mean shrunk toward the parametric head as if κ more neighbours had observed
        it (0 = no shrinkage). Under bandit feedback most experts are observed by one or two of a
        prompt's neighbours; their plain mean is one or two losses, and the argmin over such means
        picks the luckiest (chosen by head selection, router/selection.py).
    spread_neighbors: k > 0 = each prediction carries a spread (half-width of a calibrated interval,
        see :meth:`router.model.Router.predict_with_spread`) from the dispersion of the losses of its
        k nearest prompts in the memory; 0 = no spread.
    """

    backbone: str
    expert_names: list[str]
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = 128
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_layers: int = 2
    lora_targets: list[str] = field(default_factory=lambda: ["query", "value"])
    head_hidden: int = 0
    pool_layers: int = 1
    head_neighbors: int = 0
    head_blend: float = 0.0
    head_shrink: float = 0.0
    spread_neighbors: int = 0

    def __post_init__(self) -> None:
        self.backbone = str(self.backbone)
        self.expert_names = [str(name) for name in self.expert_names]
        self.lora_targets = [str(t) for t in self.lora_targets]
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with a clear message for an unusable configuration."""
        if not self.expert_names:
            raise ValueError("a router needs at least one expert")
        if len(set(self.expert_names)) != len(self.expert_names):
            raise ValueError(f"expert names must be unique, got {self.expert_names}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0, got {self.lora_r}")
        if self.lora_r > 0 and self.lora_layers < 1:
            raise ValueError(f"lora_layers must be >= 1 when lora_r > 0, got {self.lora_layers}")
        if self.lora_r > 0 and not self.lora_targets:
            raise ValueError("lora_targets must name at least one module when lora_r > 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.pool_layers < 1:
            raise ValueError(f"pool_layers must be >= 1, got {self.pool_layers}")
        if self.head_neighbors < 0:
            raise ValueError(f"head_neighbors must be >= 0, got {self.head_neighbors}")
        if not 0.0 <= self.head_blend <= 1.0:
            raise ValueError(f"head_blend must be in [0, 1], got {self.head_blend}")
        if not (self.head_shrink >= 0.0 and math.isfinite(self.head_shrink)):
            raise ValueError(f"head_shrink must be a finite number >= 0, got {self.head_shrink}")
        if self.spread_neighbors < 0:
            raise ValueError(f"spread_neighbors must be >= 0, got {self.spread_neighbors}")
        if self.head_hidden < 0:
            raise ValueError(f"head_hidden must be >= 0, got {self.head_hidden}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RouterConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown RouterConfig fields: {sorted(unknown)}")
        return cls(**data)
