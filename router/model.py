"""The perceptive router: a BERT-style encoder (LoRA on its top layers) and a loss-regression head.

The encoder is split in two at ``n_layers - lora_layers``: the lower part is frozen, so its output
can be computed once and cached during training (``lower``); the upper part (LoRA) and the head are
trained (``upper``). Inference runs the same two halves, so cached and full paths agree exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from router.config import RouterConfig

transformers_logging.disable_progress_bar()


def _lora(encoder: nn.Module, config: RouterConfig, split: int, n_layers: int) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    layers = list(range(split, n_layers))
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_targets), layers_to_transform=layers, layers_pattern="layer")
    return inject_adapter_in_model(lora, encoder)


class Router(nn.Module):
    def __init__(self, config: RouterConfig, encoder: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        n_layers = len(encoder.encoder.layer)
        lora_layers = min(config.lora_layers, n_layers) if config.lora_r > 0 else 0
        self.split = n_layers - lora_layers
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        already = getattr(encoder, "peft_config", None) is not None  # a copy of a LoRA'd encoder
        self.encoder = _lora(encoder, config, self.split, n_layers) if lora_layers and not already else encoder
        if already:
            for name, parameter in self.encoder.named_parameters():
                parameter.requires_grad_("lora_" in name)
        hidden, experts = encoder.config.hidden_size, len(config.expert_names)
        self.head: nn.Module = (
            nn.Linear(hidden, experts) if config.head_hidden <= 0
            else nn.Sequential(nn.Linear(hidden, config.head_hidden), nn.GELU(), nn.Linear(config.head_hidden, experts))
        )
        self.register_buffer("loss_mean", torch.zeros(experts))
        self.register_buffer("loss_std", torch.ones(experts))
        self.eval()

    @classmethod
    def from_config(cls, config: RouterConfig) -> "Router":
        encoder = AutoModel.from_pretrained(config.backbone)
        tokenizer = AutoTokenizer.from_pretrained(config.backbone)
        return cls(config, encoder, tokenizer)

    @property
    def expert_names(self) -> list[str]:
        return list(self.config.expert_names)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """LoRA weights, head and normalisation: everything a version adds to the frozen base."""
        names = {n for n, p in self.named_parameters() if p.requires_grad} | {"loss_mean", "loss_std"}
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in names}

    # --- the two halves ----------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts), truncation=True, max_length=self.config.max_length, padding=True,
                              return_tensors="pt")

    def _mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder._create_attention_masks(attention_mask, None, hidden, None, None)[0]

    def _run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        mask = self._mask(hidden, attention_mask)
        for layer in self.encoder.encoder.layer[start:stop]:
            out = layer(hidden, attention_mask=mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Frozen part: embeddings and the layers below the split (pooled features when head-only)."""
        hidden = self.encoder.embeddings(input_ids=input_ids)
        hidden = self._run_layers(hidden, attention_mask, 0, self.split)
        if self.split == len(self.encoder.encoder.layer):
            return self.pool(hidden, attention_mask)
        return hidden

    def upper(self, lower: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Trainable part: LoRA layers, pooling and the head → normalised predictions (B, E)."""
        if self.split < len(self.encoder.encoder.layer):
            hidden = self._run_layers(lower, attention_mask, self.split, len(self.encoder.encoder.layer))
            lower = self.pool(hidden, attention_mask)
        return self.head(lower)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "cls":
            return hidden[:, 0]
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def denormalize(self, normalized: torch.Tensor) -> torch.Tensor:
        if self.config.output == "sigmoid":
            return torch.sigmoid(normalized)
        return normalized * self.loss_std + self.loss_mean

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            lower = self.lower(input_ids, attention_mask)
        return self.denormalize(self.upper(lower, attention_mask))

    @torch.no_grad()
    def predict(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Predicted loss of every expert for every text: (N, E) float32."""
        was_training = self.training
        self.eval()
        outputs = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenize(texts[start : start + batch_size])
            outputs.append(self(batch["input_ids"], batch["attention_mask"]).float().numpy())
        self.train(was_training)
        if not outputs:
            return np.zeros((0, len(self.expert_names)), dtype=np.float32)
        return np.concatenate(outputs).astype(np.float32)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Pooled embeddings of the base encoder's last layer (LoRA included): for baselines."""
        self.eval()
        outputs = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenize(texts[start : start + batch_size])
            hidden = self.encoder.embeddings(input_ids=batch["input_ids"])
            hidden = self._run_layers(hidden, batch["attention_mask"], 0, len(self.encoder.encoder.layer))
            outputs.append(self.pool(hidden, batch["attention_mask"]).numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, self.encoder.config.hidden_size), np.float32)


def _last_linear(head: nn.Module) -> nn.Linear:
    return head if isinstance(head, nn.Linear) else head[-1]  # type: ignore[index,return-value]


@torch.no_grad()
def set_normalization(router: Router, mean: np.ndarray, std: np.ndarray) -> None:
    """Change the de-normalisation while keeping every prediction the same (the head's last layer absorbs it)."""
    if router.config.output == "sigmoid":
        return
    mean_t, std_t = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
    last = _last_linear(router.head)
    ratio = router.loss_std / std_t
    last.weight.mul_(ratio.unsqueeze(1))
    last.bias.copy_((last.bias * router.loss_std + router.loss_mean - mean_t) / std_t)
    router.loss_mean.copy_(mean_t)
    router.loss_std.copy_(std_t)


def _fallback_means(mean_losses: Sequence[float | None]) -> list[float]:
    observed = [m for m in mean_losses if m is not None]
    unseen = (max(observed) + 0.1 * (abs(max(observed)) + 1e-3)) if observed else 1.0
    return [unseen if m is None else float(m) for m in mean_losses]


@torch.no_grad()
def init_head_cold_start(router: Router, mean_losses: Sequence[float | None], params: Sequence[float | None]) -> None:
    """Before any training: predict each expert's mean observed loss (unseen experts a little worse
    than the worst seen); with no observation at all, prefer the largest expert: 1 − params/max."""
    last = _last_linear(router.head)
    for module in router.head.modules():
        if isinstance(module, nn.Linear) and module is last:
            module.weight.zero_()
            module.bias.zero_()
    if any(m is not None for m in mean_losses):
        means = _fallback_means(mean_losses)
    else:
        known = [p for p in params if p is not None and p > 0]
        top = max(known) if known else 1.0
        means = [1.0 - (p / top) if p is not None and p > 0 else 1.0 for p in params]
    if router.config.output == "sigmoid":
        clipped = torch.tensor(means, dtype=torch.float32).clamp(1e-3, 1 - 1e-3)
        last.bias.copy_(torch.log(clipped / (1 - clipped)))
        return
    router.loss_mean.copy_(torch.tensor(means, dtype=torch.float32))
    router.loss_std.fill_(1.0)


@torch.no_grad()
def expand_experts(router: Router, expert_names: Sequence[str], mean_losses: Sequence[float | None]) -> Router:
    """A copy of ``router`` whose head covers ``expert_names`` (in that order): known experts keep
    their rows, new ones start from their mean observed loss."""
    config = copy.deepcopy(router.config)
    config.expert_names = list(expert_names)
    new = Router(config, copy.deepcopy(router.encoder), router.tokenizer)
    new.encoder.load_state_dict(router.encoder.state_dict())
    if not isinstance(router.head, nn.Linear):
        new.head[0].load_state_dict(router.head[0].state_dict())  # type: ignore[index]
    old_last, new_last = _last_linear(router.head), _last_linear(new.head)
    new_last.weight.zero_()
    new_last.bias.zero_()
    fallback = _fallback_means(mean_losses)
    old_index = {name: i for i, name in enumerate(router.expert_names)}
    for i, name in enumerate(expert_names):
        if name in old_index:
            j = old_index[name]
            new_last.weight[i] = old_last.weight[j]
            new_last.bias[i] = old_last.bias[j]
            new.loss_mean[i], new.loss_std[i] = router.loss_mean[j], router.loss_std[j]
        else:
            new.loss_mean[i], new.loss_std[i] = fallback[i], 1.0
    return new
