from __future__ import annotations

import pytest
from sqlalchemy import select

from store.db import session_scope
from store.schema import JobRun
from store.states import JobStatus
from workers.scheduler import _trigger, background_scheduler


def test_intervals_become_jobs_and_zero_disables(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    settings = sqlite_settings.model_copy(update={"refresh_interval_minutes": 5.0, "train_interval_minutes": 0.0,
                                                  "finetune_interval_minutes": 0.0})
    scheduler = background_scheduler(settings)
    assert [job.id for job in scheduler.get_jobs()] == ["refresh_losses", "reap_lost"]
    assert scheduler.get_job("refresh_losses").trigger.interval.total_seconds() == 300
    assert scheduler.get_job("reap_lost").trigger.interval.total_seconds() == settings.job_heartbeat_seconds == 30


def test_every_trigger_is_recorded_in_job_runs(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    _trigger(sqlite_settings, "refresh_losses")  # sent to the SQLite broker; no worker needed to record it
    with session_scope(sqlite_settings) as session:
        runs = list(session.scalars(select(JobRun)))
    assert [(r.kind, r.trigger, r.status) for r in runs] == [("refresh_losses", "schedule", "queued")]
    assert runs[0].task_id


def test_the_sweep_re_queues_a_silent_run_and_sends_its_task(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    import datetime as dt

    from sqlalchemy import update

    from jobs.runs import claim, create_run, get_run, retry_of
    from store.schema import utcnow
    from workers.scheduler import _sweep

    run_id = create_run(sqlite_settings, "train_router", {}, "schedule")
    claim(sqlite_settings, run_id, "deadhost:1")
    with session_scope(sqlite_settings) as session:
        session.execute(update(JobRun).where(JobRun.id == run_id).values(heartbeat_at=utcnow() - dt.timedelta(hours=1)))
    _sweep(sqlite_settings)
    retry = retry_of(sqlite_settings, run_id)
    assert get_run(sqlite_settings, run_id).status == "lost"
    assert retry.status == "queued" and retry.task_id  # sent to the (SQLite) broker
    _sweep(sqlite_settings)
    assert retry_of(sqlite_settings, run_id).id == retry.id


def _loss_rows(settings, count: int, at, tag: str) -> None:  # type: ignore[no-untyped-def]
    from store.queries import ensure_prompts, upsert_losses

    with session_scope(settings) as session:
        hashes = ensure_prompts(session, [f"{tag} prompt {i}" for i in range(count)])
        upsert_losses(session, [{"prompt_hash": h, "expert": "a", "expert_version": 1, "loss": 1.0, "source": "reported",
                                 "created_at": at} for h in hashes])


def _runs(settings) -> list[tuple[str, str, str, str | None]]:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        return [(r.kind, r.trigger, r.status, r.task_id) for r in session.scalars(select(JobRun).order_by(JobRun.id))]


@pytest.mark.parametrize("backend", ["sqlite_settings", "pg_settings"])
def test_a_scheduled_training_is_skipped_below_min_new_rows_and_the_skip_recorded(request, backend: str) -> None:
    import datetime as dt

    from jobs.runs import create_run, get_run, update_run
    from store.schema import utcnow
    from workers.dispatch import submit

    settings = request.getfixturevalue(backend).model_copy(update={"min_new_rows_to_train": 3})
    last_train = utcnow() - dt.timedelta(minutes=10)
    _loss_rows(settings, 5, last_train - dt.timedelta(minutes=5), "old")  # read by the last training
    done = create_run(settings, "train_router", {}, "schedule")
    update_run(settings, done, status="succeeded", started_at=last_train, finished_at=last_train)
    _loss_rows(settings, 2, last_train + dt.timedelta(minutes=1), "new")

    _trigger(settings, "train_router")
    skipped = get_run(settings, done + 1)
    assert (skipped.kind, skipped.trigger, skipped.status, skipped.task_id) == \
        ("train_router", "schedule", JobStatus.SKIPPED, None)  # recorded, and no task sent
    assert skipped.message == (f"skipped: 2 new loss rows since train_router run {done} started; "
                               "THALAMUS_MIN_NEW_ROWS_TO_TRAIN is 3")
    assert skipped.result == {"new_rows": 2, "min_new_rows_to_train": 3, "since_run": done}
    assert skipped.finished_at is not None

    manual = submit(settings, "train_router", trigger="cli")  # a manual trigger is never gated
    assert get_run(settings, manual).status == JobStatus.QUEUED and get_run(settings, manual).task_id

    _loss_rows(settings, 1, utcnow(), "newer")  # the third new row: the next scheduled training runs
    _trigger(settings, "train_router")
    assert _runs(settings)[-1][:3] == ("train_router", "schedule", JobStatus.QUEUED)
    assert _runs(settings)[-1][3]


def test_with_no_training_yet_every_row_counts_and_zero_turns_the_rule_off(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    _trigger(sqlite_settings, "train_router")  # default 1: an empty loss table is not trained on
    assert [r[2] for r in _runs(sqlite_settings)] == [JobStatus.SKIPPED]
    _trigger(sqlite_settings.model_copy(update={"min_new_rows_to_train": 0}), "train_router")
    assert [r[2] for r in _runs(sqlite_settings)] == [JobStatus.SKIPPED, JobStatus.QUEUED]
    from jobs.runs import get_run

    assert get_run(sqlite_settings, 1).message == "skipped: 0 new loss rows since ever; THALAMUS_MIN_NEW_ROWS_TO_TRAIN is 1"
