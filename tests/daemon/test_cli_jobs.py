"""``thalamus jobs list`` tells a run's state as it is: a silent worker, a lost run and its re-run."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import update

from daemon.cli import main
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
