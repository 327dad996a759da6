"""The one table of background jobs, read by the worker, the scheduler, the dispatcher and the CLI.

Adding a job is one ``JobSpec`` in ``JOBS`` below, plus its function
``(settings, progress, params) -> result dict``. From the entry the worker registers the Celery task
``thalamus.<name>`` and routes it to ``queue`` (``thalamus worker`` consumes every queue named here),
the scheduler triggers it every ``schedule`` minutes (a ``Settings`` attribute; 0 turns it off),
``workers.dispatch.submit`` and ``thalamus jobs run`` accept its name, and the CLI help lists it with
``description``.

The function (and the gate) is named by its import path and imported only when it is called: job
modules import torch, and the worker's prefork parent (which imports this table) must never load
it; the CLI builds its help from the table without importing SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from jobs.errors import JobInputError
from store.settings import Settings

if TYPE_CHECKING:
    from jobs.gates import Gate, Skip
    from jobs.runs import Progress

JobFunction = Callable[[Settings, "Progress", dict[str, Any]], dict[str, Any]]

_NAME = re.compile(r"[a-z][a-z0-9_]{0,59}")  # a task name, a lock name and a job_runs.kind (60 characters)


@dataclass(frozen=True)
class JobSpec:
    """One background job."""

    name: str
    function: str  # "package.module:function", a JobFunction imported when the job runs
    queue: str  # the Celery queue its tasks are routed to
    description: str  # one line for the CLI help
    exclusive: bool = False  # at most one run at a time (jobs/locks.py); a second one fails at once
    schedule: str | None = None  # the Settings attribute with its interval in minutes (0: not scheduled)
    gate: str | None = None  # "module:function", a jobs.gates.Gate asked before a scheduled trigger

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"job name {self.name!r} must be lower-case letters, digits and _ (60 at most)")
        for what, path in (("function", self.function), ("gate", self.gate)):
            if path is not None and ":" not in path:
                raise ValueError(f"job {self.name}: {what} {path!r} is not of the form module:function")
        if self.schedule is not None and self.schedule not in Settings.model_fields:
            raise ValueError(f"job {self.name}: schedule {self.schedule!r} is not a setting")

    def load(self) -> JobFunction:
        return cast(JobFunction, pkgutil.resolve_name(self.function))

    def run(self, settings: Settings, progress: Progress, params: dict[str, Any]) -> dict[str, Any]:
        """Import and run the function, holding the job's lock when it is exclusive."""
        from jobs.locks import exclusive

        function = self.load()
        with exclusive(settings, self.name) if self.exclusive else contextlib.nullcontext():
            return function(settings, progress, params)

    def skip(self, settings: Settings) -> Skip | None:
        """Its gate's verdict on a scheduled trigger now: a Skip (with the reason), or None to run it."""
        if self.gate is None:
            return None
        return cast("Gate", pkgutil.resolve_name(self.gate))(settings, self.name)

    def interval_minutes(self, settings: Settings) -> float:
        """How often the scheduler triggers it; 0 when it is not scheduled."""
        return 0.0 if self.schedule is None else float(getattr(settings, self.schedule))


def _table(*specs: JobSpec) -> dict[str, JobSpec]:
    table = {spec.name: spec for spec in specs}
    if len(table) != len(specs):
        raise ValueError("two jobs have the same name")
    return table


# A dict typed read-only: tests add an entry with ``monkeypatch.setitem(JOBS, ...)``.
JOBS: Mapping[str, JobSpec] = _table(
    JobSpec("refresh_losses", "jobs.refresh_losses:refresh_losses_job", queue="losses",
            description="compute every local expert's loss on sampled prompts that lack one",
            schedule="refresh_interval_minutes"),
    JobSpec("train_router", "jobs.train_router:train_router", queue="training",
            description="train a candidate router on the loss table and register it",
            exclusive=True, schedule="train_interval_minutes", gate="jobs.gates:enough_new_loss_rows"),
    JobSpec("evaluate_candidate", "jobs.evaluate_candidate:evaluate_candidate", queue="training",
            description="off-policy estimates (IPS, SNIPS, DR) of a candidate vs the active router on logged "
                        "traffic (version=ID, default: the newest candidate)"),
)


def get_job(name: str) -> JobSpec:
    """The spec called ``name``; JobInputError (one sentence naming the known jobs) when there is none."""
    try:
        return JOBS[name]
    except KeyError:
        raise JobInputError(f"unknown job {name!r}; known jobs: {', '.join(JOBS)}") from None


def queues() -> list[str]:
    """Every queue a job is routed to, sorted: what a worker consumes by default."""
    return sorted({spec.queue for spec in JOBS.values()})
