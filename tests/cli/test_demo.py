"""The demo's settings reach its child processes through an explicit environment, not os.environ."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cli.demo import _failed, _interleaved, _shares, demo_settings
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
