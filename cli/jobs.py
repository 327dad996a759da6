"""Background jobs: run one on a worker (or inline) and watch it; list recent runs."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cli._common import Group, KeyValues, arg, positive_int, print_json, verb
from jobs.registry import JOBS, get_job
from store.schema import JobRun
from store.settings import Settings
from store.states import JobStatus


@dataclass(frozen=True)
class JobOutcome:
    """What ``jobs run`` tells: the last run it followed (a lost run's re-run), or the queued run."""

    run: int
    kind: str
    status: str
    attempt: int
    lost_runs: list[int]
    result: dict[str, Any] | None
    error: str | None
    waited: bool = True

    @property
    def succeeded(self) -> bool:
        return self.status == JobStatus.SUCCEEDED

    @property
    def failed(self) -> bool:
        """A run that did not finish its work; a skip (nothing to do, recorded with the reason) is not one."""
        return self.waited and self.status not in (JobStatus.SUCCEEDED, JobStatus.SKIPPED)


def _progress_bar(run_id: int) -> tuple[Callable[[JobRun], None], Callable[[JobRun, JobRun], None]]:
    """``wait``'s callbacks: a progress bar, and a line when the run is lost and followed to its re-run."""
    from tqdm import tqdm

    bar = tqdm(total=100, desc=f"job {run_id}", unit="%", file=sys.stderr)

    def show(run: JobRun) -> None:
        bar.set_description(f"job {run.id}")
        bar.n = round(100 * (run.progress or 0.0))
        bar.set_postfix_str(f"{run.status}: {(run.message or '')[:60]}")
        bar.refresh()
        if run.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):  # a lost run goes on as its re-run
            bar.close()

    def requeued(lost: JobRun, retry: JobRun) -> None:
        bar.write(f"job run {lost.id} was lost ({lost.message}); following its re-run {retry.id}", file=sys.stderr)
        bar.reset()

    return show, requeued


def run(settings: Settings, name: str, *, params: dict[str, Any] | None = None, wait: bool = True,
        inline: bool = False, timeout: float | None = None, progress: bool = False) -> JobOutcome:
    """Trigger a job on a worker (or inline) and wait for it, following a lost run to its re-run."""
    from workers.dispatch import submit
    from workers.dispatch import wait as wait_for

    spec = get_job(name)  # an unknown name: JobInputError, one sentence naming the known jobs (exit 2)
    params = params or {}
    skip = spec.precheck(settings, params)  # bad parameters: JobInputError (exit 2), nothing recorded
    if skip is not None:
        from jobs.runs import record_skip

        run_id = record_skip(settings, name, skip.message, skip.details, trigger="cli", params=params)
        return JobOutcome(run_id, name, JobStatus.SKIPPED, 1, [], skip.details, skip.message)
    if inline:
        from jobs.runs import create_run
        from workers.tasks import execute

        run_id = create_run(settings, name, params, trigger="cli-inline")
        execute(settings, run_id)
    else:
        run_id = submit(settings, name, params, trigger="cli")
        if progress:
            print(f"job run {run_id} queued ({name})", file=sys.stderr)
        if not wait:
            return JobOutcome(run_id, name, "queued", 1, [], None, None, waited=False)
    lost: list[int] = []
    on_progress, on_requeue = _progress_bar(run_id) if progress else (None, None)

    def requeued(old: JobRun, new: JobRun) -> None:
        lost.append(old.id)
        if on_requeue is not None:
            on_requeue(old, new)

    last = wait_for(settings, run_id, timeout=timeout, on_progress=on_progress, on_requeue=requeued)
    return JobOutcome(last.id, last.kind, last.status, last.attempt, lost, last.result,
                      last.message if last.status != JobStatus.SUCCEEDED else None)


def _show_outcome(outcome: JobOutcome) -> None:
    if not outcome.waited:
        print(outcome.run)
        return
    print_json({"run": outcome.run, "kind": outcome.kind, "status": outcome.status, "attempt": outcome.attempt,
                "lost_runs": outcome.lost_runs, "result": outcome.result, "error": outcome.error})


@dataclass(frozen=True)
class RunLine:
    """One run as ``jobs list`` tells it: ``state`` says ``running, silent`` or ``lost → run N`` when so."""

    id: int
    kind: str
    trigger: str
    state: str
    progress: float
    attempt: int
    worker: str | None
    heartbeat_age_seconds: float | None
    created_at: dt.datetime
    message: str | None


def list_runs(settings: Settings, *, limit: int = 20) -> list[RunLine]:
    """Recent job runs with worker, attempt and heartbeat age, newest first."""
    from sqlalchemy import select

    from jobs.runs import as_utc
    from store.db import session_scope
    from store.schema import utcnow

    with session_scope(settings) as session:
        runs = list(session.scalars(select(JobRun).order_by(JobRun.id.desc()).limit(limit)))
        ids = [r.id for r in runs]
        retries = dict(session.execute(select(JobRun.retry_of, JobRun.id).where(JobRun.retry_of.in_(ids))).all())
    now = utcnow()
    lines = []
    for r in runs:
        state: str = r.status
        age = None if r.heartbeat_at is None else (now - as_utc(r.heartbeat_at)).total_seconds()
        if state == JobStatus.LOST and r.id in retries:
            state = f"lost → run {retries[r.id]}"
        elif state == JobStatus.RUNNING and age is not None and age > settings.job_lost_after_seconds:
            state = "running, silent"  # the next sweep marks it lost
        if r.status not in (JobStatus.RUNNING, JobStatus.LOST):
            age = None
        lines.append(RunLine(r.id, r.kind, r.trigger, state, r.progress, r.attempt, r.worker, age, r.created_at,
                             r.message))
    return lines


def _age(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    return f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"


def _show_runs(lines: list[RunLine]) -> None:
    print(f"{'id':>5} {'kind':16} {'trigger':12} {'status':18} {'progress':>8}  {'try':>3} {'worker':24} "
          f"{'heartbeat':>9}  {'created':19}  message")
    for r in lines:
        beat = "-" if r.heartbeat_age_seconds is None else _age(r.heartbeat_age_seconds)
        print(f"{r.id:5} {r.kind:16} {r.trigger:12} {r.state:18} {100 * r.progress:7.1f}%  {r.attempt:3} "
              f"{(r.worker or '-')[:24]:24} {beat:>9}  {r.created_at:%Y-%m-%d %H:%M:%S}  {(r.message or '')[:120]}")


def _jobs_epilog() -> str:
    """The jobs of the registry, one line each."""
    return "jobs:\n" + "\n".join(f"  {spec.name:16} {spec.description}" for spec in JOBS.values())


GROUP = Group("jobs", "background jobs (run one and watch it, list runs)", (
    verb("run", run,
         arg("name", help="the job to run (listed below)"),
         arg("--param", dest="params", action=KeyValues, default={}, metavar="KEY=VALUE",
             help="a job parameter such as epochs=3 (repeatable)"),
         arg("--no-wait", dest="wait", action="store_false", help="print the run id and return"),
         arg("--inline", action="store_true", help="run in this process instead of on a worker"),
         arg("--timeout", type=float, default=None, help="seconds to wait before giving up"),
         show=_show_outcome, fails=lambda outcome: outcome.failed, cli={"progress": True},
         epilog=_jobs_epilog),
    verb("list", list_runs, arg("--limit", type=positive_int, default=20), show=_show_runs),
))
