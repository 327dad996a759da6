from __future__ import annotations

import pytest
from sqlalchemy import func, select

from store.db import session_scope
from store.queries import ensure_prompts, prompt_hash, upsert_losses
from store.schema import ExpertLoss, Prompt


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request):  # type: ignore[no-untyped-def]
    return request.getfixturevalue("sqlite_settings" if request.param == "sqlite" else "pg_settings")


def test_prompts_are_stored_once_in_input_order(settings) -> None:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        hashes = ensure_prompts(session, ["b", "a", "b"])
    assert hashes == [prompt_hash("b"), prompt_hash("a"), prompt_hash("b")]
    with session_scope(settings) as session:
        ensure_prompts(session, ["a", "c"])
        assert session.scalar(select(func.count(Prompt.hash))) == 3


def test_loss_rows_are_idempotent_on_their_natural_key(settings) -> None:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        (key,) = ensure_prompts(session, ["p"])
        row = {"prompt_hash": key, "expert": "e", "expert_version": 1, "source": "computed"}
        upsert_losses(session, [{**row, "loss": 1.0}])
        upsert_losses(session, [{**row, "loss": 2.0}, {**row, "expert_version": 2, "loss": 3.0},
                                {**row, "source": "reported", "loss": 0.5}])
    with session_scope(settings) as session:
        rows = session.execute(select(ExpertLoss.expert_version, ExpertLoss.source, ExpertLoss.loss)
                               .order_by(ExpertLoss.expert_version, ExpertLoss.source)).all()
    assert [tuple(r) for r in rows] == [(1, "computed", 2.0), (1, "reported", 0.5), (2, "computed", 3.0)]


def test_insert_feedback_tells_a_fresh_key_from_a_duplicate(settings) -> None:  # type: ignore[no-untyped-def]
    """On PostgreSQL ``rowcount`` of ON CONFLICT DO NOTHING is -1: freshness must not depend on it."""
    from store.queries import insert_feedback
    from store.schema import Feedback

    with session_scope(settings) as session:
        assert insert_feedback(session, "k1", "app", "r1", {"loss": 0.5}) is True
    with session_scope(settings) as session:
        assert insert_feedback(session, "k1", "app", "r1", {"loss": 0.9}) is False
        assert insert_feedback(session, "k2", None, None, {"loss": 0.1}) is True
    with session_scope(settings) as session:
        rows = session.execute(select(Feedback.idempotency_key, Feedback.payload).order_by(Feedback.id)).all()
    assert [(k, p["loss"]) for k, p in rows] == [("k1", 0.5), ("k2", 0.1)]


def test_a_batch_mixing_rows_from_before_exploration_inserts(settings) -> None:  # type: ignore[no-untyped-def]
    """A spool written by an older daemon has rows without propensity/action_probs/explored/app; a
    multi-row INSERT needs the same keys in every row, so the missing ones take their defaults."""
    import uuid

    from store.queries import insert_requests
    from store.schema import Request, utcnow

    old = {"id": str(uuid.uuid4()), "created_at": utcnow(), "prompt": "old", "lambdas": {},
           "router_version_id": None, "expert": "a", "predicted_losses": {"a": 0.1}, "sampled": False,
           "latency_ms": 1.0}
    new = {**old, "id": str(uuid.uuid4()), "prompt": "new", "expert": "b", "propensity": 0.05,
           "action_probs": {"a": 0.95, "b": 0.05}, "explored": True, "app": "chat"}
    with session_scope(settings) as session:
        assert insert_requests(session, [old, new, {**old, "id": str(uuid.uuid4()), "propensity": 1.0}]) == 3
    with session_scope(settings) as session:
        rows = {r.id: r for r in session.scalars(select(Request))}
    assert len(rows) == 3
    first, second = rows[old["id"]], rows[new["id"]]
    assert (first.propensity, first.action_probs, first.explored, first.app) == (1.0, None, False, None)
    assert (second.propensity, second.action_probs, second.explored, second.app) == (
        0.05, {"a": 0.95, "b": 0.05}, True, "chat")
