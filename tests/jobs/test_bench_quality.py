"""The quality benchmark: hand-computed metrics and baselines, and a real --quick run on the
benchmark data (skipped where ../shared/data/dcrouter is absent)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from jobs import baselines as B
from jobs import bench_quality as bq
from jobs.datasets import LossRecord

DATASET = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dcrouter"


def test_policy_row_by_hand() -> None:
    # 3 prompts × 2 experts (losses). Best single = expert 0 (mean 0.5); oracle mean = (0+0+0.5)/3.
    y = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    params = np.array([10.0, 2.0])
    chosen = np.array([0, 1, 1])  # perfect routing, ties count as hits
    row = bq.policy_row(y[np.arange(3), chosen], y, single=0, params=params, chosen=chosen, higher_is_better=True)
    assert row["loss"] == pytest.approx(0.5 / 3) and row["score"] == pytest.approx(1 - 0.5 / 3)
    assert row["hit_rate"] == 1.0 and row["regret"] == pytest.approx(0.0)
    assert row["gap_captured"] == pytest.approx(1.0) and row["mean_params"] == pytest.approx(14 / 3)
    chosen = np.array([1, 0, 0])  # always the wrong one: loss 2.5/3, gap = (0.5 − 2.5/3)/(0.5 − 0.5/3) = −1
    row = bq.policy_row(y[np.arange(3), chosen], y, single=0, params=params, chosen=chosen, higher_is_better=False)
    assert row["hit_rate"] == pytest.approx(1 / 3) and row["gap_captured"] == pytest.approx(-1.0)
    assert "score" not in row


def test_route_with_size_constraint() -> None:
    pred = np.array([[0.2, 0.3], [0.1, 0.5]])
    size = np.array([1.0, 0.1])
    assert bq.route(pred, size, 0.0).tolist() == [0, 0]
    assert bq.route(pred, size, 0.3).tolist() == [1, 0]  # 0.5 vs 0.33; 0.4 vs 0.53
    assert bq.route(pred, size, 1.0).tolist() == [1, 1]


def test_parse_params_and_matrix() -> None:
    assert bq.parse_params("7B") == 7.0 and bq.parse_params("350M") == pytest.approx(0.35)
    assert bq.parse_params(12) == 12.0 and bq.parse_params(None) is None and bq.parse_params("big") is None
    split = bq.to_matrix([LossRecord("p", "a", 0.1), LossRecord("q", "b", 0.2), LossRecord("p", "b", 0.3)])
    assert split.prompts == ["p", "q"] and split.experts == ["a", "b"]
    np.testing.assert_array_equal(np.isnan(split.losses), [[False, False], [True, False]])


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


@pytest.mark.skipif(not DATASET.is_dir(), reason=f"benchmark data not found at {DATASET}")
def test_quick_bench_router_beats_random_and_best_single(tmp_path: Path) -> None:
    """Real run of the product path on a fixed-seed slice (1,500 train / 300 held-out rows):
    register experts, ingest, production training job, load the bundle, evaluate."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = bq.run(DATASET, seeds=1, quick=True, home=tmp_path / "home")
    s = report["summary"]
    assert report["n_train"] == bq.QUICK_TRAIN and report["n_test"] == bq.QUICK_TEST
    assert s["thalamus"]["score"] > s["random"]["score"]
    assert s["thalamus"]["score"] > s["best_single"]["score"]
    assert s["oracle"]["score"] >= s["thalamus"]["score"]
    assert 0.0 < s["random"]["hit_rate"] < s["thalamus"]["hit_rate"] <= s["oracle"]["hit_rate"] == 1.0
    sweep = report["pareto"]["thalamus"]
    assert [p["lambda_size"] for p in sweep] == list(bq.LAMBDA_GRID)
    assert sweep[-1]["mean_params"] < sweep[0]["mean_params"]  # a size penalty picks smaller experts
    text = bq.format_report(report)
    assert "| thalamus |" in text and "95% paired bootstrap" in text
    json.dumps(report, default=str)
    out = tmp_path / "pareto.png"
    bq.plot(report, out)
    assert out.stat().st_size > 1000
