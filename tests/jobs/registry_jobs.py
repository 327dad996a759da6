"""Job functions for the registry tests, named by import path as a real entry names its function."""

from __future__ import annotations

from typing import Any

from jobs.errors import JobLocked
from jobs.locks import exclusive
from jobs.runs import Progress
from store.settings import Settings


def echo(settings: Settings, progress: Progress, params: dict[str, Any]) -> dict[str, Any]:
    progress(1.0, "echoed")
    return {"echo": params}


def lock_is_held(settings: Settings, progress: Progress, params: dict[str, Any]) -> dict[str, Any]:
    """Whether another holder has this job's lock while the job runs (then it is exclusive)."""
    try:
        with exclusive(settings, params["name"]):
            return {"held": False}
    except JobLocked:
        return {"held": True}
