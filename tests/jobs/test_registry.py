"""The job registry: one entry is all a job needs to be run by workers, scheduled, dispatched and listed."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
from sqlalchemy import select

from cli.main import main
from jobs.errors import JobInputError
from jobs.registry import JOBS, JobSpec, get_job, queues
from store.db import session_scope
from store.schema import JobRun
from store.states import JobStatus

ECHO = JobSpec("echo", "tests.jobs.registry_jobs:echo", queue="extra", description="echo its params back",
               schedule="refresh_interval_minutes")


def test_the_production_table() -> None:
    assert list(JOBS) == ["refresh_losses", "train_router", "evaluate_candidate"]
    assert {n: (s.queue, s.exclusive, s.schedule) for n, s in JOBS.items()} == {
        "refresh_losses": ("losses", False, "refresh_interval_minutes"),
        "train_router": ("training", True, "train_interval_minutes"),
        "evaluate_candidate": ("training", False, None),
    }
    assert JOBS["refresh_losses"].gate is None
    assert queues() == ["losses", "training"]
    for spec in JOBS.values():
        assert callable(spec.load())
    assert JOBS["train_router"].gate == "jobs.gates:enough_new_loss_rows"


def test_the_worker_parent_never_imports_a_job_module() -> None:
    """Importing the Celery app (and with it the table and every task) loads neither torch nor a job."""
    code = ("import sys, workers.app; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m in "
            "('jobs.train_router', 'jobs.refresh_losses', 'jobs.evaluate_candidate', 'router.model')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "Bad Name"}, "lower-case"),
    ({"function": "tests.jobs.registry_jobs.echo"}, "module:function"),
    ({"gate": "jobs.gates.enough_new_loss_rows"}, "module:function"),
    ({"schedule": "echo_interval_minutes"}, "is not a setting"),
])
def test_a_malformed_entry_is_refused_when_the_table_is_built(change: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(ECHO, **change)


def test_an_unknown_job_is_one_sentence_naming_the_known_ones() -> None:
    with pytest.raises(JobInputError, match="unknown job 'nope'; known jobs: refresh_losses, train_router, evaluate_candidate"):
        get_job("nope")


@pytest.mark.parametrize("backend", ["sqlite_settings", "pg_settings"])
def test_an_exclusive_job_runs_under_its_lock(request: pytest.FixtureRequest, backend: str) -> None:
    settings = request.getfixturevalue(backend)
    spec = JobSpec("probe", "tests.jobs.registry_jobs:lock_is_held", queue="q", description="probe")
    assert spec.run(settings, lambda f, m: None, {"name": "probe"}) == {"held": False}
    assert replace(spec, exclusive=True).run(settings, lambda f, m: None, {"name": "probe"}) == {"held": True}


def test_one_entry_is_all_a_new_job_needs(sqlite_settings, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """Worker task and route, schedule, dispatcher, CLI help and ``jobs run``: all from one table entry."""
    from workers.app import make_celery
    from workers.dispatch import submit
    from workers.scheduler import background_scheduler
    from workers.tasks import execute

    monkeypatch.setitem(JOBS, "echo", ECHO)  # type: ignore[arg-type]  # the table is a dict typed read-only
    settings = sqlite_settings.model_copy(update={"refresh_interval_minutes": 5.0, "train_interval_minutes": 0.0})

    app = make_celery(settings)
    assert "thalamus.echo" in app.tasks
    assert app.conf.task_routes["thalamus.echo"] == {"queue": "extra"}
    assert queues() == ["extra", "losses", "training"]

    scheduler = background_scheduler(settings)
    assert [job.id for job in scheduler.get_jobs()] == ["refresh_losses", "echo", "reap_lost"]
    assert scheduler.get_job("echo").trigger.interval.total_seconds() == 300

    run_id = submit(settings, "echo", {"x": 1}, trigger="test")  # sent to the SQLite broker
    assert execute(settings, run_id) == {"echo": {"x": 1}}

    with pytest.raises(SystemExit):  # the CLI lists it with its description
        main(["jobs", "run", "-h"])
    assert "echo             echo its params back" in capsys.readouterr().out

    main(["jobs", "run", "echo", "--inline", "--param", "y=2"])
    printed = json.loads(capsys.readouterr().out)
    assert (printed["kind"], printed["status"], printed["result"]) == ("echo", "succeeded", {"echo": {"y": 2}})
    with session_scope(settings) as session:
        runs = [(r.kind, r.status, r.trigger) for r in session.scalars(select(JobRun).order_by(JobRun.id))]
    assert runs == [("echo", JobStatus.SUCCEEDED, "test"), ("echo", JobStatus.SUCCEEDED, "cli-inline")]
