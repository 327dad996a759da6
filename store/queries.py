"""Queries shared by the daemon and the jobs. Writes are idempotent where the data model says so."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.schema import Base, Expert, ExpertLoss, Prompt, RouterVersion, utcnow
from store.states import VersionStatus

ACTIVATION_CHANNEL = "thalamus_active_router"


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _insert(session: Session, table: type[Base]) -> postgresql.Insert | sqlite.Insert:
    """A dialect-specific INSERT that supports ON CONFLICT."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def ensure_prompts(session: Session, texts: Iterable[str], source: str = "traffic") -> list[str]:
    """Insert each distinct prompt once; return the hashes in input order."""
    hashes: list[str] = []
    rows: dict[str, dict[str, Any]] = {}
    for prompt in texts:
        key = prompt_hash(prompt)
        hashes.append(key)
        rows.setdefault(key, {"hash": key, "text": prompt, "source": source, "created_at": utcnow()})
    if rows:
        values = list(rows.values())
        for start in range(0, len(values), 500):
            stmt = _insert(session, Prompt).values(values[start : start + 500])
            session.execute(stmt.on_conflict_do_nothing(index_elements=["hash"]))
    return hashes


def upsert_losses(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Write loss rows keyed on (prompt_hash, expert, expert_version, source); the latest loss wins."""
    if not rows:
        return 0
    now = utcnow()
    values = [{**row, "created_at": row.get("created_at", now)} for row in rows]
    for start in range(0, len(values), 500):
        stmt = _insert(session, ExpertLoss).values(values[start : start + 500])
        stmt = stmt.on_conflict_do_update(
            index_elements=["prompt_hash", "expert", "expert_version", "source"],
            set_={"loss": stmt.excluded.loss, "created_at": stmt.excluded.created_at},
        )
        session.execute(stmt)
    return len(values)


def active_router_version(session: Session) -> RouterVersion | None:
    return session.scalars(select(RouterVersion).where(RouterVersion.status == VersionStatus.ACTIVE)).first()


def active_experts(session: Session) -> list[Expert]:
    return list(session.scalars(select(Expert).where(Expert.status == "active").order_by(Expert.name)))


def expert_by_name(session: Session, name: str) -> Expert | None:
    return session.scalars(select(Expert).where(Expert.name == name)).first()


def notify_activation(session: Session, version_id: int) -> None:
    """Tell every listening daemon that the active router changed (PostgreSQL only; SQLite daemons poll)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, :payload)"),
                        {"channel": ACTIVATION_CHANNEL, "payload": str(version_id)})


USAGE_COLUMNS = ("prompt_tokens", "completion_tokens", "upstream_ms", "served_by", "attempts")
"""Columns only gateway requests fill (NULL in other rows)."""

REQUEST_DEFAULTS: dict[str, Any] = {"propensity": 1.0, "action_probs": None, "explored": False, "app": None,
                                    **dict.fromkeys(USAGE_COLUMNS)}
"""Values for keys a logged row may lack: a row spooled by a daemon older than exploration was
served by the argmin (propensity 1, no distribution logged). SQLAlchemy's multi-row VALUES takes
its columns from the first row and silently drops other rows' extra keys (tested: an old row first
lost the next row's action_probs), so every row carries every one of these keys."""
def notify_shadows(session: Session, version_id: int) -> None:
    """Tell every listening daemon that the shadow routers changed (on the activation channel, which
    makes the daemons re-read both the active version and the shadows)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, :payload)"),
                        {"channel": ACTIVATION_CHANNEL, "payload": f"shadow:{version_id}"})


def notify_expert_activation(session: Session, name: str, version: int) -> None:
    """Tell listening daemons that an expert's served version changed: the payload ``expert:<version>:<name>``
    on the activation channel makes them re-read the experts (PostgreSQL only; SQLite daemons poll)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, :payload)"),
                        {"channel": ACTIVATION_CHANNEL, "payload": f"expert:{version}:{name}"[:7000]})


def insert_requests(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Log routed requests; each row carries its ``prompt`` text. Idempotent on the request id."""
    from store.schema import Request

    if not rows:
        return 0
    hashes = ensure_prompts(session, (row["prompt"] for row in rows))
    values = [{**REQUEST_DEFAULTS, **{k: v for k, v in row.items() if k != "prompt"}, "prompt_hash": key}
              for row, key in zip(rows, hashes, strict=True)]
    for start in range(0, len(values), 500):
        stmt = _insert(session, Request).values(values[start : start + 500])
        session.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
    return len(values)


def insert_shadow_decisions(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Log shadow routers' decisions in batched INSERTs; one already logged (same request and version) is kept."""
    from store.schema import ShadowDecision

    for start in range(0, len(rows), 500):
        stmt = _insert(session, ShadowDecision).values(list(rows[start : start + 500]))
        session.execute(stmt.on_conflict_do_nothing(index_elements=["request_id", "router_version_id"]))
    return len(rows)


def insert_feedback(session: Session, idempotency_key: str, app: str | None, request_id: str | None,
                    payload: Mapping[str, Any]) -> bool:
    """Record one raw feedback event; False when its idempotency key was seen before.

    Insertion is detected by ``RETURNING``: ``rowcount`` of ``INSERT … ON CONFLICT DO NOTHING`` is -1
    under psycopg 3, so it cannot tell a fresh row from a duplicate on PostgreSQL.
    """
    from store.schema import Feedback

    stmt = _insert(session, Feedback).values(
        idempotency_key=idempotency_key, app=app, request_id=request_id, payload=dict(payload), received_at=utcnow()
    ).on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(Feedback.id)
    return session.execute(stmt).first() is not None

