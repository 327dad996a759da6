"""The non-router baselines and the λ_size routing rule, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import policies as B


def test_route_with_size_constraint() -> None:
    pred = np.array([[0.2, 0.3], [0.1, 0.5]])
    size = np.array([1.0, 0.1])
    assert B.route(pred, size, 0.0).tolist() == [0, 0]
    assert B.route(pred, size, 0.3).tolist() == [1, 0]  # 0.5 vs 0.33; 0.4 vs 0.53
    assert B.route(pred, size, 1.0).tolist() == [1, 1]


def test_baselines_by_hand() -> None:
    train_x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    train_y = np.array([[0.0, 1.0], [0.2, np.nan], [1.0, 0.0], [0.8, 0.2]])
    # Missing entry filled with expert 1's mean (1 + 0 + 0.2)/3 = 0.4.
    np.testing.assert_allclose(B.fill_missing(train_y)[1], [0.2, 0.4])
    knn = B.knn_predict(train_x, train_y, np.array([[1.0, 0.05]]), k=2)
    np.testing.assert_allclose(knn, [[0.1, 0.7]])
    assert B.best_single(train_y) == 1  # mean observed losses 0.5 and 0.4
    # Ridge with a negligible penalty on a single exactly-linear column recovers it.
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    np.testing.assert_allclose(B.ridge_predict(x, 2 * x + 1, np.array([[4.0]]), 1e-9), [[9.0]], atol=1e-6)
    assert B.routed_loss(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([[0.2, 0.4], [0.6, 0.1]])) == pytest.approx(0.15)
    np.testing.assert_allclose(B.expected_random_loss(np.array([[0.2, 0.4]])), [0.3])
