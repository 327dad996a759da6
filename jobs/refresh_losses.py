"""Compute every local expert's loss on sampled prompts that lack a row for its current version."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import and_, exists, select, union
from sqlalchemy.orm import Session

from experts.local import LocalExpert
from jobs.runs import Progress
from store.db import session_scope
from store.loss_bounds import loss_problem, max_loss
from store.queries import active_experts, upsert_losses
from store.schema import Expert, ExpertLoss, Prompt, Request
from store.settings import Settings

LOCAL_KINDS = ("masked-lm", "causal-lm")

log = logging.getLogger(__name__)


def _pending(session: Session, expert: Expert, limit: int | None) -> list[tuple[str, str]]:
    """Sampled traffic, plus prompts this expert scored at an older version (now stale)."""
    sampled = select(Request.prompt_hash.label("h")).where(Request.sampled.is_(True))
    stale = select(ExpertLoss.prompt_hash.label("h")).where(
        ExpertLoss.expert == expert.name, ExpertLoss.source == "computed", ExpertLoss.expert_version != expert.version
    )
    wanted = union(sampled, stale).subquery()
    done = exists().where(and_(
        ExpertLoss.prompt_hash == wanted.c.h, ExpertLoss.expert == expert.name,
        ExpertLoss.expert_version == expert.version, ExpertLoss.source == "computed",
    ))
    query = (
        select(Prompt.hash, Prompt.text).join(wanted, wanted.c.h == Prompt.hash).where(~done).order_by(Prompt.hash)
    )
    if limit:
        query = query.limit(limit)
    return list(session.execute(query).tuples())


def refresh_losses(settings: Settings, progress: Progress | None = None, limit: int | None = None,
                   batch_size: int = 64) -> dict[str, Any]:
    """Idempotent: a second run right after the first computes nothing.

    A computed loss that is not finite or lies outside the expert's ``[0, max_loss]`` is not written;
    it is counted in the result's ``skipped`` (and that prompt is tried again next run).
    """
    report = progress or (lambda fraction, message: None)
    with session_scope(settings) as session:
        experts = [e for e in active_experts(session) if e.kind in LOCAL_KINDS]
        work = [(expert, _pending(session, expert, limit)) for expert in experts]
    total = sum(len(items) for _, items in work) or 1
    done, scored = 0, 0
    written: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for expert, items in work:
        if not items:
            written[expert.name] = 0
            continue
        model = LocalExpert.load(expert.name, expert.kind, expert.uri or "")
        bound = max_loss(expert.attributes, settings.max_loss)
        count = 0
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            losses = [float(loss) for loss in model.losses([text for _, text in chunk])]
            rows = [
                {"prompt_hash": key, "expert": expert.name, "expert_version": expert.version,
                 "loss": loss, "source": "computed"}
                for (key, _), loss in zip(chunk, losses, strict=True) if loss_problem(loss, bound) is None
            ]
            if len(rows) < len(chunk):
                skipped[expert.name] = skipped.get(expert.name, 0) + len(chunk) - len(rows)
                log.warning("%s: %d computed losses are not finite or exceed %g; not written",
                            expert.name, len(chunk) - len(rows), bound)
            with session_scope(settings) as session:
                upsert_losses(session, rows)
            count += len(rows)
            done += len(rows)
            scored += len(chunk)
            report(scored / total, f"{expert.name}: {count}/{len(items)} prompts scored")
        written[expert.name] = count
    report(1.0, f"scored {done} (prompt, expert) pairs")
    return {"rows_written": done, "by_expert": written, "experts": [e.name for e in experts],
            "skipped": sum(skipped.values()), "skipped_by_expert": skipped}


def refresh_losses_job(settings: Settings, progress: Progress, params: dict[str, Any]) -> dict[str, Any]:
    """The job registry's entry point: ``params`` (``limit``, ``batch_size``) are keyword arguments."""
    return refresh_losses(settings, progress, **params)
