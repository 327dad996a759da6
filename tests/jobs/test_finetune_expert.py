"""The ``finetune_expert`` job on tiny real experts, on SQLite and PostgreSQL.

A version directory appears whole, the served one is untouched, the candidate carries its metrics;
approving it makes the old loss rows stale and the refresh re-scores them; rollback serves the
previous version again; bad input writes nothing; too few routed prompts is a recorded skip.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from experts.registry import content_hash, register_experts
from jobs.errors import JobInputError, JobLocked
from store.db import session_scope
from store.queries import insert_requests
from store.schema import ExpertActivation, ExpertLoss, ExpertVersion, JobRun, utcnow
from tests.conftest import make_causal_lm, make_masked_lm
from tests.helpers import row_counts

TOPICS = {
    "mlm": ["the cat sat on the mat", "a dog ran in the park", "the bird sang a song"],
    "gpt": ["def add a b return a plus b", "import os and print the path", "for item in items print item"],
    "api": ["permission is hereby granted", "the licensee shall not", "subject to the following terms"],
}
WORDS = ["today", "again", "slowly", "quickly", "here", "there", "now", "then", "once", "twice", "always"]


def _prompts(expert: str, n: int) -> list[str]:
    stems = TOPICS[expert]
    return [f"{stems[i % len(stems)]} {WORDS[i % len(WORDS)]} {WORDS[(i // len(WORDS)) % len(WORDS)]} {i}"
            for i in range(n)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: str) -> dict[str, str]:
    root = tmp_path_factory.mktemp("finetune-experts")
    texts = [p for name in TOPICS for p in _prompts(name, 60)]
    return {"mlm": make_masked_lm(root / "mlm", tiny_backbone, 16, 3),
            "gpt": make_causal_lm(root / "gpt", texts, 16, 4)}


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, models: dict[str, str]) -> Any:
    """A migrated database with a masked-LM, a causal-LM and an external expert, and routed traffic."""
    settings = request.getfixturevalue("sqlite_settings" if request.param == "sqlite" else "pg_settings")
    with session_scope(settings) as session:
        register_experts(session, [{"name": "mlm", "kind": "masked-lm", "uri": models["mlm"]},
                                   {"name": "gpt", "kind": "causal-lm", "uri": models["gpt"]},
                                   {"name": "api", "kind": "external"}])
    route(settings, {"mlm": 40, "gpt": 40, "api": 20})
    return settings


def route(settings: Any, counts: dict[str, int]) -> None:
    """Log requests routed to each expert as the daemon does (every other one sampled for labels)."""
    rows = []
    for expert, n in counts.items():
        for i, prompt in enumerate(_prompts(expert, n)):
            rows.append({"id": str(uuid.uuid4()), "created_at": utcnow(), "prompt": prompt, "lambdas": {},
                         "router_version_id": None, "expert": expert,
                         "predicted_losses": {"mlm": 3.0, "gpt": 3.0, "api": 3.0, expert: 2.0},
                         "propensity": 1.0, "sampled": i % 2 == 0, "latency_ms": 1.0, "app": None})
    with session_scope(settings) as session:
        insert_requests(session, rows)


FAST = {"min_routed_prompts": 10, "epochs": 1, "lora_r": 2}


def _run(settings: Any, **params: Any) -> Any:
    from cli import jobs

    return jobs.run(settings, "finetune_expert", params=params, inline=True)


@pytest.mark.parametrize("expert", ["mlm", "gpt"])
def test_job_writes_a_new_version_directory_and_a_candidate_with_metrics(db: Any, models: dict[str, str],
                                                                         expert: str) -> None:
    served = content_hash(Path(models[expert]))
    outcome = _run(db, expert=expert, weighting="confidence", **FAST)
    assert outcome.status == "succeeded", outcome.error
    result = outcome.result
    path = Path(result["uri"])
    assert (result["version"], result["parent_version"], result["status"]) == (2, 1, "candidate")
    assert path.parent.parent == db.experts_dir / "versions" and path.name == f"v2-{result['content_hash'][:12]}"
    assert content_hash(path) == result["content_hash"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]  # written under a temporary name
    assert content_hash(Path(models[expert])) == served  # the served directory is untouched
    for part in ("own", "other"):
        numbers = result["metrics"][part]
        assert numbers["n"] >= 2 and numbers["ci_low"] <= numbers["diff"] <= numbers["ci_high"]
        assert numbers["diff"] == pytest.approx(numbers["after"] - numbers["before"], abs=1e-9)
    with session_scope(db) as session:
        rows = {v.version: v for v in session.scalars(select(ExpertVersion).where(ExpertVersion.expert == expert))}
        assert (rows[1].status, rows[2].status, rows[2].uri) == ("active", "candidate", str(path))
        assert rows[2].metrics["own"] == result["metrics"]["own"] and rows[2].training["method"] == db.finetune_method == "lora"
        from store.queries import expert_by_name

        served_row = expert_by_name(session, expert)
        assert served_row is not None and (served_row.version, served_row.uri) == (1, models[expert])


def test_approval_makes_old_rows_stale_refresh_rescores_and_rollback_restores(db: Any, models: dict[str, str]) -> None:
    from jobs import expert_versions
    from jobs.loss_table import load_loss_table
    from jobs.refresh_losses import refresh_losses
    from store.queries import active_experts, expert_by_name

    first = refresh_losses(db)
    sampled = first["by_expert"]["mlm"]
    assert sampled == 50  # every sampled prompt (half of each expert's traffic) is scored by every local expert
    version = _run(db, expert="mlm", **FAST).result["version"]

    with session_scope(db) as session:
        expert_versions.approve(session, "mlm", version, actor="tester", reason="better on its own prompts")
    with session_scope(db) as session:
        row = expert_by_name(session, "mlm")
        assert row is not None and row.version == version and row.uri != models["mlm"]
        assert load_loss_table(session, active_experts(session)).rows_read.get("computed", 0) == 50  # gpt's only
    second = refresh_losses(db)
    assert second["by_expert"] == {"gpt": 0, "mlm": sampled}  # the stale prompts, re-scored by the new version
    assert refresh_losses(db)["rows_written"] == 0
    with session_scope(db) as session:
        by_version = {v: n for v, n in session.execute(
            select(ExpertLoss.expert_version, ExpertLoss.id).where(ExpertLoss.expert == "mlm"))}
        assert set(by_version) == {1, version}
        assert load_loss_table(session, active_experts(session)).rows_read["computed"] == 100

    with session_scope(db) as session:
        back = expert_versions.rollback(session, "mlm", actor="tester", reason="regressed in production")
        assert back.version == 1
    with session_scope(db) as session:
        row = expert_by_name(session, "mlm")
        assert row is not None and (row.version, row.uri) == (1, models["mlm"])
        log = [(a.version, a.previous_version, a.actor) for a in session.scalars(
            select(ExpertActivation).order_by(ExpertActivation.id))]
        assert log == [(version, 1, "tester"), (1, version, "tester")]
        statuses = {v.version: v.status for v in expert_versions.versions(session, "mlm")}
        assert statuses == {1: "active", version: "retired"}
    assert refresh_losses(db)["by_expert"]["mlm"] == 0  # version 1's rows are current again


def test_auto_approve_follows_the_interval_rule(db: Any) -> None:
    from jobs.expert_versions import auto_approve_reason

    on = db.model_copy(update={"finetune_auto_approve": True, "finetune_max_forgetting": 0.1})
    better = {"diff": -0.3, "ci_low": -0.5, "ci_high": -0.1}
    assert auto_approve_reason(on, {"own": better, "other": {"diff": 0.0, "ci_low": -0.1, "ci_high": 0.05}})
    assert not auto_approve_reason(db, {"own": better, "other": None})  # off by default
    assert not auto_approve_reason(on, {"own": {**better, "ci_high": 0.01}, "other": None})
    assert not auto_approve_reason(on, {"own": better, "other": {"diff": 0.1, "ci_low": 0.0, "ci_high": 0.2}})
    outcome = _run(db, expert="gpt", auto_approve="true", epochs=3, learning_rate=0.05, min_routed_prompts=10)
    own = outcome.result["metrics"]["own"]
    assert outcome.result["auto_approved"] == (own["ci_high"] < 0 and outcome.result["metrics"]["other"]["ci_high"]
                                               <= db.finetune_max_forgetting)


@pytest.mark.parametrize(("params", "message"), [
    ({"expert": "nobody"}, "unknown expert 'nobody'; registered experts: api, gpt, mlm"),
    ({"expert": "api"}, "expert 'api' is external"),
    ({"expert": "mlm", "lora_r": 0}, "lora_r=0 is out of range"),
    ({"expert": "mlm", "lora_alpha": -2}, "lora_alpha=-2 is out of range"),
    ({"expert": "mlm", "method": "qlora"}, "method must be one of lora, full"),
    ({"expert": "mlm", "rank": 4}, "finetune_expert does not take rank"),
    ({}, "needs the expert to fine-tune"),
])
def test_bad_input_exits_2_and_writes_nothing(db: Any, params: dict[str, Any], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    before = row_counts(db)
    argv = ["jobs", "run", "finetune_expert", *[a for k, v in params.items() for a in ("--param", f"{k}={v}")]]
    for extra in ([], ["--inline"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, *extra])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert row_counts(db) == before
    assert not (db.experts_dir / "versions").exists()


def test_too_few_routed_prompts_is_a_recorded_skip(db: Any) -> None:
    outcome = _run(db, expert="mlm", min_routed_prompts=41)
    assert outcome.status == "skipped" and not outcome.failed
    assert "has 40 distinct routed prompts" in outcome.error and "THALAMUS_FINETUNE_MIN_ROUTED_PROMPTS" in outcome.error
    with session_scope(db) as session:
        run = session.get(JobRun, outcome.run)
        assert run is not None and run.result is not None
        assert (run.status, run.params["expert"], run.result["routed_prompts"]) == (
            "skipped", "mlm", 40)
        assert session.scalars(select(ExpertVersion)).first() is None
    assert not (db.experts_dir / "versions").exists()


def test_the_scheduler_triggers_one_run_per_configured_expert(db: Any) -> None:
    from workers.scheduler import _trigger

    settings = db.model_copy(update={"finetune_experts": "all-local", "finetune_min_routed_prompts": 41})
    _trigger(settings, "finetune_expert")  # both below the minimum: two skips, nothing sent
    _trigger(settings.model_copy(update={"finetune_experts": "gpt", "finetune_min_routed_prompts": 10}),
             "finetune_expert")  # sent to the broker (no worker here): a queued run
    with session_scope(db) as session:
        runs = [(r.params.get("expert"), r.status, r.trigger) for r in session.scalars(
            select(JobRun).where(JobRun.kind == "finetune_expert").order_by(JobRun.id))]
    assert runs == [("gpt", "skipped", "schedule"), ("mlm", "skipped", "schedule"), ("gpt", "queued", "schedule")]


def test_the_lock_is_per_expert(db: Any) -> None:
    from jobs.locks import exclusive

    with exclusive(db, "finetune_expert", "mlm"):
        with pytest.raises(JobLocked, match="another finetune_expert run for 'mlm' is in progress"):
            with exclusive(db, "finetune_expert", "mlm"):
                pass
        with exclusive(db, "finetune_expert", "gpt"):
            pass
        with exclusive(db, "train_router"):
            pass


def test_rollback_without_a_predecessor_and_unknown_versions_are_refused(db: Any) -> None:
    from jobs import expert_versions

    with session_scope(db) as session, pytest.raises(JobInputError, match="no predecessor"):
        expert_versions.rollback(session, "mlm", actor="t")
    with session_scope(db) as session, pytest.raises(JobInputError, match="has no version 7"):
        expert_versions.approve(session, "mlm", 7, actor="t")
