"""``thalamus experts usage``: observed tokens × price attributes become the ``cost`` constraint (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from cli import experts
from cli.main import main
from store.settings import Settings

PRICED = {"base_url": "http://127.0.0.1:9/v1", "price_per_1k_prompt_tokens": 0.5,
          "price_per_1k_completion_tokens": 1.5}


@pytest.fixture(params=["sqlite", "postgres"])
def db_settings(request: pytest.FixtureRequest) -> Settings:
    return request.getfixturevalue("sqlite_settings" if request.param == "sqlite" else "pg_settings")


def _answers(settings: Settings, expert: str, *rows: tuple[float | None, int | None, int | None]) -> None:
    """Request rows as the gateway's log writer stores them (store.queries.insert_requests)."""
    from store.db import session_scope
    from store.queries import insert_requests
    from store.schema import utcnow

    with session_scope(settings) as session:
        insert_requests(session, [{"id": str(uuid.uuid4()), "created_at": utcnow(), "prompt": f"p{i}",
                                   "expert": expert, "served_by": expert, "upstream_ms": ms,
                                   "prompt_tokens": prompt, "completion_tokens": completion, "attempts": 1}
                                  for i, (ms, prompt, completion) in enumerate(rows)])


def _stored(settings: Settings, name: str) -> tuple[dict[str, Any], int, str]:
    from store.db import session_scope
    from store.queries import expert_by_name

    with session_scope(settings) as session:
        expert = expert_by_name(session, name)
        assert expert is not None
        return dict(expert.attributes), expert.version, expert.status


def test_apply_turns_tokens_times_prices_into_cost_and_leaves_unpriced_experts_alone(  # type: ignore[no-untyped-def]
        db_settings, capsys) -> None:
    experts.add(db_settings, "priced", kind="external", attributes={**PRICED, "cost": 99})
    experts.add(db_settings, "flat", kind="external", attributes={"base_url": "http://127.0.0.1:9/v1", "cost": 2.0})
    experts.add(db_settings, "half", kind="external",
                attributes={"base_url": "http://127.0.0.1:9/v1", "price_per_1k_prompt_tokens": 1, "cost": 3})
    experts.add(db_settings, "few", kind="external", attributes=PRICED)
    # priced: 5 answers with both counts, one without a completion count (a stream that sent no usage chunk)
    _answers(db_settings, "priced", (100.0, 10, 4), (120.0, 20, 6), (80.0, 30, 8), (300.0, 40, 10), (110.0, 50, 12),
             (90.0, 1000, None))
    _answers(db_settings, "flat", *[(50.0, 100, 100)] * 5)
    _answers(db_settings, "half", *[(70.0, 100, 100)] * 5)
    _answers(db_settings, "few", (40.0, 1000, 2000), (60.0, 3000, 0))

    main(["experts", "usage", "--apply"])
    out = capsys.readouterr().out
    rows = {r.name: r for r in experts.usage(db_settings)}

    # priced: latencies 80 90 100 110 120 300 → median 105; cost = mean(p·0.5 + c·1.5)/1000 over the 5 rows
    # with both counts = (30·0.5 + 8·1.5)/1000 = 0.027; prompt mean over all 6 = 1150/6
    attributes, version, status = _stored(db_settings, "priced")
    assert attributes["latency_ms"] == 105.0 and attributes["cost"] == 0.027
    assert (version, status) == (1, "active")
    priced = rows["priced"]
    assert (priced.answers, priced.latency_ms_p50, priced.cost_per_answer, priced.cost_note) == (6, 105.0, 0.027, None)
    assert priced.prompt_tokens_mean == pytest.approx(1150 / 6) and priced.completion_tokens_mean == 8.0

    flat = _stored(db_settings, "flat")[0]
    assert flat["cost"] == 2.0 and flat["latency_ms"] == 50.0
    assert rows["flat"].cost_per_answer is None and "no price attributes" in str(rows["flat"].cost_note)
    half = _stored(db_settings, "half")[0]
    assert half["cost"] == 3 and "price_per_1k_completion_tokens missing" in str(rows["half"].cost_note)

    # few: (1000·0.5 + 2000·1.5 + 3000·0.5 + 0)/1000/2 = 2.5, reported but below --min-answers 5: not written
    few = _stored(db_settings, "few")[0]
    assert "cost" not in few and "latency_ms" not in few and rows["few"].cost_per_answer == 2.5
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert lines["priced"].endswith("latency_ms, cost") and "0.027" in lines["priced"]
    assert "latency_ms" in lines["flat"] and "no price attributes: cost unchanged" in lines["flat"]
    assert "below --min-answers 5: cost unchanged" in lines["few"] and "2.5" in lines["few"]


def test_applied_cost_steers_the_cost_constraint(db_settings) -> None:  # type: ignore[no-untyped-def]
    """The applied cost is in the unit the constraint normalises (value / max over the library)."""
    from daemon.holder import _expert_infos
    from router.constraints import CONSTRAINTS
    from router.serving import constraints_for
    from store.db import session_scope

    experts.add(db_settings, "cheap", kind="external", attributes={**PRICED, "price_per_1k_completion_tokens": 0})
    experts.add(db_settings, "dear", kind="external", attributes=PRICED)
    _answers(db_settings, "cheap", *[(10.0, 200, 100)] * 5)  # 200·0.5/1000 = 0.1
    _answers(db_settings, "dear", *[(10.0, 200, 100)] * 5)  # (100 + 150)/1000 = 0.25
    experts.usage(db_settings, apply=True)
    with session_scope(db_settings) as session:  # what a daemon reads at its next poll
        matrix = constraints_for([e.attributes for e in _expert_infos(session, ("cheap", "dear"))])
    assert matrix[:, CONSTRAINTS.index("cost")].tolist() == pytest.approx([0.4, 1.0])


@pytest.mark.parametrize("value", ["-0.5", "free"])
def test_a_bad_price_is_refused_in_one_sentence_and_nothing_is_written(  # type: ignore[no-untyped-def]
        db_settings, capsys, value: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["experts", "add", "up", "--kind", "external", "--attr", f"price_per_1k_completion_tokens={value}"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("thalamus: error: expert 'up': attribute price_per_1k_completion_tokens must be a number")
    assert experts.list_experts(db_settings) == []


def test_usage_refuses_a_bad_stored_price_and_writes_nothing(db_settings, capsys) -> None:  # type: ignore[no-untyped-def]
    """A price stored before the schema typed it (it was a free-form attribute) stops --apply as a whole."""
    from store.db import session_scope
    from store.queries import expert_by_name

    experts.add(db_settings, "good", kind="external", attributes=PRICED)
    experts.add(db_settings, "old", kind="external", attributes={"cost": 1})
    with session_scope(db_settings) as session:  # bypass validation, as an old row would
        old = expert_by_name(session, "old")
        assert old is not None
        old.attributes = {**old.attributes, "price_per_1k_prompt_tokens": -1, "price_per_1k_completion_tokens": 1}
    _answers(db_settings, "good", *[(10.0, 200, 100)] * 5)
    _answers(db_settings, "old", *[(10.0, 200, 100)] * 5)
    with pytest.raises(SystemExit) as exit_:
        main(["experts", "usage", "--apply"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "thalamus: error: expert 'old': attribute price_per_1k_prompt_tokens must be a number >= 0, not -1"
    assert "cost" not in _stored(db_settings, "good")[0] and "latency_ms" not in _stored(db_settings, "good")[0]
    assert _stored(db_settings, "old")[0]["cost"] == 1
