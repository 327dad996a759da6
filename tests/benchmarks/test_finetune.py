"""``thalamus bench finetune`` on the miniature demo library and the tiny encoder: every table is there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.finetune import balanced, format_report, run
from tests.conftest import BuiltDemo


def test_traffic_and_heldout_prefixes_are_balanced_across_domains() -> None:
    rows = [{"prompt": f"{d}{i}", "domain": d} for d in ("code", "docs", "legal") for i in range(4 if d == "code" else 2)]
    assert [r["prompt"] for r in balanced(rows)[:6]] == ["code0", "docs0", "legal0", "code1", "docs1", "legal1"]
    assert sorted(r["prompt"] for r in balanced(rows)) == sorted(r["prompt"] for r in rows)
    assert balanced([]) == []


@pytest.mark.slow
def test_the_loop_runs_and_reports_every_number(mini_demo: BuiltDemo, tiny_backbone: str, sqlite_settings: Any,
                                                tmp_path: Path) -> None:
    settings = sqlite_settings.model_copy(update={"backbone": tiny_backbone, "finetune_lora_r": 2})
    report = run(settings, traffic=90, heldout=45, epochs=1, router_epochs=1, library=mini_demo.library.root,
                 work=tmp_path / "bench", experts="all", min_routed_prompts=5)
    routed = report["routed_heldout_loss"]
    low, high = routed["ci95"]
    assert low <= routed["baseline_minus_loop"] <= high
    assert routed["baseline_minus_loop"] == routed["router_retrained_alone"] - routed["loop_with_finetuning"] or abs(
        routed["baseline_minus_loop"] - (routed["router_retrained_alone"] - routed["loop_with_finetuning"])) < 1e-9
    fine_tuned = {name for name, e in report["experts"].items() if e["fine_tuned"]}
    assert fine_tuned and set(report["finetunes"]) == fine_tuned
    assert fine_tuned | set(report["skipped"]) == set(report["experts"])  # each one fine-tuned, or skipped saying why
    assert all("distinct routed prompts" in why for why in report["skipped"].values())
    assert all(f["wall_seconds"] > 0 for f in report["finetunes"].values())
    for shares in report["traffic_shares"].values():
        assert abs(sum(shares.values()) - 1.0) < 1e-3
    assert report["rescored_rows"] > 0  # the approved versions' stale rows were re-scored
    text = format_report(report)
    assert "retrained alone − loop" in text and all(f"| {name} |" in text for name in report["experts"])
