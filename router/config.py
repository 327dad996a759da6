"""The router's configuration: everything needed to rebuild its architecture from a bundle."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class RouterConfig:
    backbone: str
    expert_names: list[str]
    pooling: str = "mean"  # "mean" over tokens, or "cls"
    max_length: int = 128
    lora_r: int = 8  # 0 = head only
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_layers: int = 2  # LoRA on the top K encoder layers; the layers below stay frozen (and cacheable)
    lora_targets: list[str] = field(default_factory=lambda: ["query", "value"])
    head_hidden: int = 0  # 0 = linear head
    output: str = "linear"  # "sigmoid" for losses in [0, 1] trained with BCE

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', not {self.pooling!r}")
        if self.output not in ("linear", "sigmoid"):
            raise ValueError(f"output must be 'linear' or 'sigmoid', not {self.output!r}")
        if not self.expert_names or len(set(self.expert_names)) != len(self.expert_names):
            raise ValueError("expert_names must be a non-empty list of distinct names")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RouterConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
