"""Fine-tune a local expert on texts (Tryage eq. 5, the expert half): LoRA merged back, or full fine-tuning.

The objective is the one the loss table scores the expert with: masked-LM cross-entropy on masked
tokens (here a fresh random 15 % per step, not the scoring's prompt-seeded mask, so the model does
not learn one fixed mask), or causal-LM mean next-token NLL. Each text may carry a weight (how
confidently the router chose this expert for it); a batch's loss is the weighted mean.

LoRA (peft, on every linear layer but the output embedding) is merged into the weights before the
model is saved, so a fine-tuned version is one plain Hugging Face directory that serves, scores and
loads like its base. A version directory is written under a temporary name, synced, and renamed:
a reader sees the whole directory or none of it.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from experts.local import ExpertError
from router.checkpoint import fsync_dir
from router.layer import pad_token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

METHODS = ("lora", "full")
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune; ``validate`` says in one sentence what is wrong with a value."""

    method: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    epochs: int = 2
    learning_rate: float = 5e-4
    batch_size: int = 16
    max_length: int = 128
    mask_rate: float = 0.15
    seed: int = 0

    def validate(self) -> FinetuneConfig:
        if self.method not in METHODS:
            raise ExpertError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        checks: list[tuple[str, Any, bool]] = [
            ("lora_r", self.lora_r, isinstance(self.lora_r, int) and 0 < self.lora_r <= 1024),
            ("lora_alpha", self.lora_alpha, isinstance(self.lora_alpha, int) and 0 < self.lora_alpha <= 4096),
            ("epochs", self.epochs, isinstance(self.epochs, int) and 0 < self.epochs <= 1000),
            ("learning_rate", self.learning_rate, _number(self.learning_rate) and 0 < self.learning_rate < 1),
            ("batch_size", self.batch_size, isinstance(self.batch_size, int) and 0 < self.batch_size <= 4096),
            ("max_length", self.max_length, isinstance(self.max_length, int) and 8 < self.max_length <= 4096),
            ("mask_rate", self.mask_rate, _number(self.mask_rate) and 0 < self.mask_rate < 1),
            ("seed", self.seed, isinstance(self.seed, int)),
        ]
        for name, value, ok in checks:
            if isinstance(value, bool) or not ok:
                raise ExpertError(f"{name}={value!r} is out of range for fine-tuning")
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class FinetuneHistory:
    epoch_losses: list[float]  # weighted mean training loss per epoch
    steps: int
    seconds: float
    trainable_parameters: int


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


def _mask_batch(ids: torch.Tensor, attention: torch.Tensor, special: set[int], mask_id: int, rate: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked inputs and labels: ``rate`` of each row's maskable tokens (at least one) become the mask."""
    maskable = attention.bool() & ~torch.isin(ids, torch.tensor(sorted(special), dtype=ids.dtype))
    draw = torch.rand(ids.shape, generator=generator) < rate
    chosen = draw & maskable
    for row in range(ids.shape[0]):  # at least one masked token per row that has any
        if not chosen[row].any() and maskable[row].any():
            positions = maskable[row].nonzero().flatten()
            pick = positions[torch.randint(len(positions), (1,), generator=generator)]
            chosen[row, pick] = True
    labels = ids.masked_fill(~chosen, -100)
    return ids.masked_fill(chosen, mask_id), labels


def _row_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    token = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    counts = (labels != -100).sum(1).clamp(min=1)
    return token.sum(1) / counts


def _causal_rows(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids as ``experts.scoring.causal_nll`` scores them (BOS prepended when the tokenizer has one)."""
    bos = tokenizer.bos_token_id
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    rows = [list(e) if bos is None or (e and e[0] == bos) else [bos, *e][:max_length] for e in encoded]
    eos = tokenizer.eos_token_id
    return [r if len(r) > 1 or eos is None else [*r, eos] for r in rows]


def _batch_loss(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, kind: str, texts: Sequence[str],
                config: FinetuneConfig, generator: torch.Generator) -> torch.Tensor:
    """Per-text training loss (a tensor of len(texts)) of one batch."""
    device = _device(model)
    if kind == "masked-lm":
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        encoded = tokenizer(list(texts), truncation=True, max_length=config.max_length)["input_ids"]
        ids, attention = pad_token_ids([list(e) for e in encoded], pad_id)
        masked, labels = _mask_batch(ids, attention, set(tokenizer.all_special_ids), int(tokenizer.mask_token_id),
                                     config.mask_rate, generator)
        logits = model(input_ids=masked.to(device), attention_mask=attention.to(device)).logits
        return _row_losses(logits, labels.to(device))
    pad_id = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
    ids, attention = pad_token_ids([r or [pad_id] for r in _causal_rows(tokenizer, texts, config.max_length)], pad_id)
    logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits[:, :-1]
    targets = ids[:, 1:].masked_fill(attention[:, 1:] == 0, -100)
    return _row_losses(logits, targets.to(device))


def finetune(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, kind: str, texts: Sequence[str],
             weights: Sequence[float] | None, config: FinetuneConfig,
             progress: Progress | None = None) -> tuple[PreTrainedModel, FinetuneHistory]:
    """Train ``model`` on ``texts``; returns the trained model (LoRA merged: a plain model again) and its history."""
    config.validate()
    if not texts:
        raise ExpertError("there is nothing to fine-tune on")
    report = progress or (lambda fraction, message: None)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    weight = torch.tensor(list(weights) if weights is not None else [1.0] * len(texts), dtype=torch.float32)
    if weight.shape[0] != len(texts) or not torch.isfinite(weight).all() or (weight < 0).any() or weight.sum() <= 0:
        raise ExpertError("weights must be one finite, non-negative number per text, not all zero")
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules="all-linear")
        trained: Any = get_peft_model(model, lora)
    else:
        trained = model
    parameters = [p for p in trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(texts) / config.batch_size)
    total = steps_per_epoch * config.epochs
    started, step = time.perf_counter(), 0
    epoch_losses: list[float] = []
    trained.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(texts), generator=generator).tolist()
        seen, summed = 0.0, 0.0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            w = weight[index].to(_device(trained))
            if float(w.sum()) <= 0:
                continue
            losses = _batch_loss(trained, tokenizer, kind, [texts[i] for i in index], config, generator)
            loss = (losses * w).sum() / w.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            summed += float((losses.detach() * w).sum())
            seen += float(w.sum())
            report(step / total, f"epoch {epoch + 1}/{config.epochs}: loss {summed / seen:.4f}")
        epoch_losses.append(summed / seen if seen else float("nan"))
    trainable = sum(p.numel() for p in parameters)
    if config.method == "lora":
        trained = trained.merge_and_unload()
    trained.eval()
    return trained, FinetuneHistory(epoch_losses, step, time.perf_counter() - started, trainable)


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in sorted((p for p in directory.rglob("*") if p.is_dir()), reverse=True):
        fsync_dir(path)
    fsync_dir(directory)


def save_version_dir(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, root: Path,
                     version: int) -> tuple[Path, str]:
    """Write the model atomically as ``root/v<version>-<hash12>``; returns (directory, content hash).

    Everything is written and synced under a hidden temporary name in ``root``, then renamed: the
    directory appears whole or not at all, and an existing directory is never written into.
    """
    from experts.local import quiet_hf_progress
    from experts.registry import content_hash

    root.mkdir(parents=True, exist_ok=True)
    temporary = root / f".tmp-v{version}-{uuid.uuid4().hex}"
    try:
        with quiet_hf_progress():
            model.save_pretrained(temporary)
            tokenizer.save_pretrained(temporary)
        _fsync_tree(temporary)
        digest = content_hash(temporary)
        final = root / f"v{version}-{digest[:12]}"
        if final.exists():
            raise ExpertError(f"{final} already exists; a version directory is never overwritten")
        os.rename(temporary, final)
    except BaseException:
        import shutil

        shutil.rmtree(temporary, ignore_errors=True)
        raise
    fsync_dir(root)
    return final, digest
