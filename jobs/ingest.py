"""Bulk ingestion of reported losses: validate everything first, then write in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobs.datasets import MAX_ERRORS_SHOWN, LossRecord, read_loss_records
from jobs.errors import JobInputError
from store.db import session_scope
from store.loss_bounds import bounds_of, loss_problem
from store.queries import active_experts, ensure_prompts, upsert_losses
from store.settings import Settings


def ingest_records(settings: Settings, records: Sequence[LossRecord], source: str = "ingest") -> dict[str, Any]:
    """Write every record, or none: unknown experts and losses outside ``[0, max_loss]`` raise JobInputError."""
    with session_scope(settings) as session:
        experts = active_experts(session)
        versions = {expert.name: expert.version for expert in experts}
        unknown = sorted({record.expert for record in records} - versions.keys())
        if unknown:
            raise JobInputError(
                f"unknown expert(s): {', '.join(unknown[:10])}; register them first with "
                "`thalamus experts add NAME --kind external`"
            )
        _check_bounds(records, bounds_of(experts, settings.max_loss))
        hashes = ensure_prompts(session, (record.prompt for record in records), source=source)
        rows = {
            (key, record.expert): {
                "prompt_hash": key, "expert": record.expert, "expert_version": versions[record.expert],
                "loss": record.loss, "source": "reported",
            }
            for key, record in zip(hashes, records, strict=True)
        }
        written = upsert_losses(session, list(rows.values()))
    return {"records": len(records), "rows_written": written, "prompts": len(set(hashes)),
            "experts": sorted({record.expert for record in records})}


def _check_bounds(records: Sequence[LossRecord], bounds: dict[str, float]) -> None:
    errors = []
    for index, record in enumerate(records):
        problem = loss_problem(record.loss, bounds[record.expert])
        if problem is not None:
            errors.append(f"{record.where or f'record {index + 1}'}: {problem} for expert {record.expert!r}")
    if errors:
        more = f" (and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise JobInputError("; ".join(errors[:MAX_ERRORS_SHOWN]) + more)


def ingest_file(settings: Settings, path: Path) -> dict[str, Any]:
    return ingest_records(settings, read_loss_records(path))
