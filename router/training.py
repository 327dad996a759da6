"""Training a router on a loss table with missing entries.

Speed on CPU comes from the split forward pass (see :class:`router.model.Router`): prompts are
tokenised once, the frozen lower part of the encoder runs once over all of them under
``no_grad`` and its hidden states are cached (fp16 by default); each epoch then trains only
the top ``lora_layers`` LoRA layers and the head on the cache. With ``lora_r == 0`` the
pooled embeddings are cached and only the head trains.

The frozen base stays in eval mode during training (no base dropout; LoRA dropout is the
regulariser), which is what makes the cached lower stage identical to inference.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import cast

import numpy as np
import torch

from router.hashing import Salt, stable_fraction
from router.layer import pad_token_ids
from router.losses import KINDS, Normalizer, masked_divergence
from router.model import Router, renormalize, reshape_head
from router.selection import RidgePath, Selection, SelectionConfig, fit_mlp, select_head, top_layers

Progress = Callable[[float, str], None]


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run.

    val_share: share of prompts held out for early stopping, chosen by prompt hash (the same
        prompt always lands on the same side, duplicates never straddle the split).
    patience: stop after this many epochs without a better validation loss; the best state
        (possibly the untrained one, epoch 0) is restored at the end.
    normalize: refit the per-expert loss mean/std on the training targets (predictions are kept
        unchanged by rescaling the head) so every expert's loss has unit scale.
    cache: cache the frozen lower layers' output (False = full forward every step; for benchmarks).
    cache_dtype: "float16" halves the cache's memory; "float32" makes training see exactly what
        inference computes.
    head_ridge: > 0 = before the first epoch, set a linear head (``head_hidden == 0``) to the
        closed-form ridge regression of the (normalised) observed losses on the pooled training
        embeddings, per expert over its observed rows, with this L2 penalty α (absolute, as in
        scikit-learn's Ridge; the bias is not penalised). That state is epoch 0, so early stopping
        keeps it unless gradient epochs lower the validation loss. 0 = off.
    selection: None = keep the router's head as configured; a grid = after the epochs, choose the
        head by cross-validation on the pooled embeddings of every training row (LoRA included) and
        refit it on all of them, and calibrate each prediction's spread (router/selection.py).
    """

    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-3
    loss: str = "huber"
    seed: int = 0
    val_share: float = 0.1
    patience: int = 2
    normalize: bool = True
    weight_decay: float = 0.01
    cache: bool = True
    cache_dtype: str = "float16"
    eval_batch_size: int = 64
    head_ridge: float = 0.0
    selection: SelectionConfig | None = None

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
        if self.loss not in KINDS:
            raise ValueError(f"loss must be one of {KINDS}, got {self.loss!r}")
        if not 0.0 <= self.val_share < 1.0:
            raise ValueError(f"val_share must be in [0, 1), got {self.val_share}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if not (self.head_ridge >= 0 and math.isfinite(self.head_ridge)):
            raise ValueError(f"head_ridge must be a finite number >= 0, got {self.head_ridge}")
        if self.cache_dtype not in ("float16", "float32"):
            raise ValueError(f"cache_dtype must be 'float16' or 'float32', got {self.cache_dtype!r}")
        if self.selection is not None:
            self.selection.validate()


@dataclass
class TrainReport:
    """What happened in a training run. Epoch 0 is the state before training."""

    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)  # index 0 = before training
    best_epoch: int = 0
    best_val_loss: float | None = None
    epochs_run: int = 0
    stopped_early: bool = False
    n_train: int = 0
    n_val: int = 0
    seconds: float = 0.0
    cache_seconds: float = 0.0
    examples_per_second: float = 0.0  # training examples seen per second, whole run incl. cache
    train_examples_per_second: float = 0.0  # epochs only, cache excluded
    selection: dict[str, object] | None = None  # head selection: the CV table and the chosen head
    selection_seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def hash_split(prompts: Sequence[str], val_share: float) -> np.ndarray:
    """Boolean validation mask chosen by each prompt's salted hash (independent of the label
    sample and the holdout); at least one validation prompt when val_share > 0 and there are two
    or more distinct prompts, and at least one training prompt."""
    if val_share <= 0 or not prompts:
        return np.zeros(len(prompts), dtype=bool)
    keys = np.array([stable_fraction(p, salt=Salt.VALIDATION) for p in prompts])
    mask = keys < val_share
    if not mask.any() and len(set(prompts)) >= 2:
        mask = keys == keys.min()
    if mask.all():
        mask = keys < np.sort(np.unique(keys))[-1]
    return mask


class _Throttle:
    def __init__(self, progress: Progress | None, every: float = 0.5) -> None:
        self.progress, self.every, self.last = progress, every, 0.0

    def __call__(self, fraction: float, message: str, force: bool = False) -> None:
        now = time.perf_counter()
        if self.progress is not None and (force or now - self.last >= self.every):
            self.last = now
            self.progress(min(max(fraction, 0.0), 1.0), message)


def _pad_hidden(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(r.shape[0] for r in rows)
    hidden = torch.zeros((len(rows), width, rows[0].shape[1]), dtype=torch.float32)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        hidden[i, :r.shape[0]] = r.float()
        mask[i, :r.shape[0]] = 1
    return hidden, mask


class _Data:
    """Tokenised prompts plus, when caching, the frozen stage's output per prompt."""

    def __init__(self, router: Router, prompts: Sequence[str], config: TrainConfig, report: _Throttle,
                 span: tuple[float, float]) -> None:
        self.router = router
        self.texts = [str(p) for p in prompts]
        encoded = router.tokenizer(list(prompts), truncation=True, max_length=router.config.max_length,
                                   padding=False)
        self.ids: list[list[int]] = [list(x) for x in encoded["input_ids"]]
        self.pad_id = int(router.tokenizer.pad_token_id or 0)
        self.head_only = router.head_only
        self.cached = config.cache or self.head_only
        self.items: list[torch.Tensor] | torch.Tensor | None = None
        if self.cached:
            self._build(config, report, span)

    def _build(self, config: TrainConfig, report: _Throttle, span: tuple[float, float]) -> None:
        dtype = torch.float16 if config.cache_dtype == "float16" else torch.float32
        if self.head_only:  # the frozen encoder's pooled states, remembered across runs (router/feature_cache.py)
            report(span[0], f"encoding {len(self.texts)} prompts (frozen encoder)")
            features = self.router.pooled_features(self.texts, config.eval_batch_size)
            self.items = torch.from_numpy(features).to(dtype)
            report(span[1], f"encoded {len(self.texts)} prompts")
            return
        order = sorted(range(len(self.ids)), key=lambda i: len(self.ids[i]))
        out: list[torch.Tensor | None] = [None] * len(self.ids)
        router = self.router
        router.eval()
        step = config.eval_batch_size
        with torch.no_grad():
            for start in range(0, len(order), step):
                chunk = order[start:start + step]
                ids, mask = pad_token_ids([self.ids[i] for i in chunk], self.pad_id)
                hidden = router.lower(ids, mask)
                if self.head_only:
                    hidden = router.upper(hidden, mask)
                for row, i in enumerate(chunk):
                    value = hidden[row] if self.head_only else hidden[row, :len(self.ids[i])]
                    out[i] = value.to(dtype).clone()
                done = min(start + step, len(order)) / max(1, len(order))
                report(span[0] + (span[1] - span[0]) * done,
                       f"caching frozen layers: {start + len(chunk)}/{len(order)}")
        filled = cast(list[torch.Tensor], out)  # the loop above set every entry
        self.items = torch.stack(filled) if self.head_only else filled

    def pooled(self, index: Sequence[int]) -> torch.Tensor:
        """Pooled embeddings for a batch; gradients flow through the trainable layers only."""
        router = self.router
        if self.head_only:
            assert isinstance(self.items, torch.Tensor)
            return self.items[list(index)].float()
        if self.cached:
            assert isinstance(self.items, list)
            hidden, mask = _pad_hidden([self.items[i] for i in index])
        else:
            ids, mask = pad_token_ids([self.ids[i] for i in index], self.pad_id)
            with torch.no_grad():
                hidden = router.lower(ids, mask)
        return router.upper(hidden, mask)


def _batches(indices: np.ndarray, lengths: np.ndarray, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Random batches of similar length: shuffle, sort within windows of 16 batches, shuffle
    the batches. Less padding on real prompts of mixed length; deterministic under the generator."""
    shuffled = indices[torch.randperm(indices.size, generator=generator).numpy()].tolist()
    window = batch_size * 16
    batches: list[list[int]] = []
    for start in range(0, len(shuffled), window):
        part = sorted(shuffled[start:start + window], key=lambda i: int(lengths[i]))
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def ridge_solution(features: np.ndarray, targets: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-column ridge regression with an unpenalised bias, over each column's non-NaN rows.

    Returns (weight (E, H), bias (E,)) so that prediction = features @ weight.T + bias. A column
    with no observed row gets weight 0 and bias 0.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    weight = np.zeros((y.shape[1], x.shape[1]))
    bias = np.zeros(y.shape[1])
    eye = alpha * np.eye(x.shape[1])
    for j in range(y.shape[1]):
        seen = ~np.isnan(y[:, j])
        if not seen.any():
            continue
        xs, ys = x[seen], y[seen, j]
        x_mean, y_mean = xs.mean(axis=0), ys.mean()
        xc = xs - x_mean
        w = np.linalg.solve(xc.T @ xc + eye, xc.T @ (ys - y_mean))
        weight[j], bias[j] = w, y_mean - x_mean @ w
    return weight, bias


def _pooled_features(router: Router, data: _Data, index: np.ndarray, batch_size: int) -> torch.Tensor:
    router.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, index.size, batch_size):
            chunks.append(data.pooled(index[start:start + batch_size].tolist()).float())
    return torch.cat(chunks) if chunks else torch.zeros((0, router.head.last.in_features))


def remember(router: Router, data: _Data, index: np.ndarray, target: torch.Tensor, config: TrainConfig) -> None:
    """Fill the neighbour head's memory with these rows' pooled embeddings and losses."""
    router.set_memory(_pooled_features(router, data, index, config.eval_batch_size), target[list(index)],
                      seed=config.seed)


def fit_ridge_head(router: Router, data: _Data, index: np.ndarray, target: torch.Tensor, alpha: float,
                   batch_size: int) -> None:
    """Set the linear head to the ridge fit of the normalised targets on the pooled embeddings."""
    features = _pooled_features(router, data, index, batch_size).double().numpy()
    normalized = ((target[list(index)] - router.loss_mean) / router.loss_std).double().numpy()
    weight, bias = ridge_solution(features, normalized, alpha)
    with torch.no_grad():
        router.head.last.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        router.head.last.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


def _prepare_targets(router: Router, prompts: Sequence[str], targets: np.ndarray) -> tuple[list[str], np.ndarray]:
    values = np.asarray(targets, dtype=np.float64)
    n_experts = len(router.expert_names)
    if values.ndim != 2 or values.shape != (len(prompts), n_experts):
        raise ValueError(f"targets must have shape ({len(prompts)}, {n_experts}) = (prompts, experts), "
                         f"got {values.shape}")
    if np.isinf(values).any():
        raise ValueError("targets hold infinite values; use NaN for unobserved entries")
    keep = ~np.isnan(values).all(axis=1)
    if not keep.any():
        raise ValueError("targets hold no observed loss at all")
    return [str(prompts[int(i)]) for i in np.flatnonzero(keep)], values[keep]


def train_router(router: Router, prompts: Sequence[str], targets: np.ndarray, config: TrainConfig,
                 progress: Progress | None = None) -> TrainReport:
    """Train ``router`` in place on (prompt, per-expert loss) rows; NaN marks unobserved entries.

    Only observed entries contribute to the loss. The best state on the validation split
    (possibly the starting state) is kept. Deterministic for a given ``config.seed``.
    """
    config.validate()
    started = time.perf_counter()
    report = _Throttle(progress)
    texts, values = _prepare_targets(router, prompts, targets)
    is_val = hash_split(texts, config.val_share)
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    result = TrainReport(n_train=int(train_idx.size), n_val=int(val_idx.size))
    report(0.0, f"training on {train_idx.size} prompts, validating on {val_idx.size}", force=True)

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    if config.selection is not None:  # pool every state a candidate needs; the head is refitted at the end
        reshape_head(router, min(config.selection.max_pool, router.num_layers + 1), 0)
    if config.normalize:
        fitted = Normalizer.fit(values[train_idx])
        old_mean = router.loss_mean.numpy().astype(np.float64)
        old_std = router.loss_std.numpy().astype(np.float64)
        seen = fitted.count > 0
        renormalize(router, np.where(seen, fitted.mean, old_mean), np.where(seen, fitted.std, old_std))

    cache_span = (0.0, 0.2) if config.cache or router.head_only else (0.0, 0.0)
    data = _Data(router, texts, config, report, cache_span)
    result.cache_seconds = time.perf_counter() - started
    target = torch.tensor(values, dtype=torch.float32)
    lengths = np.array([len(ids) for ids in data.ids])
    observed = ~torch.isnan(target)

    def batch_loss(index: Sequence[int], full: bool = False) -> tuple[torch.Tensor, int]:
        # Gradient steps train the parametric head everywhere; evaluation scores the whole router
        # (the neighbour head, where it answers, included).
        pooled = data.pooled(index)
        normalized = router.normalized(pooled) if full else router.head_normalized(pooled)
        t, m = target[list(index)], observed[list(index)]
        if config.loss == "bce":
            return masked_divergence(router.denormalize(normalized), t, m, "bce"), int(m.sum())
        t_norm = (t - router.loss_mean) / router.loss_std
        return masked_divergence(normalized, t_norm, m, config.loss), int(m.sum())

    def evaluate(index: np.ndarray) -> float | None:
        if index.size == 0:
            return None
        router.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, index.size, config.eval_batch_size):
                loss, n = batch_loss(index[start:start + config.eval_batch_size].tolist(), full=True)
                total, count = total + float(loss.detach()) * n, count + n
        return total / max(count, 1)

    if config.head_ridge > 0:
        if router.config.head_hidden != 0:
            raise ValueError("head_ridge needs a linear head (head_hidden == 0)")
        fit_ridge_head(router, data, train_idx, target, config.head_ridge, config.eval_batch_size)
    if router.config.head_neighbors > 0:
        remember(router, data, train_idx, target, config)

    parameters = router.trainable_parameters()
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    initial = evaluate(val_idx)
    result.val_losses.append(initial if initial is not None else float("nan"))
    best_state = router.trainable_state_dict()
    best_loss, result.best_val_loss = (initial, initial) if initial is not None else (math.inf, None)
    stale = 0
    train_started = time.perf_counter()
    steps_per_epoch = max(1, math.ceil(train_idx.size / config.batch_size))
    low, high = cache_span[1], 0.98
    for epoch in range(1, config.epochs + 1):
        router.set_train_mode()
        total, count = 0.0, 0
        for step, index in enumerate(_batches(train_idx, lengths, config.batch_size, generator)):
            loss, n = batch_loss(index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()) * n, count + n
            done = ((epoch - 1) * steps_per_epoch + step + 1) / (config.epochs * steps_per_epoch)
            report(low + (high - low) * done, f"epoch {epoch}/{config.epochs}, step {step + 1}/{steps_per_epoch}, "
                                              f"loss {total / max(count, 1):.4f}")
        result.train_losses.append(total / max(count, 1))
        result.epochs_run = epoch
        if router.config.head_neighbors > 0 and not router.head_only:
            remember(router, data, train_idx, target, config)  # LoRA moved the embeddings
        val = evaluate(val_idx)
        result.val_losses.append(val if val is not None else float("nan"))
        report(low + (high - low) * epoch / config.epochs,
               f"epoch {epoch}: train {result.train_losses[-1]:.4f}" + (f", val {val:.4f}" if val is not None else ""),
               force=True)
        if val is None:
            best_state, result.best_epoch = router.trainable_state_dict(), epoch
            continue
        if val < best_loss:
            best_loss, result.best_val_loss, result.best_epoch = val, val, epoch
            best_state, stale = router.trainable_state_dict(), 0
        else:
            stale += 1
            if stale >= config.patience:
                result.stopped_early = epoch < config.epochs
                break
    router.load_trainable_state_dict(best_state)
    everything = np.arange(len(texts))
    if config.selection is not None and len(texts) >= 2 * config.selection.folds:
        report(0.985, f"selecting the head by {config.selection.folds}-fold CV on {len(texts)} rows", force=True)
        selected_at = time.perf_counter()
        features = _pooled_features(router, data, everything, config.eval_batch_size).double().numpy()
        selection = select_head(features, values, config.selection, max_pool=router.config.pool_layers)
        apply_selection(router, selection, features, values, config)
        result.selection = selection.to_metrics()
        result.selection_seconds = time.perf_counter() - selected_at
    else:
        if config.selection is not None:
            result.selection = {"skipped": f"{len(texts)} rows are too few for {config.selection.folds}-fold CV"}
        if router.config.head_neighbors > 0:  # validation is over: remember every row
            remember(router, data, everything, target, config)
    router.eval()
    finished = time.perf_counter()
    examples = result.n_train * result.epochs_run
    result.seconds = finished - started
    result.examples_per_second = examples / max(result.seconds, 1e-9)
    result.train_examples_per_second = examples / max(finished - train_started, 1e-9)
    report(1.0, f"done: best epoch {result.best_epoch}, {result.examples_per_second:.1f} examples/s", force=True)
    return result


def apply_selection(router: Router, selection: Selection, features: np.ndarray, values: np.ndarray,
                    config: TrainConfig) -> None:
    """Make ``router`` the selected head, fitted on every row: its pooled states, the parametric head
    (ridge at the selected α, or the MLP), the neighbour head's k and blend, the memory and the spread."""
    chosen = selection.chosen
    max_pool = router.config.pool_layers
    x = top_layers(features, chosen.pool_layers, max_pool)
    reshape_head(router, chosen.pool_layers, int(chosen.hidden or 0))
    normalized = (values - router.loss_mean.double().numpy()) / router.loss_std.double().numpy()
    fitted = fit_mlp(x, normalized, int(chosen.hidden or 0), selection_epochs(config), config.seed) \
        if chosen.family == "mlp" else None  # trains with gradients: outside no_grad
    with torch.no_grad():
        if fitted is not None:
            first, last = fitted
            body = router.head.body
            assert isinstance(body, torch.nn.Sequential)
            body[0].load_state_dict(first.state_dict())
            router.head.last.load_state_dict(last.state_dict())
        else:
            path = RidgePath(x, normalized)
            if chosen.family == "shared":
                [(weight, bias)] = path.shared([(float(chosen.shared_alpha or 1.0), float(chosen.alpha or 1.0))])
            else:
                weight, bias = path.solution(float(selection.ridge_alpha or chosen.alpha or 1.0))
            router.head.last.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            router.head.last.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    uses_neighbours = chosen.family in ("neighbour", "blend", "shrink")
    router.config.head_neighbors = int(chosen.k or 0) if uses_neighbours else 0
    router.config.head_blend = 0.5 if chosen.family == "blend" else 0.0
    router.config.head_shrink = float(chosen.kappa or 0.0) if chosen.family == "shrink" else 0.0
    router.config.spread_neighbors = int(selection.spread_k)
    router.set_memory(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(values, dtype=torch.float32),
                      seed=config.seed)
    router.spread_scale = torch.as_tensor(np.nan_to_num(selection.spread_scale, nan=np.nan), dtype=torch.float32)
    router.spread_floor = torch.as_tensor(np.nan_to_num(selection.spread_floor, nan=0.0), dtype=torch.float32)


def selection_epochs(config: TrainConfig) -> int:
    return config.selection.mlp_epochs if config.selection is not None else 1
