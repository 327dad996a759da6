"""The loop report's judgement of a promotion's interval against the window that followed it, and of the
off-policy estimates against the held-out truth."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.loop_report import gate_truth, value_truth, window_interval


def test_an_exact_estimate_holds_95_percent_of_windows_once_widened_by_the_windows_noise() -> None:
    """Windows of 250 losses in {0, 1} with true mean 0.4 and an estimate of exactly 0.4 ± 0.01: the
    estimate's own interval holds few realised windows, the window's prediction interval about 95 %."""
    rng = np.random.default_rng(0)
    estimate = {"loss": 0.4, "low": 0.39, "high": 0.41}
    inside_value, inside_window = [], []
    for _ in range(2000):
        losses = (rng.random(250) < 0.4).astype(float).tolist()
        realised = float(np.mean(losses))
        interval = window_interval(estimate, losses)
        assert interval is not None and interval["n"] == 250
        inside_value.append(estimate["low"] <= realised <= estimate["high"])
        inside_window.append(interval["low"] <= realised <= interval["high"])
    assert np.mean(inside_value) < 0.4
    assert np.mean(inside_window) == pytest.approx(0.95, abs=0.02)


def test_the_window_interval_is_never_narrower_than_the_estimates_and_needs_two_requests() -> None:
    estimate = {"loss": 0.3, "low": 0.1, "high": 0.5}
    interval = window_interval(estimate, [0.3, 0.3, 0.3])  # no spread in the window: the estimate's own
    assert interval is not None
    assert (interval["low"], interval["high"]) == pytest.approx((0.1, 0.5), abs=1e-4)
    assert window_interval(estimate, [0.2]) is None


def _cycle(estimate: float, half: float, truth: float, promoted: bool) -> dict[str, object]:
    dr = {"value": estimate, "low": estimate - half, "high": estimate + half}
    return {"t": 500, "version": 2, "promoted": promoted,
            "gate": "promote (off-policy): auto-approved" if promoted else "hold (off-policy): not auto-approved",
            "off_policy": {"candidate": {"dr": dr}}, "truth": {"candidate_loss": truth}}


def test_a_calibrated_estimator_s_promoted_intervals_miss_more_when_the_gate_selects_on_them() -> None:
    """Estimates = truth + N(0, 0.1²) with exact 95 % intervals; the gate promotes the lowest tenth. Over
    every cycle the intervals hold the truth 95 % of the time; among the promoted, clearly less."""
    rng = np.random.default_rng(1)
    truths = 0.4 + 0.01 * rng.standard_normal(3000)
    estimates = truths + 0.1 * rng.standard_normal(3000)
    cut = np.quantile(estimates, 0.1)
    cycles = [_cycle(float(e), 1.96 * 0.1, float(t), bool(e <= cut)) for e, t in zip(estimates, truths, strict=True)]
    value = value_truth(cycles)
    assert value is not None and value["n"] == 3000 and value["n_promoted"] == 300
    assert value["all"] == pytest.approx(0.95, abs=0.015)
    assert value["promoted"] < 0.85


def test_value_truth_counts_only_promotions_on_the_off_policy_basis_and_needs_both_numbers() -> None:
    cycles = [_cycle(0.4, 0.1, 0.45, True), _cycle(0.4, 0.1, 0.6, False),
              {**_cycle(0.4, 0.1, 0.7, True), "gate": "promote (none): auto-approved: no router is active"},
              {**_cycle(0.4, 0.1, 0.4, True), "truth": {}}]
    value = value_truth(cycles)
    assert value == {"n": 3, "all": pytest.approx(1 / 3), "n_promoted": 1, "promoted": 1.0}
    assert value_truth([{"t": 500, "truth": {"candidate_loss": 0.4}}]) is None
    report = gate_truth(cycles)
    assert report is not None and report["value"] == value and report["covered"] is None
