"""Train a router on a loss table. Fast on a CPU: the frozen lower layers run once, then only the
LoRA layers and the head train over the cached hidden states."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from router.losses import masked_divergence, observed_stats
from router.model import Router, set_normalization

Progress = Callable[[float, str], None]


@dataclass
class TrainConfig:
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    loss: str = "huber"
    seed: int = 0
    val_share: float = 0.1
    patience: int = 2
    normalize: bool = True


@dataclass
class TrainReport:
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0
    cache_seconds: float = 0.0
    examples_per_second: float = 0.0
    n_train: int = 0
    n_val: int = 0


def _val_rows(prompts: Sequence[str], share: float, seed: int) -> np.ndarray:
    """Validation rows chosen by a hash of the prompt (stable under reordering)."""
    values = np.array([int.from_bytes(hashlib.sha256(f"val{seed}:{p}".encode()).digest()[:8], "big") / 2**64
                       for p in prompts])
    return values < share


@torch.no_grad()
def _cache_lower(router: Router, prompts: Sequence[str], batch_size: int, report: Progress
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run the frozen part once. Batches are formed by length so padding stays small."""
    order = np.argsort([len(p) for p in prompts], kind="stable")
    lowers: list[torch.Tensor] = [None] * len(prompts)  # type: ignore[list-item]
    masks: list[torch.Tensor] = [None] * len(prompts)  # type: ignore[list-item]
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = router.tokenize([prompts[i] for i in rows])
        lower = router.lower(batch["input_ids"], batch["attention_mask"])
        for k, row in enumerate(rows):
            length = int(batch["attention_mask"][k].sum())
            if lower.dim() == 3:
                lowers[row] = lower[k, :length].to(torch.float16)
                masks[row] = batch["attention_mask"][k, :length]
            else:
                lowers[row] = lower[k]
                masks[row] = batch["attention_mask"][k, :1]
        report(min(start + batch_size, len(order)) / len(order), "encoding prompts with the frozen layers")
    return lowers, masks


def _collate(lowers: list[torch.Tensor], masks: list[torch.Tensor], rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if lowers[rows[0]].dim() == 1:
        return torch.stack([lowers[i] for i in rows]).float(), torch.ones(len(rows), 1, dtype=torch.long)
    width = max(lowers[i].shape[0] for i in rows)
    hidden = torch.zeros(len(rows), width, lowers[rows[0]].shape[1])
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for k, i in enumerate(rows):
        n = lowers[i].shape[0]
        hidden[k, :n] = lowers[i].float()
        mask[k, :n] = masks[i]
    return hidden, mask


def _targets(router: Router, targets: np.ndarray, kind: str) -> torch.Tensor:
    if router.config.output == "sigmoid" or kind == "bce":
        return torch.as_tensor(np.nan_to_num(targets), dtype=torch.float32)
    normalized = (targets - router.loss_mean.numpy()) / router.loss_std.numpy()
    return torch.as_tensor(np.nan_to_num(normalized), dtype=torch.float32)


def _epoch_loss(router: Router, lowers, masks, rows: np.ndarray, y: torch.Tensor, observed: torch.Tensor,  # type: ignore[no-untyped-def]
                kind: str, batch_size: int) -> float:
    total, weight = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            hidden, mask = _collate(lowers, masks, batch)
            loss = masked_divergence(router.upper(hidden, mask), y[batch], observed[batch], kind)
            n = float(observed[batch].sum())
            total, weight = total + float(loss) * n, weight + n
    return total / max(weight, 1.0)


def train_router(router: Router, prompts: Sequence[str], targets: np.ndarray, config: TrainConfig,
                 progress: Progress | None = None) -> TrainReport:
    """Fit ``router`` in place on (prompt, expert) losses; NaN marks an unobserved entry.

    Early stopping on a validation split of the prompts; the best epoch's weights are kept.
    """
    report = progress or (lambda fraction, message: None)
    targets = np.asarray(targets, dtype=np.float32)
    if targets.shape != (len(prompts), len(router.expert_names)):
        raise ValueError(f"targets shape {targets.shape} != ({len(prompts)}, {len(router.expert_names)})")
    if config.loss == "bce" and router.config.output != "sigmoid":
        raise ValueError("the bce divergence needs a router with output='sigmoid'")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()

    if config.normalize and router.config.output == "linear":
        mean, std = observed_stats(targets)
        seen = ~np.isnan(targets).all(0)
        set_normalization(router, np.where(seen, mean, router.loss_mean.numpy()),
                          np.where(seen, std, router.loss_std.numpy()))
    observed = torch.as_tensor(~np.isnan(targets))
    y = _targets(router, targets, config.loss)

    router.eval()  # dropout off: cached and full paths agree
    lowers, masks = _cache_lower(router, prompts, max(config.batch_size, 64), lambda f, m: report(0.3 * f, m))
    cache_seconds = time.perf_counter() - started

    has_rows = observed.any(1).numpy()
    val = _val_rows(prompts, config.val_share, config.seed) & has_rows if len(prompts) >= 10 else np.zeros(len(prompts), bool)
    train_rows, val_rows = np.flatnonzero(has_rows & ~val), np.flatnonzero(val)
    parameters = [p for p in router.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    result = TrainReport(cache_seconds=cache_seconds, n_train=len(train_rows), n_val=len(val_rows))
    best, best_state, stale = math.inf, router.trainable_state(), 0
    steps_per_epoch = max(1, math.ceil(len(train_rows) / config.batch_size))
    seen_examples = 0
    train_started = time.perf_counter()
    for epoch in range(config.epochs):
        order = rng.permutation(train_rows)
        running = 0.0
        for step, start in enumerate(range(0, len(order), config.batch_size)):
            batch = order[start : start + config.batch_size]
            hidden, mask = _collate(lowers, masks, batch)
            loss = masked_divergence(router.upper(hidden, mask), y[batch], observed[batch], config.loss)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            running += float(loss.detach())
            seen_examples += len(batch)
            done = (epoch + (step + 1) / steps_per_epoch) / config.epochs
            report(0.3 + 0.7 * done, f"epoch {epoch + 1}/{config.epochs}, loss {running / (step + 1):.4f}")
        result.train_losses.append(running / steps_per_epoch)
        if len(val_rows):
            val_loss = _epoch_loss(router, lowers, masks, val_rows, y, observed, config.loss, config.batch_size)
            result.val_losses.append(val_loss)
            if val_loss < best - 1e-6:
                best, best_state, stale, result.best_epoch = val_loss, router.trainable_state(), 0, epoch
            else:
                stale += 1
                if stale > config.patience:
                    break
        else:
            best_state, result.best_epoch = router.trainable_state(), epoch
    router.load_state_dict(best_state, strict=False)
    router.eval()
    result.seconds = time.perf_counter() - started
    result.examples_per_second = seen_examples / max(time.perf_counter() - train_started, 1e-9)
    report(1.0, f"trained: best epoch {result.best_epoch + 1}, {result.examples_per_second:.0f} examples/s")
    return result
