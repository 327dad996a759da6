"""Bulk feedback: losses reported by applications, from a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cli._common import Group, arg, verb
from store.settings import Settings


def losses(settings: Settings, file: Path) -> dict[str, Any]:
    """Load reported losses from JSON, JSONL or CSV; all or nothing."""
    from jobs.ingest import ingest_file

    return ingest_file(settings, Path(file))


def _show(result: dict[str, Any]) -> None:
    print(f"ingested {result['records']} loss records for {result['prompts']} prompts "
          f"and {len(result['experts'])} experts")


GROUP = Group("ingest", "bulk feedback (reported losses from a file)", (
    verb("losses", losses, arg("file", type=Path, help="JSON (question, scores), JSONL or CSV "
                                                         "(prompt, expert, loss|score)"), show=_show),
))
