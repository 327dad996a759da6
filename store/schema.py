"""The SQLAlchemy schema: the one source of truth that Alembic migrations follow."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from store.states import JobStatus, VersionStatus

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

EXPERT_KINDS = ("masked-lm", "causal-lm", "external")
LOSS_SOURCES = ("computed", "reported")


class StatusColumn(TypeDecorator[StrEnum]):
    """A ``VARCHAR(20)`` holding a ``StrEnum``'s values: writes refuse a value that is not a member,
    reads return the member. Plain text in the database (no CHECK, no native enum), so the
    migrations' ``String(20)`` columns stay as they are."""

    impl = String(20)
    cache_ok = True

    def __init__(self, enum: type[StrEnum]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> StrEnum | None:
        return None if value is None else self.enum(value)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    __table__: ClassVar[Table]  # every model maps one Table (DeclarativeBase types it as any FromClause)
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[object, type[JSON]]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Expert(Base):
    __tablename__ = "experts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    uri: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20), default="active")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class RouterVersion(Base):
    __tablename__ = "router_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("router_versions.id"))
    base_encoder: Mapped[str] = mapped_column(Text)
    checkpoint_uri: Mapped[str] = mapped_column(Text)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    expert_order: Mapped[list[Any]] = mapped_column()
    training_window: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[VersionStatus] = mapped_column(StatusColumn(VersionStatus), default=VersionStatus.CANDIDATE,
                                                  index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str | None] = mapped_column(Text)
    # Not NULL while the version is a shadow: every daemon also routes this share of live requests
    # with it, off the response path, and logs its choice in ``shadow_decisions``.
    shadow_share: Mapped[float | None] = mapped_column(Float)


class Prompt(Base):
    """Each distinct prompt text once, keyed by its sha256; the loss table refers to it."""

    __tablename__ = "prompts"

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(40), default="traffic")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Request(Base):
    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    prompt_hash: Mapped[str] = mapped_column(ForeignKey("prompts.hash"), index=True)
    lambdas: Mapped[dict[str, Any]] = mapped_column(default=dict)
    router_version_id: Mapped[int | None] = mapped_column(ForeignKey("router_versions.id"))
    expert: Mapped[str] = mapped_column(String(200))
    predicted_losses: Mapped[dict[str, Any]] = mapped_column(default=dict)
    propensity: Mapped[float] = mapped_column(Float, default=1.0)
    sampled: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    app: Mapped[str | None] = mapped_column(String(200))
    # The whole action distribution of the policy that served this request ({expert: probability},
    # summing to 1); ``propensity`` is its entry for ``expert``. NULL for rows logged before 0003,
    # which were served deterministically (propensity 1).
    action_probs: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    explored: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Requests answered by the OpenAI-compatible gateway: the upstream's token usage, the time the expert
    # took to answer, which expert answered (``expert`` unless a retry moved it) and how many were tried.
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    upstream_ms: Mapped[float | None] = mapped_column(Float)
    served_by: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int | None] = mapped_column(Integer)


class ExpertLoss(Base):
    """The loss table. Idempotent on (prompt, expert, expert version, source)."""

    __tablename__ = "expert_losses"
    __table_args__ = (
        UniqueConstraint("prompt_hash", "expert", "expert_version", "source", name="uq_expert_losses_key"),
        Index("ix_expert_losses_expert_version", "expert", "expert_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_hash: Mapped[str] = mapped_column(ForeignKey("prompts.hash"), index=True)
    expert: Mapped[str] = mapped_column(String(200))
    expert_version: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    app: Mapped[str | None] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(36), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobRun(Base):
    __tablename__ = "job_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(60), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    trigger: Mapped[str] = mapped_column(String(40), default="cli")
    status: Mapped[JobStatus] = mapped_column(StatusColumn(JobStatus), default=JobStatus.QUEUED, index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # Liveness: the running task writes heartbeat_at every THALAMUS_JOB_HEARTBEAT_SECONDS; a run whose
    # heartbeat is older than THALAMUS_JOB_LOST_AFTER_SECONDS is marked lost and re-run as a new row.
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(String(200))
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    retry_of: Mapped[int | None] = mapped_column(ForeignKey("job_runs.id"), index=True)


class Activation(Base):
    """Append-only: which router version became active when, and why."""

    __tablename__ = "activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    router_version_id: Mapped[int] = mapped_column(ForeignKey("router_versions.id"))
    previous_version_id: Mapped[int | None] = mapped_column(ForeignKey("router_versions.id"))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ShadowDecision(Base):
    """What a shadow router would have chosen for a live request (it served nothing)."""

    __tablename__ = "shadow_decisions"
    __table_args__ = (UniqueConstraint("request_id", "router_version_id", name="uq_shadow_decisions_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(36))
    router_version_id: Mapped[int] = mapped_column(ForeignKey("router_versions.id"), index=True)
    expert: Mapped[str] = mapped_column(String(200))
    served_expert: Mapped[str] = mapped_column(String(200))
    predicted_losses: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class GateDecision(Base):
    """Append-only: every promotion-gate verdict on a candidate, promote or not, with its numbers."""

    __tablename__ = "gate_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    router_version_id: Mapped[int] = mapped_column(ForeignKey("router_versions.id"), index=True)
    active_version_id: Mapped[int | None] = mapped_column(ForeignKey("router_versions.id"))
    decision: Mapped[str] = mapped_column(String(20))  # "promote", "hold", "refuse", "forced"
    basis: Mapped[str] = mapped_column(String(20))  # "off-policy", "holdout", "none"
    numbers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ExpertVersion(Base):
    """One version of a local expert's weights: the base it was registered with, or a fine-tune of it.

    ``version`` is the number its computed loss rows carry (``expert_losses.expert_version``); the
    active row's ``uri`` and ``version`` are the ``experts`` row's. Fine-tunes start as candidates.
    """

    __tablename__ = "expert_versions"
    __table_args__ = (UniqueConstraint("expert", "version", name="uq_expert_versions_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    expert: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    parent_version: Mapped[int | None] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[VersionStatus] = mapped_column(StatusColumn(VersionStatus), default=VersionStatus.CANDIDATE)
    training: Mapped[dict[str, Any]] = mapped_column(default=dict)  # method, LoRA parameters, prompts used
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)  # loss before/after, own and other prompts
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str | None] = mapped_column(Text)


class ExpertActivation(Base):
    """Append-only: which version of an expert became active when, and why (``rollback`` follows it)."""

    __tablename__ = "expert_activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    expert: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    previous_version: Mapped[int | None] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    """An API key: shown once, stored as the sha256 of its secret (a 256-bit random token, so no KDF is needed).

    ``key_id`` is the public part of the key (``thk_<key_id>_<secret>``), used to find the row.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    app: Mapped[str] = mapped_column(String(200), index=True)
    scopes: Mapped[list[Any]] = mapped_column()
    rate_limit: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
