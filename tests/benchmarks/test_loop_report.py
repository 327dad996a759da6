"""The loop report's judgement of a promotion's interval against the window that followed it."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.loop_report import window_interval


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
