"""Bulk ingestion of reported losses: validate everything first, then write in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobs.datasets import LossRecord, read_loss_records
from jobs.errors import JobInputError
from store.db import session_scope
from store.queries import active_experts, ensure_prompts, upsert_losses
from store.settings import Settings


def ingest_records(settings: Settings, records: Sequence[LossRecord], source: str = "ingest") -> dict[str, Any]:
    with session_scope(settings) as session:
        versions = {expert.name: expert.version for expert in active_experts(session)}
        unknown = sorted({record.expert for record in records} - versions.keys())
        if unknown:
            raise JobInputError(
                f"unknown expert(s): {', '.join(unknown[:10])}; register them first with "
                "`thalamus experts add NAME --kind external`"
            )
        hashes = ensure_prompts(session, (record.prompt for record in records), source=source)
        rows = {
            (key, record.expert): {
                "prompt_hash": key, "expert": record.expert, "expert_version": versions[record.expert],
                "loss": record.loss, "source": "reported",
            }
            for key, record in zip(hashes, records)
        }
        written = upsert_losses(session, list(rows.values()))
    return {"records": len(records), "rows_written": written, "prompts": len(set(hashes)),
            "experts": sorted({record.expert for record in records})}


def ingest_file(settings: Settings, path: Path) -> dict[str, Any]:
    return ingest_records(settings, read_loss_records(path))
