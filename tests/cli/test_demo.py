"""The demo's settings reach its child processes through an explicit environment, not os.environ."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cli.demo import _failed, _interleaved, _print_finetune, _shares, demo_settings, finetune_report, finetune_target
from store.settings import Settings


def test_demo_settings_reach_a_child_process_and_leave_ours_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = dict(os.environ)
    settings = demo_settings(Settings(home=tmp_path, label_share=0.2, default_lambdas={"size": 0.5}, port=9123))
    assert (settings.label_share, settings.train_interval_minutes, settings.port) == (0.2, 0.0, 9123)
    code = "import json; from store.settings import Settings; print(Settings().model_dump_json())"
    env = {**settings.as_env(), "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert Settings.model_validate(json.loads(out)) == settings
    assert dict(os.environ) == before


def test_the_demo_runs_with_the_production_label_share(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert demo_settings(Settings(home=tmp_path)).label_share == Settings.model_fields["label_share"].default == 0.1


def test_traffic_is_balanced_across_domains_and_shares_count_every_expert() -> None:
    rows = [{"prompt": f"{d}{i}", "domain": d} for d in ("b", "a") for i in range(3 if d == "a" else 2)]
    assert _interleaved(rows) == ["a0", "b0", "a1", "b1", "a2"]
    served = [("p", "id1", "x"), ("q", "id2", "x"), ("r", "id3", "y")]
    assert _shares(served, ["x", "y", "z"]) == {"x": 0.667, "y": 0.333, "z": 0.0}


def test_the_demo_fails_without_a_significant_heldout_gain() -> None:
    ok = {"failed_requests": 0, "active_version_after_swap": 2, "candidate_version": 2,
          "heldout": {"promoted": {"gain_ci95": [0.05, 0.2]}}}
    assert not _failed(ok)
    assert _failed({**ok, "heldout": {"promoted": {"gain_ci95": [-0.01, 0.2]}}})
    assert _failed({**ok, "failed_requests": 1})
    assert _failed({**ok, "active_version_after_swap": 1})


EXPERTS = [{"name": "big", "kind": "causal-lm", "attributes": {"params": 900}},
           {"name": "code", "kind": "causal-lm", "attributes": {"params": 100}},
           {"name": "docs", "kind": "causal-lm", "attributes": {"params": 100}},
           {"name": "tiny", "kind": "masked-lm", "attributes": {"params": 10}},
           {"name": "remote", "kind": "openai", "attributes": {}}]


def test_the_fine_tuned_expert_is_the_small_local_one_with_most_distinct_routed_prompts() -> None:
    served = [(f"p{i}", f"r{i}", "big") for i in range(9)] + [("a", "1", "code"), ("a", "2", "code"),
              ("b", "3", "docs"), ("c", "4", "docs"), ("d", "5", "remote"), ("d", "6", "remote"), ("e", "7", "remote")]
    assert finetune_target(served, EXPERTS) == ("docs", {"code": 1, "docs": 2, "tiny": 0})  # distinct prompts
    assert finetune_target([*served, ("f", "8", "code")], EXPERTS)[0] == "code"  # a tie: the first name
    assert finetune_target(served[:9], EXPERTS) == (None, {"code": 0, "docs": 0, "tiny": 0})
    assert finetune_target(served, EXPERTS[4:]) == (None, {})


def _interval(before: float, after: float, n: int) -> dict[str, float]:
    return {"n": n, "before": before, "after": after, "diff": after - before, "ci_low": after - before - 0.01,
            "ci_high": after - before + 0.01}


def test_the_report_section_of_a_fine_tune_reads_the_versions_metrics(capsys) -> None:  # type: ignore[no-untyped-def]
    outcome = {"run": 7, "kind": "finetune_expert", "status": "succeeded", "error": None, "result": {
        "expert": "code", "version": 2, "parent_version": 1, "status": "candidate", "auto_approved": False,
        "metrics": {"own": _interval(4.0, 3.5, 21), "other": _interval(5.0, 5.02, 150), "n_train": 80,
                    "train_seconds": 3.2},
        "training": {"method": "lora", "epochs": 2}}}
    report = finetune_report("code", outcome, 12.345)
    assert report["routed_prompts"] == 101 and report["trained_on"] == 80 and report["wall_seconds"] == 12.35
    assert report["own_heldout"] == {"n": 21, "before": 4.0, "after": 3.5, "after_minus_before": -0.5,
                                     "ci95": [-0.51, -0.49]}
    assert report["other_experts_heldout"]["after_minus_before"] == 0.02
    assert (report["version"], report["parent_version"], report["job_run"]) == (2, 1, 7)
    _print_finetune({**report, "approved_by": "admin expert-approve", "served_version": 2, "swap_seconds": 1.0})
    shown = capsys.readouterr().out
    assert "code v1 → v2" in shown and "-0.5000 [-0.5100, -0.4900]" in shown and "101 distinct routed" in shown

    skip = {"run": 8, "status": "skipped", "error": "skipped: expert 'code' has 3 distinct routed prompts",
            "result": {"routed_prompts": 3}}
    assert finetune_report("code", skip, 1.0) == {"expert": "code", "job_run": 8, "status": "skipped",
                                                  "wall_seconds": 1.0, "reason": skip["error"]}
    _print_finetune(finetune_report("code", skip, 1.0))
    assert "skipped (skipped: expert 'code' has 3" in capsys.readouterr().out


def test_the_demo_fails_when_the_fine_tune_fails_or_its_version_is_not_served() -> None:
    ok = {"failed_requests": 0, "active_version_after_swap": 2, "candidate_version": 2,
          "heldout": {"promoted": {"gain_ci95": [0.05, 0.2]}}}
    tuned = {"status": "succeeded", "version": 2, "served_version": 2}
    assert not _failed({**ok, "finetune": tuned})
    assert not _failed({**ok, "finetune": {"status": "skipped", "reason": "too few routed prompts"}})
    assert _failed({**ok, "finetune": {**tuned, "served_version": 1}})
    assert _failed({**ok, "finetune": {"status": "failed", "reason": "boom"}})
