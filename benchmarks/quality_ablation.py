"""Recipe ablation for the router on a routing dataset: 5-fold CV on the *training* split only.

    HF_HUB_OFFLINE=1 python -m benchmarks.quality_ablation --dataset ../shared/data/dcrouter [--cache var/ablation]

The frozen backbone runs once per max length over the training prompts (every hidden state kept,
mean-pooled and [CLS]); each variant is then scored by the mean true score (or loss) of the
expert with the lowest predicted loss on held-out folds. The heads are the product's own code:
``router.training.ridge_solution`` (the closed-form head) and ``router.layer.neighbour_losses``
(the neighbour head), applied to the cached features exactly as a head-only router would.
The test split is never read.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from benchmarks.data import load_dataset
from router.layer import neighbour_losses
from router.training import ridge_solution

FOLDS = 5


def hidden_features(prompts: list[str], max_length: int, cache: Path) -> dict[str, np.ndarray]:
    """{"mean": (N, L+1, H), "cls": (N, L+1, H)} for every hidden state of the frozen backbone."""
    path = cache / f"features-{max_length}-{len(prompts)}.npz"
    if path.is_file():
        return dict(np.load(path))
    from transformers import AutoModel, AutoTokenizer

    from store.settings import default_backbone

    tokenizer = AutoTokenizer.from_pretrained(default_backbone())
    model = AutoModel.from_pretrained(default_backbone()).eval()
    order = np.argsort([len(p) for p in prompts])
    mean: np.ndarray | None = None
    cls: np.ndarray | None = None
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(prompts), 32):
            idx = order[start:start + 32]
            batch = tokenizer([prompts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")
            states = model(**batch, output_hidden_states=True).hidden_states
            if mean is None or cls is None:
                mean = np.zeros((len(prompts), len(states), states[0].shape[-1]), np.float32)
                cls = np.zeros_like(mean)
            weights = batch["attention_mask"].unsqueeze(-1).float()
            for layer, h in enumerate(states):
                mean[idx, layer] = ((h * weights).sum(1) / weights.sum(1)).numpy()
                cls[idx, layer] = h[:, 0].numpy()
            print(f"\rembedding at length {max_length}: {min(start + 32, len(prompts))}/{len(prompts)}",
                  end="", file=sys.stderr)
    print(f" ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
    if mean is None or cls is None:
        raise ValueError("no prompts to embed")
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, mean=mean, cls=cls)
    return {"mean": mean, "cls": cls}


def ridge_head(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, alpha: float) -> np.ndarray:
    mu, sd = np.nanmean(train_y, axis=0), np.nanstd(train_y, axis=0) + 1e-9  # the router's normalisation
    weight, bias = ridge_solution(train_x, (train_y - mu) / sd, alpha)
    return (test_x @ weight.T + bias) * sd + mu


def neighbour_head(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int) -> np.ndarray:
    keys = torch.tensor(train_x, dtype=torch.float32)
    keys = keys / keys.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return neighbour_losses(torch.tensor(test_x), keys.half(), torch.tensor(train_y, dtype=torch.float32), k).numpy()


Predictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""(train x, train y, test x) → predicted test losses."""


def cross_validate(x: np.ndarray, y: np.ndarray, predict: Predictor) -> tuple[float, float]:
    """Mean ± standard error over folds of the true loss of argmin(predicted loss)."""
    folds = np.random.RandomState(0).permutation(len(y)) % FOLDS
    scores = []
    for f in range(FOLDS):
        tr, te = folds != f, folds == f
        predicted = predict(x[tr], y[tr], x[te])
        predicted = np.where(np.isnan(predicted), np.nanmean(y[tr], axis=0), predicted)
        chosen = predicted.argmin(axis=1)
        scores.append(float(y[te][np.arange(chosen.size), chosen].mean()))
    return float(np.mean(scores)), float(np.std(scores) / np.sqrt(FOLDS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--cache", default="var/ablation")
    args = parser.parse_args()
    train, _, _ = load_dataset(Path(args.dataset))
    complete = ~np.isnan(train.losses).any(axis=1)
    train = train.subset(np.flatnonzero(complete))
    y = train.losses
    higher = bool(np.nanmax(y) <= 1.0)
    show = (lambda loss: 1.0 - loss) if higher else (lambda loss: loss)
    cache = Path(args.cache)
    feats = {256: hidden_features(train.prompts, 256, cache), 128: hidden_features(train.prompts, 128, cache)}
    top = feats[256]["mean"].shape[1] - 1

    def stack(length: int, kind: str, pool_layers: int) -> np.ndarray:
        f = feats[length][kind]
        layers = range(top - pool_layers + 1, top + 1)
        return np.concatenate([f[:, layer] for layer in layers], axis=1).astype(np.float64)

    rows: list[tuple[str, tuple[float, float]]] = []
    single = np.zeros((len(y), 1))
    rows.append(("best single expert (chosen on the training folds)",
                 cross_validate(single, y, lambda a, b, c: np.tile(np.nanmean(b, axis=0), (len(c), 1)))))
    rows.append(("oracle", (float(show(y.min(axis=1)).mean()) if higher else float(y.min(axis=1).mean()), 0.0)))
    for pool_layers in (1, 2, 3, 4):
        x = stack(256, "mean", pool_layers)
        for alpha in (300.0, 1000.0, 3000.0):
            rows.append((f"ridge head α={alpha:g}, mean pool, top {pool_layers} layer(s), len 256",
                         cross_validate(x, y, partial(ridge_head, alpha=alpha * pool_layers))))
        for k in (30, 100, 200):
            rows.append((f"neighbour head k={k}, mean pool, top {pool_layers} layer(s), len 256",
                         cross_validate(x, y, partial(neighbour_head, k=k))))
    for label, x in (("[CLS] pool, top 1 layer, len 256", stack(256, "cls", 1)),
                     ("mean pool, top 1 layer, len 128", stack(128, "mean", 1)),
                     ("mean pool, top 3 layers, len 128", stack(128, "mean", 3))):
        rows.append((f"ridge head α=1000, {label}", cross_validate(x, y, lambda a, b, c: ridge_head(a, b, c, 1000.0))))
        rows.append((f"neighbour head k=100, {label}",
                     cross_validate(x, y, lambda a, b, c: neighbour_head(a, b, c, 100))))
    x = stack(256, "mean", 3)
    rows.append(("ridge + neighbour average (α=3000, k=100), top 3 layers, len 256",
                 cross_validate(x, y, lambda a, b, c: 0.5 * ridge_head(a, b, c, 3000.0)
                                + 0.5 * neighbour_head(a, b, c, 100))))
    metric = "score" if higher else "loss"
    print(f"{FOLDS}-fold CV on {len(y)} training prompts of {args.dataset} (mean {metric} of the routed expert)\n")
    print(f"| variant | CV mean {metric} |\n|---|---|")
    for label, (mean, se) in rows:
        value = mean if label == "oracle" else (show(mean) if higher else mean)
        print(f"| {label} | {value:.4f} ± {se:.4f} |")


if __name__ == "__main__":
    main()
