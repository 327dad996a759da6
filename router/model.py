"""The perceptive router: a BERT-like encoder (LoRA on its top layers) + a regression head
that predicts every expert's loss for a prompt, in the original loss units."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from router.config import RouterConfig
from router.layer import RegressionHead, additive_mask, neighbour_losses, neighbour_sums, pool
from router.neighbours import shrunk_mean

__all__ = ["Router", "RouterConfig", "expand_experts", "init_head_cold_start", "renormalize", "reshape_head"]

INIT_SEED = 0
"""LoRA and head initialisation are seeded so the same config always builds the same router."""
MEMORY_LIMIT = 50_000
"""Most prompts a neighbour head remembers (a seeded sample when training has more)."""
CACHED_STATES = 3
"""Top encoder states whose pools a head-only router remembers per prompt (the head-selection grid's largest)."""


class Router(nn.Module):
    """Encoder + head. The forward pass is split in two stages so training can cache the first:

    * ``lower``: embeddings and the frozen encoder layers below the LoRA layers;
    * ``upper``: the LoRA layers, pooling, and the head.

    The upper stage also holds any frozen layer whose output is pooled (``pool_layers``); with
    ``lora_r == 0`` training caches the pooled embedding itself.
    With ``head_neighbors > 0`` the router also carries a memory (``memory_keys``,
    ``memory_losses``) of its training prompts, see :meth:`set_memory`.
    """

    # Buffers (registered in __init__), declared so that their type is a tensor, not nn.Module's getattr union.
    loss_mean: torch.Tensor
    loss_std: torch.Tensor
    memory_keys: torch.Tensor
    memory_losses: torch.Tensor
    spread_scale: torch.Tensor
    spread_floor: torch.Tensor

    def __init__(self, config: RouterConfig, backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        if not hasattr(backbone, "embeddings") or not hasattr(getattr(backbone, "encoder", None), "layer"):
            raise ValueError(f"backbone {config.backbone!r} is not BERT-like (needs .embeddings and .encoder.layer)")
        self.config = config
        self.backbone = backbone
        self.tokenizer = tokenizer
        hidden = int(backbone.config.hidden_size)
        num_experts = len(config.expert_names)
        if config.pool_layers > len(encoder_layers(backbone)) + 1:
            raise ValueError(f"pool_layers ({config.pool_layers}) exceeds the backbone's "
                             f"{len(encoder_layers(backbone)) + 1} hidden states")
        self.head = RegressionHead(hidden * config.pool_layers, num_experts, config.head_hidden)
        self.register_buffer("loss_mean", torch.zeros(num_experts))
        self.register_buffer("loss_std", torch.ones(num_experts))
        self.register_buffer("memory_keys", torch.zeros((0, hidden * config.pool_layers), dtype=torch.float16))
        self.register_buffer("memory_losses", torch.zeros((0, num_experts)))
        # Calibration of the spread (router/selection.py): NaN = no spread for that expert.
        self.register_buffer("spread_scale", torch.full((num_experts,), float("nan")))
        self.register_buffer("spread_floor", torch.zeros(num_experts))

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: RouterConfig, tokenizer_path: str | Path | None = None) -> Router:
        """Load the backbone (and tokenizer, from ``tokenizer_path`` or the backbone) from local
        paths; freeze it; add LoRA to the top ``lora_layers`` layers when ``lora_r > 0``."""
        path = Path(config.backbone)
        if not path.is_dir():
            raise FileNotFoundError(f"router backbone {str(path)!r} is not a local directory")
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path or path))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            backbone = AutoModel.from_pretrained(str(path))
            for parameter in backbone.parameters():
                parameter.requires_grad_(False)
            num_layers = len(encoder_layers(backbone))
            if config.lora_r > 0:
                from peft import LoraConfig, inject_adapter_in_model

                first = max(0, num_layers - config.lora_layers)
                lora = LoraConfig(
                    r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                    target_modules=list(config.lora_targets), layers_to_transform=list(range(first, num_layers)),
                    layers_pattern="layer", bias="none",
                )
                backbone = inject_adapter_in_model(lora, backbone)
                if not any("lora_" in name for name, _ in backbone.named_parameters()):
                    raise ValueError(f"lora_targets {config.lora_targets} matched no module of the backbone")
            router = cls(config, backbone, tokenizer)
        router.eval()
        return router

    # ---- properties ---------------------------------------------------------------------
    @property
    def expert_names(self) -> list[str]:
        return list(self.config.expert_names)

    @property
    def num_layers(self) -> int:
        return len(encoder_layers(self.backbone))

    @property
    def head_only(self) -> bool:
        """True when the encoder has no trainable (LoRA) weights: only the head learns."""
        return self.config.lora_r <= 0

    @property
    def split(self) -> int:
        """Index of the first encoder layer of the upper stage: the first LoRA layer or the first
        layer whose input is pooled, whichever is lower (``num_layers`` when head-only and only
        the last state is pooled). Frozen layers in the upper stage just run forward."""
        trainable = self.config.lora_layers if not self.head_only else 0
        return max(0, self.num_layers - max(trainable, self.config.pool_layers - 1))

    # ---- the two stages -----------------------------------------------------------------
    def _layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int) -> list[torch.Tensor]:
        """The input followed by each layer's output: ``stop - start + 1`` hidden states."""
        mask = additive_mask(attention_mask, hidden.dtype)
        states = [hidden]
        for layer in encoder_layers(self.backbone)[start:stop]:
            out = layer(states[-1], mask)
            states.append(out[0] if isinstance(out, tuple) else out)
        return states

    def lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states after the frozen layers, (B, T, H)."""
        hidden: torch.Tensor = self.backbone.get_submodule("embeddings")(input_ids=input_ids)
        return self._layers(hidden, attention_mask, 0, self.split)[-1]

    def upper(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Upper layers + pooling: (B, T, H) → pooled (B, pool_layers · H)."""
        states = self._layers(hidden, attention_mask, self.split, self.num_layers)[-self.config.pool_layers:]
        return torch.cat([pool(s, attention_mask, self.config.pooling) for s in states], dim=-1)

    def head_normalized(self, pooled: torch.Tensor) -> torch.Tensor:
        """The parametric head's output in normalised units, (B, E)."""
        return self.head(pooled)

    def normalized(self, pooled: torch.Tensor) -> torch.Tensor:
        """Predicted losses in normalised units, (B, E): the neighbour head where it has an
        answer (``head_neighbors > 0`` and a memory; blended with the parametric head by
        ``head_blend``, or shrunk toward it by ``head_shrink``), the parametric head elsewhere."""
        out = self.head(pooled)
        if self.config.head_neighbors <= 0 or self.memory_keys.shape[0] == 0:
            return out
        kappa = float(self.config.head_shrink)
        if kappa > 0:
            total, count = neighbour_sums(pooled, self._float_keys(), self.memory_losses, self.config.head_neighbors)
            # In normalised units: Σ (loss − mean) / std over the observed neighbours.
            total = (total - count * self.loss_mean) / self.loss_std
            return shrunk_mean(total, count, out, kappa)
        near = neighbour_losses(pooled, self._float_keys(), self.memory_losses, self.config.head_neighbors)
        near = (near - self.loss_mean) / self.loss_std
        blend = float(self.config.head_blend)
        if blend > 0:
            near = (1.0 - blend) * near + blend * out
        return torch.where(torch.isnan(near), out, near)

    def spread(self, pooled: torch.Tensor) -> torch.Tensor:
        """Half-width of the calibrated interval around each predicted loss (original units), (B, E):
        ``spread_scale · max(dispersion, spread_floor)``, the dispersion being the standard deviation
        of the losses of the ``spread_neighbors`` nearest memory prompts. NaN where unknown."""
        k = self.config.spread_neighbors
        if k <= 0 or self.memory_keys.shape[0] == 0:
            return torch.full((pooled.shape[0], len(self.config.expert_names)), float("nan"))
        from router.selection import neighbour_stats

        _, dispersion = neighbour_stats(pooled, self._float_keys(), self.memory_losses, [k])[0]
        return self.spread_scale * torch.maximum(dispersion, self.spread_floor)

    def _float_keys(self) -> torch.Tensor:
        """float32 copy of the fp16 memory keys, made once per memory rather than once per batch."""
        cached = getattr(self, "_keys_f32", None)
        if cached is None or cached[0] is not self.memory_keys:
            cached = (self.memory_keys, self.memory_keys.float())
            object.__setattr__(self, "_keys_f32", cached)
        return cached[1]

    def set_memory(self, pooled: torch.Tensor, losses: torch.Tensor, seed: int = 0) -> None:
        """Remember (pooled embedding, losses in original units, NaN = unobserved) rows for the
        neighbour head; rows with no observed loss are dropped, at most MEMORY_LIMIT are kept."""
        losses = losses.float()
        keep = torch.nonzero(~torch.isnan(losses).all(dim=1)).flatten()
        if keep.numel() > MEMORY_LIMIT:
            generator = torch.Generator().manual_seed(seed)
            keep = keep[torch.randperm(keep.numel(), generator=generator)[:MEMORY_LIMIT]].sort().values
        keys = pooled[keep].float()
        keys = keys / keys.norm(dim=1, keepdim=True).clamp(min=1e-12)
        self.memory_keys = keys.to(torch.float16).contiguous()
        self.memory_losses = losses[keep].contiguous()

    def denormalize(self, normalized: torch.Tensor) -> torch.Tensor:
        return normalized * self.loss_std + self.loss_mean

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Predicted losses (B, E) in the original loss units."""
        pooled = self.upper(self.lower(input_ids, attention_mask), attention_mask)
        return self.denormalize(self.normalized(pooled))

    # ---- inference helpers --------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.max_length,
                               return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def _batched(self, texts: Sequence[str], batch_size: int,
                 fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> np.ndarray:
        texts = [str(t) for t in texts]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # Sort by length so each batch pads little; restore the caller's order at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks: list[np.ndarray] = []
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), batch_size):
                    batch = self.tokenize([texts[i] for i in order[start:start + batch_size]])
                    chunks.append(fn(batch["input_ids"], batch["attention_mask"]).float().numpy())
        finally:
            self.train(was_training)
        if not chunks:
            return np.zeros((0, 0), dtype=np.float32)
        stacked = np.concatenate(chunks, axis=0)
        out = np.empty_like(stacked)
        out[np.asarray(order)] = stacked
        return out.astype(np.float32)

    def _feature_space(self, kind: str, *detail: object) -> tuple[object, ...]:
        """What frozen features depend on besides the prompt (router/feature_cache.py)."""
        fingerprint = getattr(self, "_backbone_fingerprint", None)
        if fingerprint is None:
            weight = cast(torch.Tensor, self.backbone.get_input_embeddings().weight)
            fingerprint = (str(self.config.backbone), tuple(weight.shape), float(weight[:16].double().sum()))
            object.__setattr__(self, "_backbone_fingerprint", fingerprint)
        return (kind, fingerprint, self.config.max_length, self.config.pooling, *detail)

    def pooled_features(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """The head's input (N, pool_layers · H), float32. A head-only router's are remembered per
        process (:data:`router.feature_cache.FEATURES`): they do not change with training. The cache
        holds the top ``CACHED_STATES`` states (at least ``pool_layers``), so routers that pool fewer
        (head selection picks 1, 2 or 3) share one entry per prompt."""
        if len(texts) == 0:
            return np.zeros((0, self.head_input_size), dtype=np.float32)
        if not self.head_only:
            return self._batched(texts, batch_size, lambda ids, mask: self.upper(self.lower(ids, mask), mask))
        from router.feature_cache import FEATURES

        states = min(max(self.config.pool_layers, CACHED_STATES), self.num_layers + 1)

        def top_states(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            hidden = self.backbone.get_submodule("embeddings")(input_ids=ids)
            top = self._layers(hidden, mask, 0, self.num_layers)[-states:]
            pooled = [pool(s, mask, self.config.pooling) for s in top]
            return torch.cat(pooled, dim=-1)

        features = FEATURES.get(self._feature_space("pooled", states), texts,
                                lambda part: self._batched(part, batch_size, top_states))
        width = int(self.backbone.config.hidden_size)
        return features[:, (states - self.config.pool_layers) * width:]

    @property
    def head_input_size(self) -> int:
        return int(self.backbone.config.hidden_size) * self.config.pool_layers

    def _from_pooled(self, texts: Sequence[str], batch_size: int,
                     fn: Callable[[torch.Tensor], torch.Tensor], width: int) -> np.ndarray:
        """``fn`` (the heads) applied to the pooled features of ``texts``, in eval mode without gradients."""
        pooled = torch.from_numpy(self.pooled_features(texts, batch_size))
        if pooled.shape[0] == 0:
            return np.zeros((0, width), dtype=np.float32)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return fn(pooled).float().numpy()
        finally:
            self.train(was_training)

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Predicted losses (N, E), float32, in eval mode without gradients."""
        return self._from_pooled(texts, batch_size, lambda pooled: self.denormalize(self.normalized(pooled)),
                                 len(self.expert_names))

    def predict_stacked(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Predicted losses and their spreads side by side, (N, 2E): one encoder pass for both."""
        return self._from_pooled(
            texts, batch_size,
            lambda pooled: torch.cat([self.denormalize(self.normalized(pooled)), self.spread(pooled)], dim=1),
            2 * len(self.expert_names))

    def predict_with_spread(self, texts: Sequence[str], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(predicted losses (N, E), spread (N, E)): the spread is the half-width of an interval
        around each predicted loss calibrated to the nominal coverage of training (80 % by
        default, checked on the holdout); NaN where the router has no calibrated spread."""
        stacked = self.predict_stacked(texts, batch_size)
        n = len(self.expert_names)
        return stacked[:, :n], stacked[:, n:]

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Pooled encoder embeddings (N, pool_layers · H) — the head's input (LoRA included), for baselines."""
        return self.pooled_features(texts, batch_size)

    def frozen_embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Mean-pooled output of the frozen lower stage (N, H): features that no training changed, so a
        model fit beside the router on them (the off-policy direct model) never learns from its training.
        Remembered per process like :meth:`pooled_features` (the lower stage never trains)."""
        from router.feature_cache import FEATURES

        if len(texts) == 0:
            return np.zeros((0, int(self.backbone.config.hidden_size)), dtype=np.float32)
        return FEATURES.get(self._feature_space("lower-mean", self.split), texts, lambda part: self._batched(
            part, batch_size, lambda ids, mask: pool(self.lower(ids, mask), mask, "mean")))

    # ---- trainable state ----------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA weights, head weights and normalisation buffers: everything that is not the frozen base."""
        state = self.state_dict()
        return {k: v.detach().clone().contiguous() for k, v in state.items() if _is_trainable_key(k)}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` returned; keys must match exactly, except that a
        state saved before routers had a memory loads with an empty one (and one saved before
        spreads, with no spread)."""
        defaults = {name: buffer[:0] for name, buffer in self.named_buffers() if name.startswith("memory_")}
        defaults["spread_scale"] = torch.full_like(self.spread_scale, float("nan"))
        defaults["spread_floor"] = torch.zeros_like(self.spread_floor)
        state = {**defaults, **state}
        expected = {k for k in self.state_dict() if _is_trainable_key(k)}
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise KeyError(f"trainable state mismatch: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
        for name in ("memory_keys", "memory_losses"):  # the memory's row count varies between versions
            setattr(self, name, torch.empty_like(state[name]))
        result = self.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise KeyError(f"unexpected keys {result.unexpected_keys[:5]}")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if _is_trainable_key(name)]

    def set_train_mode(self) -> None:
        """Training mode used by :func:`router.training.train_router`: the frozen base runs in
        eval mode (no base dropout, so cached lower layers equal what inference computes);
        only LoRA dropout is active."""
        self.eval()
        for name, module in self.named_modules():
            if "lora_dropout" in name:
                module.train()


def encoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The encoder's layer stack of a BERT-like backbone (``backbone.encoder.layer``)."""
    layers = backbone.get_submodule("encoder.layer")
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"backbone's encoder.layer is a {type(layers).__name__}, not a ModuleList")
    return layers


def _is_trainable_key(key: str) -> bool:
    return "lora_" in key or key.startswith("head.") or key in (
        "loss_mean", "loss_std", "memory_keys", "memory_losses", "spread_scale", "spread_floor")


def reshape_head(router: Router, pool_layers: int, head_hidden: int = 0) -> None:
    """Give ``router`` a fresh head over the top ``pool_layers`` states (linear when
    ``head_hidden == 0``) predicting each expert's mean loss; a no-op when it already has that shape.
    The encoder and the normalisation are kept; the memory is emptied when its width changes."""
    if router.config.pool_layers == pool_layers and router.config.head_hidden == head_hidden:
        return
    config = RouterConfig.from_dict({**router.config.to_dict(), "pool_layers": pool_layers,
                                     "head_hidden": head_hidden})
    if pool_layers > router.num_layers + 1:
        raise ValueError(f"pool_layers ({pool_layers}) exceeds the backbone's {router.num_layers + 1} hidden states")
    hidden = int(router.backbone.config.hidden_size)
    head = RegressionHead(hidden * pool_layers, len(router.expert_names), head_hidden)
    with torch.no_grad():
        head.last.weight.zero_()
        head.last.bias.zero_()
    router.config = config
    router.head = head
    if router.memory_keys.shape[1] != hidden * pool_layers:
        router.memory_keys = torch.zeros((0, hidden * pool_layers), dtype=torch.float16)
        router.memory_losses = torch.zeros((0, len(router.expert_names)))


# ---- head surgery --------------------------------------------------------------------------
def renormalize(router: Router, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray) -> None:
    """Change the normalisation buffers while keeping every prediction unchanged (the head's
    output layer is rescaled to compensate), so training can continue from any router."""
    new_mean = torch.as_tensor(np.asarray(mean, dtype=np.float64), dtype=torch.float32)
    new_std = torch.as_tensor(np.asarray(std, dtype=np.float64), dtype=torch.float32)
    if bool((new_std <= 0).any()):
        raise ValueError("std must be > 0")
    with torch.no_grad():
        old_mean, old_std = router.loss_mean.clone(), router.loss_std.clone()
        scale = old_std / new_std
        router.head.last.weight.mul_(scale[:, None])
        router.head.last.bias.copy_((router.head.last.bias * old_std + old_mean - new_mean) / new_std)
        router.loss_mean.copy_(new_mean)
        router.loss_std.copy_(new_std)


def _cold_values(mean_losses: Sequence[float | None], params: Sequence[float | None] | None,
                 margin: float) -> list[float]:
    observed = [float(m) for m in mean_losses if m is not None and math.isfinite(float(m))]
    if observed:
        high = max(observed)
        fallback = high + margin * max(1.0, abs(high))
        return [float(m) if m is not None and math.isfinite(float(m)) else fallback for m in mean_losses]
    sizes = [float(p) if p is not None and math.isfinite(float(p)) and float(p) > 0 else None
             for p in (params or [None] * len(mean_losses))]
    known = [s for s in sizes if s is not None]
    if not known:
        return [1.0] * len(mean_losses)
    largest = max(known)
    return [1.0 - s / largest if s is not None else 1.0 for s in sizes]


def init_head_cold_start(router: Router, mean_losses: Sequence[float | None], params: Sequence[float | None],
                         margin: float = 0.1) -> None:
    """Make the router output a constant per expert before any training.

    Output_i = expert i's mean observed loss; an expert without observations gets
    max(observed means) + margin·max(1, |max|). With no observation at all, prefer the largest
    expert: output_i = 1 − params_i / max(params) (unknown params → 1.0). The head's output
    layer is zeroed, so the first training step starts from exactly these values.
    """
    n = len(router.expert_names)
    if len(mean_losses) != n or len(params) != n:
        raise ValueError(f"need one mean loss and one params value per expert ({n}), "
                         f"got {len(mean_losses)} and {len(params)}")
    values = _cold_values(mean_losses, params, margin)
    with torch.no_grad():
        router.head.last.weight.zero_()
        router.head.last.bias.zero_()
        router.loss_mean.copy_(torch.tensor(values, dtype=torch.float32))
        router.loss_std.fill_(1.0)


def expand_experts(router: Router, new_expert_names: Sequence[str], mean_losses: Sequence[float | None],
                   margin: float = 0.1) -> Router:
    """A copy of ``router`` whose head follows ``new_expert_names``.

    Experts the router already knows keep their head rows and normalisation; new experts get
    a zero row predicting their mean loss (``mean_losses`` is aligned with
    ``new_expert_names``; entries for known experts are ignored). Dropped experts disappear.
    The encoder (LoRA included) is copied unchanged; ``router`` itself is not modified.
    """
    names = [str(n) for n in new_expert_names]
    if len(mean_losses) != len(names):
        raise ValueError(f"need one mean loss per new expert ({len(names)}), got {len(mean_losses)}")
    config = RouterConfig.from_dict({**router.config.to_dict(), "expert_names": names})
    fresh = copy.deepcopy(router)
    fresh.config = config
    old_index = {name: i for i, name in enumerate(router.expert_names)}
    # Unobserved new experts: above every known mean (from the data or from the old router).
    known_means = [float(m) for m in mean_losses if m is not None and math.isfinite(float(m))]
    known_means += [float(v) for v in router.loss_mean.tolist()]
    high = max(known_means) if known_means else 1.0
    default_new = high + margin * max(1.0, abs(high))
    old_last = router.head.last
    new_last = nn.Linear(old_last.in_features, len(names))
    mean = torch.zeros(len(names))
    std = torch.ones(len(names))
    with torch.no_grad():
        new_last.weight.zero_()
        new_last.bias.zero_()
        for i, name in enumerate(names):
            if name in old_index:
                j = old_index[name]
                new_last.weight[i] = old_last.weight[j]
                new_last.bias[i] = old_last.bias[j]
                mean[i], std[i] = router.loss_mean[j], router.loss_std[j]
            else:
                m = mean_losses[i]
                mean[i] = float(m) if m is not None and math.isfinite(float(m)) else default_new
    fresh.head.last = new_last
    fresh.loss_mean = mean
    fresh.loss_std = std
    memory = torch.full((router.memory_losses.shape[0], len(names)), float("nan"))
    for i, name in enumerate(names):
        if name in old_index:
            memory[:, i] = router.memory_losses[:, old_index[name]]
    fresh.memory_losses = memory
    scale, floor = torch.full((len(names),), float("nan")), torch.zeros(len(names))
    for i, name in enumerate(names):
        if name in old_index:
            scale[i], floor[i] = router.spread_scale[old_index[name]], router.spread_floor[old_index[name]]
    fresh.spread_scale, fresh.spread_floor = scale, floor
    fresh.eval()
    return fresh
