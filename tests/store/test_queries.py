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
