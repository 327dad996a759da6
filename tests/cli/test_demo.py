"""The demo's settings reach its child processes through an explicit environment, not os.environ."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cli.demo import demo_settings
from store.settings import Settings


def test_demo_settings_reach_a_child_process_and_leave_ours_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = dict(os.environ)
    settings = demo_settings(Settings(home=tmp_path, label_share=0.2, default_lambdas={"size": 0.5}, port=9123))
    assert (settings.label_share, settings.train_interval_minutes, settings.port) == (0.5, 0.0, 9123)
    code = "import json; from store.settings import Settings; print(Settings().model_dump_json())"
    env = {**settings.as_env(), "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert Settings.model_validate(json.loads(out)) == settings
    assert dict(os.environ) == before
