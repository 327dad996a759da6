"""Register experts in the ``experts`` table (the caller owns the transaction)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from experts.attributes import validate_attributes
from experts.local import LOCAL_KINDS, ExpertError, check_model_dir
from store.queries import expert_by_name
from store.schema import EXPERT_KINDS, Expert, ExpertVersion

_SKIPPED_SUFFIXES = (".md", ".lock")


def content_hash(directory: Path) -> str:
    """sha256 over every file of a model directory (relative path + bytes), so retraining bumps the version.

    README-like files and hidden files are left out: editing a model card is not a new model.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts) or path.suffix in _SKIPPED_SUFFIXES:
            continue
        digest.update(relative.as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def validate_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise one spec (name, kind, uri, attributes) or raise ExpertError saying what is wrong.

    Attributes follow the typed schema of :mod:`experts.attributes` (``params > 0``, ``cost >= 0``,
    ``latency_ms > 0``, ``release_date`` an ISO date, ...).
    """
    name, kind, uri = spec.get("name"), spec.get("kind"), spec.get("uri")
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 200:
        raise ExpertError("an expert needs a name of 1 to 200 characters")
    name = name.strip()
    if kind not in EXPERT_KINDS:
        raise ExpertError(f"expert {name!r}: kind must be one of {', '.join(EXPERT_KINDS)}, not {kind!r}")
    attributes = validate_attributes(name, spec.get("attributes") or {})
    if kind in LOCAL_KINDS:
        path = check_model_dir(name, kind, uri).resolve()
        uri = str(path)
        attributes["content_hash"] = content_hash(path)
    elif uri is not None and not isinstance(uri, str):
        raise ExpertError(f"expert {name!r}: uri must be a string")
    return {"name": name, "kind": kind, "uri": uri or None, "attributes": attributes}


def _next_version(session: Session, expert: Expert) -> int:
    """Above the current version and every recorded fine-tuned one, so no two models share a number."""
    highest = session.scalar(select(func.max(ExpertVersion.version)).where(ExpertVersion.expert == expert.name))
    return max(expert.version or 1, int(highest or 0)) + 1


def register_experts(session: Session, specs: Sequence[Mapping[str, Any]]) -> list[Expert]:
    """Upsert experts by name; all specs (and the attributes they merge into) are validated before any row changes.

    A new uri, kind or model content bumps ``version`` (the expert's old loss rows become stale);
    re-registering an identical expert leaves the version alone. Given attributes are merged over
    the stored ones. Registering reactivates a retired expert. The session is flushed, not committed.
    """
    validated = [validate_spec(spec) for spec in specs]
    for spec in validated:  # stored attributes written before the schema existed must not survive a merge
        stored = expert_by_name(session, spec["name"])
        if stored is not None:
            validate_attributes(spec["name"], {**(stored.attributes or {}), **spec["attributes"]})
    experts: list[Expert] = []
    for spec in validated:
        expert = expert_by_name(session, spec["name"])
        if expert is None:
            expert = Expert(name=spec["name"], kind=spec["kind"], uri=spec["uri"], version=1,
                            attributes=spec["attributes"], status="active")
            session.add(expert)
        else:
            old_hash = (expert.attributes or {}).get("content_hash")
            if (expert.uri != spec["uri"] or expert.kind != spec["kind"]
                    or old_hash != spec["attributes"].get("content_hash")):
                expert.version = _next_version(session, expert)
            expert.kind, expert.uri, expert.status = spec["kind"], spec["uri"], "active"
            merged = {**(expert.attributes or {}), **spec["attributes"]}
            if spec["kind"] not in LOCAL_KINDS:
                merged.pop("content_hash", None)
            expert.attributes = merged
        session.flush()  # a repeated name later in ``specs`` finds this row
        experts.append(expert)
    return experts


def update_attributes(session: Session, changes: Mapping[str, Mapping[str, Any]]) -> list[Expert]:
    """Merge measured attributes (``{name: {key: value}}``) into registered experts; all validated first.

    Unlike registration this neither bumps a version (the model is the same) nor reactivates a
    retired expert. Daemons see the new attributes at their next poll of the active version
    (``THALAMUS_SWAP_POLL_SECONDS``), which rebuilds the constraint matrix without reloading the router.
    """
    merged: dict[str, tuple[Expert, dict[str, Any]]] = {}
    for name, values in changes.items():
        expert = expert_by_name(session, name)
        if expert is None:
            raise ExpertError(f"expert {name!r} is not registered")
        merged[name] = (expert, validate_attributes(name, {**(expert.attributes or {}), **values}))
    for expert, attributes in merged.values():
        expert.attributes = attributes
    session.flush()
    return [expert for expert, _ in merged.values()]
