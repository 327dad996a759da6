"""``thalamus jobs list`` tells a run's state as it is: a silent worker, a lost run and its re-run."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import update

from cli.main import main
from jobs.reaper import reap_lost
from jobs.runs import claim, create_run
from store.db import session_scope
from store.schema import JobRun, utcnow


def _lines(capsys: pytest.CaptureFixture[str]) -> dict[int, str]:
    main(["jobs", "list"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["id", "kind", "trigger", "status"]
    return {int(line.split()[0]): line for line in out[1:]}


def test_jobs_list_shows_silent_lost_and_re_queued_runs(sqlite_settings, capsys) -> None:  # type: ignore[no-untyped-def]
    settings = sqlite_settings
    dead = create_run(settings, "train_router", {}, "cli")
    claim(settings, dead, "deadhost:4242")
    live = create_run(settings, "refresh_losses", {}, "schedule")
    claim(settings, live, "livehost:7")
    with session_scope(settings) as session:
        session.execute(update(JobRun).where(JobRun.id == dead).values(
            progress=0.425, heartbeat_at=utcnow() - dt.timedelta(minutes=10)))

    lines = _lines(capsys)
    assert "running, silent" in lines[dead] and "42.5%" in lines[dead] and "deadhost:4242" in lines[dead]
    assert "10m" in lines[dead]  # heartbeat age
    assert "running " in lines[live] and "silent" not in lines[live] and "livehost:7" in lines[live]

    with session_scope(settings) as session:
        (reaped,) = reap_lost(session, settings)
    lines = _lines(capsys)
    assert f"lost → run {reaped.retry_id}" in lines[dead] and f"re-queued as run {reaped.retry_id}" in lines[dead]
    retry = lines[reaped.retry_id]
    assert " queued " in retry and f"re-run of lost run {dead} (attempt 2 of 3)" in retry


def test_run_inline_returns_the_outcome_and_prints_it_as_json(sqlite_settings, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    from cli import jobs

    outcome = jobs.run(sqlite_settings, "refresh_losses", params={"limit": 10}, inline=True)
    assert (outcome.kind, outcome.status, outcome.attempt, outcome.lost_runs, outcome.error) == (
        "refresh_losses", "succeeded", 1, [], None)
    assert outcome.succeeded and outcome.result is not None

    main(["jobs", "run", "refresh_losses", "--inline"])
    printed = json.loads(capsys.readouterr().out)
    assert (printed["run"], printed["status"], printed["result"]) == (outcome.run + 1, "succeeded", outcome.result)


def test_run_without_waiting_prints_only_the_queued_run_id(sqlite_settings, capsys) -> None:  # type: ignore[no-untyped-def]
    main(["jobs", "run", "refresh_losses", "--no-wait", "--param", "limit=5"])
    captured = capsys.readouterr()
    run_id = int(captured.out)
    assert f"job run {run_id} queued (refresh_losses)" in captured.err
    with session_scope(sqlite_settings) as session:
        run = session.get(JobRun, run_id)
        assert run is not None and (run.status, run.params, run.trigger) == ("queued", {"limit": 5}, "cli")
    lines = _lines(capsys)
    assert " queued " in lines[run_id]
