"""The bandit-training benchmark: its heads against the product's, the simulated logs, and a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.bandit_training import fit_predict, format_report, neighbour_head, run, simulate_logs, weighted_ridge
from router.exploration import action_probabilities, parse_policy
from router.layer import neighbour_losses
from router.training import ridge_solution


def _data(n: int = 60, e: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8))
    y = rng.uniform(size=(n, e))
    y[rng.random((n, e)) < 0.5] = np.nan
    return x, y, rng.normal(size=(10, 8))


def test_unweighted_heads_are_the_products_heads() -> None:
    x, y, query = _data()
    ones = np.ones_like(y)
    weight, bias = ridge_solution(x, y, 3.0)
    assert weighted_ridge(x, y, ones, query, 3.0) == pytest.approx(query @ weight.T + bias)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    product = neighbour_losses(torch.tensor(query), torch.tensor(unit), torch.tensor(y), 7).double().numpy()
    ours = neighbour_head(x, y, ones, query, 7, np.full((10, 3), np.nan))
    assert np.array_equal(np.isnan(ours), np.isnan(product)) and ours[~np.isnan(ours)] == pytest.approx(
        product[~np.isnan(product)], abs=1e-6)


def test_weights_move_the_neighbour_mean_and_the_ridge_fit() -> None:
    keys = np.array([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1]])
    y = np.array([[0.0], [1.0], [np.nan]])
    w = np.array([[1.0], [3.0], [5.0]])
    assert neighbour_head(keys, y, w, np.array([[1.0, 0.0]]), 3, np.zeros((1, 1)))[0, 0] == pytest.approx(0.75)
    x, values, query = _data(seed=1)
    heavy = np.ones_like(values)
    heavy[:10] = 50.0
    assert not np.allclose(weighted_ridge(x, values, heavy, query, 1.0), weighted_ridge(x, values, 0 * heavy + 1, query, 1.0))
    assert fit_predict(x, values, heavy, query, k=5).shape == (10, 3)


def test_simulated_logs_observe_the_served_cell_with_its_propensity() -> None:
    rng = np.random.default_rng(0)
    true = rng.uniform(size=(500, 4))
    weak = true + rng.normal(scale=0.2, size=true.shape)
    policy = parse_policy("epsilon:0.3", 0.5)
    log = simulate_logs(true, weak, policy, 0.3, np.random.default_rng(1))
    observed = ~np.isnan(log.losses)
    assert (observed.sum(axis=1) == 1).all()
    probs = action_probabilities(weak, policy, 0.3)
    assert log.propensity[observed] == pytest.approx(probs[observed])
    assert (log.propensity[~observed] == 1.0).all() and log.losses[observed] == pytest.approx(true[observed])
    assert 0.1 < log.explored < 0.3 and log.min_propensity > 0


def test_a_tiny_run_reports_every_policy(tmp_path: Path, tiny_backbone: str) -> None:
    rng = np.random.default_rng(0)
    experts = ["a", "b", "c"]
    for name, n in (("train", 90), ("test", 20)):
        rows = [{"prompt": f"{name} prompt {i} about topic {i % 7}", "expert": e, "score": float(rng.random())}
                for i in range(n) for e in experts]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    report = run(tmp_path, tiny_backbone, seeds=2, seed_prompts=30, policies=["off", "epsilon:0.2"])
    assert set(report["policies"]) == {"off", "epsilon:0.2"} and report["n_train"] == 90 and report["n_test"] == 20
    off, eps = report["policies"]["off"], report["policies"]["epsilon:0.2"]
    assert off["test_score"]["ipw"] == off["test_score"]["masked"] and off["explored_share"] == 0.0
    assert off["ipw_minus_masked"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert 0 < eps["explored_share"] < 0.5 and eps["min_propensity"] == pytest.approx(0.1)
    assert eps["ipw_minus_masked"]["low"] <= eps["ipw_minus_masked"]["mean"] <= eps["ipw_minus_masked"]["high"]
    assert "masked_minus_off" in eps and "epsilon:0.2" in format_report(report)
