"""Routing policies for the benchmarks besides the router itself: non-router baselines in pure
numpy/torch over a loss matrix and frozen prompt embeddings, and the λ_size routing rule. Every
predictor returns predicted losses (N_test, E); lower is better.

Hyper-parameters (k of kNN, ridge α, MLP weight decay) are chosen on a validation split carved
from the training rows, never on the test rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def fill_missing(losses: np.ndarray) -> np.ndarray:
    """NaN entries → that expert's mean observed loss (or the overall mean if never observed)."""
    losses = np.asarray(losses, dtype=np.float64)
    means = np.array([np.nanmean(c) if np.isfinite(c).any() else np.nan for c in losses.T])
    means = np.where(np.isnan(means), np.nanmean(losses) if np.isfinite(losses).any() else 0.0, means)
    return np.where(np.isnan(losses), means[None, :], losses)


def routed_loss(predicted: np.ndarray, true: np.ndarray) -> float:
    """Mean true loss of argmin(predicted) per row, over rows where every true loss is known."""
    complete = ~np.isnan(true).any(axis=1)
    chosen = np.argmin(predicted[complete], axis=1)
    return float(true[complete][np.arange(chosen.size), chosen].mean())


def expected_random_loss(test_losses: np.ndarray) -> np.ndarray:
    """Per-row expected loss of a uniformly random expert."""
    return np.nanmean(np.asarray(test_losses, dtype=np.float64), axis=1)


def best_single(train_losses: np.ndarray) -> int:
    """Index of the expert with the lowest mean observed training loss."""
    means = np.array([np.nanmean(c) if np.isfinite(c).any() else np.inf for c in np.asarray(train_losses).T])
    return int(np.argmin(means))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int) -> np.ndarray:
    """Mean loss of the k most cosine-similar training prompts (missing entries filled by expert mean)."""
    y = fill_missing(train_y)
    k = max(1, min(int(k), len(train_x)))
    sim = _unit(np.asarray(test_x, np.float64)) @ _unit(np.asarray(train_x, np.float64)).T
    nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    return y[nearest].mean(axis=1)


def ridge_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, alpha: float) -> np.ndarray:
    """Per-expert ridge regression on the rows where that expert is observed (closed form)."""
    x = np.asarray(train_x, np.float64)
    mu = x.mean(axis=0)
    xc = x - mu
    test_c = np.asarray(test_x, np.float64) - mu
    y = np.asarray(train_y, np.float64)
    out = np.empty((len(test_c), y.shape[1]))
    eye = alpha * np.eye(x.shape[1])
    for j in range(y.shape[1]):
        seen = ~np.isnan(y[:, j])
        if not seen.any():
            out[:, j] = np.nanmean(y)
            continue
        xs, ys = xc[seen], y[seen, j]
        w = np.linalg.solve(xs.T @ xs + eye, xs.T @ (ys - ys.mean()))
        out[:, j] = test_c @ w + ys.mean()
    return out


def mlp_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, hidden: int = 256,
                epochs: int = 30, weight_decay: float = 1e-2, dropout: float = 0.3, lr: float = 1e-3,
                seed: int = 0) -> np.ndarray:
    """One-hidden-layer MLP probe, masked MSE on observed entries, standardised inputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x = np.asarray(train_x, np.float32)
        mu, sd = x.mean(0), x.std(0) + 1e-6
        xt = torch.tensor((x - mu) / sd)
        xv = torch.tensor((np.asarray(test_x, np.float32) - mu) / sd)
        y = torch.tensor(np.asarray(train_y, np.float32))
        seen = ~torch.isnan(y)
        y = torch.nan_to_num(y)
        net = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(xt.shape[1], hidden), torch.nn.GELU(),
                                  torch.nn.Dropout(dropout), torch.nn.Linear(hidden, y.shape[1]))
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(epochs):
            net.train()
            order = torch.randperm(len(xt), generator=gen)
            for start in range(0, len(xt), 64):
                i = order[start:start + 64]
                err = (net(xt[i]) - y[i]) ** 2
                loss = (err * seen[i]).sum() / seen[i].sum().clamp(min=1)
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            return net(xv).double().numpy()


def _val_split(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.RandomState(seed).permutation(n)
    cut = max(1, round(n * share))
    return np.sort(order[cut:]), np.sort(order[:cut])


def tuned(name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, grid: Sequence[float],
          val_share: float = 0.15, seed: int = 0) -> tuple[np.ndarray, float]:
    """Fit baseline ``name`` ("knn" | "ridge" | "mlp"), choosing its hyper-parameter from ``grid``
    by routed loss on a validation split of the training rows; refit on all training rows."""
    fns = {"knn": lambda a, b, c, h: knn_predict(a, b, c, int(h)),
           "ridge": lambda a, b, c, h: ridge_predict(a, b, c, float(h)),
           "mlp": lambda a, b, c, h: mlp_predict(a, b, c, weight_decay=float(h), seed=seed)}
    fn = fns[name]
    fit, val = _val_split(len(train_x), val_share, seed)
    best_h, best_loss = grid[0], np.inf
    if len(grid) > 1:
        for h in grid:
            loss = routed_loss(fn(train_x[fit], train_y[fit], train_x[val], h), train_y[val])
            if loss < best_loss:
                best_h, best_loss = h, loss
    return fn(train_x, train_y, test_x, best_h), float(best_h)


def route(predicted: np.ndarray, size: np.ndarray, lam: float) -> np.ndarray:
    """argmin of predicted loss + λ_size · params/max params (ties → lower index)."""
    return np.argmin(predicted + lam * size[None, :], axis=1)
