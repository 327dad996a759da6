"""The benchmark report's rows and summary, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.report import policy_row, summarize


def test_policy_row_by_hand() -> None:
    # 3 prompts × 2 experts (losses). Best single = expert 0 (mean 0.5); oracle mean = (0+0+0.5)/3.
    y = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    params = np.array([10.0, 2.0])
    chosen = np.array([0, 1, 1])  # perfect routing, ties count as hits
    row = policy_row(y[np.arange(3), chosen], y, single=0, params=params, chosen=chosen, higher_is_better=True)
    assert row["loss"] == pytest.approx(0.5 / 3) and row["score"] == pytest.approx(1 - 0.5 / 3)
    assert row["hit_rate"] == 1.0 and row["regret"] == pytest.approx(0.0)
    assert row["gap_captured"] == pytest.approx(1.0) and row["mean_params"] == pytest.approx(14 / 3)
    chosen = np.array([1, 0, 0])  # always the wrong one: loss 2.5/3, gap = (0.5 − 2.5/3)/(0.5 − 0.5/3) = −1
    row = policy_row(y[np.arange(3), chosen], y, single=0, params=params, chosen=chosen, higher_is_better=False)
    assert row["hit_rate"] == pytest.approx(1 / 3) and row["gap_captured"] == pytest.approx(-1.0)
    assert "score" not in row


def test_summary_is_mean_and_sample_sd_over_seeds() -> None:
    summary = summarize({"thalamus": [{"loss": 0.2, "hyper": None}, {"loss": 0.4, "hyper": None}],
                         "oracle": [{"loss": 0.1}]})
    assert summary["thalamus"]["n"] == 2 and summary["thalamus"]["loss"] == pytest.approx(0.3)
    assert summary["thalamus"]["loss_sd"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert "hyper" not in summary["thalamus"]
    assert summary["oracle"] == {"n": 1, "loss": 0.1, "loss_sd": 0.0}


def test_the_datasets_summary_compares_thalamus_with_its_best_non_oracle_baseline() -> None:
    from benchmarks.report import format_many, summary_row

    def report(name: str, hib: bool, values: dict[str, list[float]]) -> dict:  # type: ignore[type-arg]
        metric = "score" if hib else "loss"
        policies = {p: [{metric: v, "hit_rate": 0.5, "regret": 0.1, "gap_captured": 0.1, "seconds": 1.0,
                         **({"head": "ridge p=1 α=1", "test_coverage": 0.79} if p == "thalamus" else {})}
                        for v in vs] for p, vs in values.items()}
        return {"dataset": name, "higher_is_better": hib, "n_train": 10, "n_test": 5, "policies": policies,
                "summary": summarize(policies)}

    scored = report("dc", True, {"thalamus": [0.58, 0.60], "knn": [0.57], "ridge_probe": [0.595], "oracle": [0.9]})
    row = summary_row(scored)
    assert (row["best_baseline"], row["seeds"], row["heads"]) == ("ridge_probe", 2, ["ridge p=1 α=1"] * 2)
    assert row["margin"] == pytest.approx(0.59 - 0.595) and row["test_coverage"] == pytest.approx(0.79)
    lossy = summary_row(report("demo", False, {"thalamus": [5.62], "best_single": [5.64], "knn": [5.621],
                                               "oracle": [5.5]}))
    assert lossy["best_baseline"] == "knn" and lossy["margin"] == pytest.approx(5.621 - 5.62)
    table = format_many({"runs": [], "summary": [row, lossy]}).splitlines()
    assert len(table) == 4 and table[2].startswith("| dc | score | 0.5900") and "+0.0010" in table[3]
