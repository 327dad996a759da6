"""Status values stored in the database, as ``str`` enums (celery ``states`` / peft ``PeftType`` style).

A member *is* its string (``JobStatus.LOST == "lost"``), so the stored values are the plain words
they always were and no migration is needed; ``store.schema`` maps the columns to these enums, so
a value read back is the member and a value that is not one is refused on write.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A ``job_runs`` row's status."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"  # its worker stopped heartbeating; re-run as the row whose ``retry_of`` points here
    SKIPPED = "skipped"  # a scheduled trigger whose job had nothing to do (e.g. too few new loss rows)


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.LOST, JobStatus.SKIPPED})


class VersionStatus(StrEnum):
    """A ``router_versions`` row's status (docs/architecture.md, Data model)."""

    CANDIDATE = "candidate"
    APPROVED = "approved"  # reserved for a two-step rollout
    ACTIVE = "active"
    RETIRED = "retired"
    REJECTED = "rejected"
