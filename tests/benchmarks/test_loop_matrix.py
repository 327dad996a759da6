"""The matrix summary: each target's mean over seeds, a seed without the event counts as not met."""

from __future__ import annotations

from typing import Any

from benchmarks.loop_matrix import summarize, table


def _report(seed: int, targets: dict[str, Any], score: float = 0.5) -> dict[str, Any]:
    return {"plan": {"seed": seed}, "targets": {k: {"value": v, "passed": True} for k, v in targets.items()},
            "heldout": {"online": 0.6, "best_single": 0.5, "oracle": 0.8}, "promotions": [], "gate_truth": None,
            "seconds": {"wall": 300.0}, "stream": {"score": score}}


def test_targets_are_judged_on_their_mean_over_the_seeds() -> None:
    reports = {"degraded": [_report(0, {"degraded_share_below_10pct_within_one_cycle": 0.05,
                                        "gate_intervals_cover_90pct": 1.0}),
                            _report(1, {"degraded_share_below_10pct_within_one_cycle": 0.2}),
                            _report(2, {"degraded_share_below_10pct_within_one_cycle": 0.0,
                                        "gate_intervals_cover_90pct": 1.0})]}
    costs = [{"on": _report(k, {}, score=0.60), "off": _report(k, {}, score=0.605)} for k in range(3)]
    summary = summarize(reports, costs)
    share = summary["degraded"]["targets"]["degraded_share_below_10pct_within_one_cycle"]
    assert share["values"] == [0.05, 0.2, 0.0] and abs(share["mean"] - 0.25 / 3) < 1e-12 and share["passed"]
    gate = summary["degraded"]["targets"]["gate_intervals_cover_90pct"]
    assert gate["mean"] == 1.0 and not gate["passed"]  # seed 1 had no such promotion: not met
    cost = summary["exploration_cost_full_feedback"]
    assert abs(cost["mean"] - 0.005) < 1e-12 and cost["passed"]
    text = table(summary)
    assert "| degraded | degraded_share_below_10pct_within_one_cycle | 0.05, 0.2, 0 | 0.08333 | < 0.1 | yes |" in text
    assert "| degraded | gate_intervals_cover_90pct | 1, –, 1 | 1 | >= 0.9 | NO |" in text


def test_the_scenario_runs_take_the_feedback_asked_for(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from benchmarks import loop_matrix

    calls: list[tuple[str, int, str]] = []

    def fake_run(dataset, out, scenario, seed, feedback="bandit", explore=None, offline=True):  # type: ignore[no-untyped-def]
        calls.append((scenario, seed, feedback))
        return _report(seed, {"cold_gap_captured_at_least_0.8": 0.5})

    monkeypatch.setattr(loop_matrix, "_run_one", fake_run)
    loop_matrix.main(["--dataset", str(tmp_path), "--out", str(tmp_path / "out"), "--seeds", "0,1",
                      "--scenarios", "cold", "--feedback", "labelled", "--no-cost"])
    assert calls == [("cold", 0, "labelled"), ("cold", 1, "labelled")]
    assert (tmp_path / "out" / "summary.json").is_file()
