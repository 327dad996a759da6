"""``thalamus bench finetune`` on the miniature demo library and the tiny encoder: every table is there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.finetune import balanced, format_report, run, seeds_and_prompts_bootstrap
from tests.conftest import BuiltDemo


def test_traffic_and_heldout_prefixes_are_balanced_across_domains() -> None:
    rows = [{"prompt": f"{d}{i}", "domain": d} for d in ("code", "docs", "legal") for i in range(4 if d == "code" else 2)]
    assert [r["prompt"] for r in balanced(rows)[:6]] == ["code0", "docs0", "legal0", "code1", "docs1", "legal1"]
    assert sorted(r["prompt"] for r in balanced(rows)) == sorted(r["prompt"] for r in rows)
    assert balanced([]) == []


def test_resampling_the_routers_too_widens_the_interval_when_routers_disagree() -> None:
    rng = np.random.default_rng(1)
    prompts = rng.normal(4.0, 0.5, size=200)
    same = np.stack([prompts, prompts, prompts])
    # the loop's three routers differ from each other by ±0.05 on every prompt: seed noise, not prompt noise
    loop = np.stack([prompts - 0.02 + shift for shift in (-0.05, 0.0, 0.05)])
    diff, low, high = seeds_and_prompts_bootstrap(same, loop)
    assert abs(diff - 0.02) < 1e-9 and low < 0.0 < high  # 0.02 is within the routers' spread
    narrow = seeds_and_prompts_bootstrap(same, np.stack([prompts - 0.02] * 3))
    assert narrow[1] > 0.0  # without the spread the same mean difference is clearly above 0


def test_bad_shapes_and_seed_counts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="same prompts"):
        seeds_and_prompts_bootstrap(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="router_seeds"):
        run(None, router_seeds=0, work=tmp_path)  # type: ignore[arg-type]


@pytest.mark.slow
def test_the_loop_runs_and_reports_every_number(mini_demo: BuiltDemo, tiny_backbone: str, sqlite_settings: Any,
                                                tmp_path: Path) -> None:
    settings = sqlite_settings.model_copy(update={"backbone": tiny_backbone, "finetune_lora_r": 2})
    report = run(settings, traffic=90, heldout=45, epochs=1, router_epochs=1, library=mini_demo.library.root,
                 work=tmp_path / "bench", experts="all", min_routed_prompts=5, router_seeds=2)
    routed = report["routed_heldout_loss"]
    assert [p["seed"] for p in routed["per_seed"]] == routed["router_seeds"] == [0, 1]
    versions = [v for p in routed["per_seed"] for v in p["versions"].values()]
    assert len(set(versions)) == 4  # one router training per seed and arm
    per_seed_mean = np.mean([p["baseline_minus_loop"] for p in routed["per_seed"]])
    assert abs(per_seed_mean - routed["baseline_minus_loop"]) < 1e-9  # the mean over seeds of the per-seed differences
    wide = routed["ci95_resampling_routers_too"]
    assert wide[0] <= routed["baseline_minus_loop"] <= wide[1]
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
