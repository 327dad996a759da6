from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from jobs.errors import JobInputError
from jobs.ingest import ingest_file
from store.db import session_scope
from store.schema import Expert, ExpertLoss, Prompt


def _add_external(settings, *names: str) -> None:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        for name in names:
            session.add(Expert(name=name, kind="external", attributes={"params": 7e9}))


def _counts(settings) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        return session.scalar(select(func.count(Prompt.hash))), session.scalar(select(func.count(ExpertLoss.id)))


def test_ingest_is_idempotent_and_latest_wins(sqlite_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _add_external(sqlite_settings, "a", "b")
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"question": "q1", "scores": {"a": 1.0, "b": 0.0}},
                                {"question": "q2", "scores": {"a": 0.5, "b": 0.5}}]))
    result = ingest_file(sqlite_settings, path)
    assert result["rows_written"] == 4 and result["prompts"] == 2
    assert _counts(sqlite_settings) == (2, 4)
    ingest_file(sqlite_settings, path)
    assert _counts(sqlite_settings) == (2, 4)
    path.write_text(json.dumps([{"question": "q1", "scores": {"a": 0.0}}]))
    ingest_file(sqlite_settings, path)
    with session_scope(sqlite_settings) as session:
        losses = session.scalars(select(ExpertLoss.loss).where(ExpertLoss.expert == "a")).all()
    assert sorted(losses) == [0.5, 1.0]


def test_unknown_expert_writes_nothing(sqlite_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _add_external(sqlite_settings, "a")
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "expert": "a", "loss": 1}\n{"prompt": "p2", "expert": "ghost", "loss": 1}\n')
    with pytest.raises(JobInputError, match="unknown expert.*ghost"):
        ingest_file(sqlite_settings, path)
    assert _counts(sqlite_settings) == (0, 0)


def test_bad_row_anywhere_writes_nothing(sqlite_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _add_external(sqlite_settings, "a")
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "expert": "a", "loss": 1}\n{"prompt": "p2", "expert": "a", "loss": -3}\n')
    with pytest.raises(JobInputError, match="line 2"):
        ingest_file(sqlite_settings, path)
    assert _counts(sqlite_settings) == (0, 0)


def test_ingest_on_postgres(pg_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _add_external(pg_settings, "a", "b")
    path = tmp_path / "d.csv"
    path.write_text("prompt,expert,score\nx,a,1\nx,b,0\ny,a,0.5\n")
    assert ingest_file(pg_settings, path)["rows_written"] == 3
    ingest_file(pg_settings, path)
    assert _counts(pg_settings) == (2, 3)


def test_a_binary_file_is_refused_naming_it(sqlite_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _add_external(sqlite_settings, "a")
    for name in ("d.csv", "d.json", "d.jsonl"):
        path = tmp_path / name
        path.write_bytes(b"prompt,expert,loss\nok,a,1\n" + bytes(range(256)) * 40)
        with pytest.raises(JobInputError, match=f"^{path} is not UTF-8 text"):
            ingest_file(sqlite_settings, path)
    assert _counts(sqlite_settings) == (0, 0)


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_loss_outside_the_bound_names_file_and_row_and_writes_nothing(request, dialect, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = request.getfixturevalue("sqlite_settings" if dialect == "sqlite" else "pg_settings")
    _add_external(settings, "a")
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "expert": "a", "loss": 1}\n{"prompt": "q", "expert": "a", "loss": 1e308}\n')
    with pytest.raises(JobInputError, match=r"d\.jsonl line 2: loss 1e\+308 is outside the allowed range \[0, 100\]"):
        ingest_file(settings, path)
    assert _counts(settings) == (0, 0)


def test_an_experts_max_loss_attribute_overrides_the_default(sqlite_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with session_scope(sqlite_settings) as session:
        session.add_all([Expert(name="wide", kind="external", attributes={"max_loss": 500}),
                         Expert(name="narrow", kind="external", attributes={"max_loss": 2})])
    path = tmp_path / "d.csv"
    path.write_text("prompt,expert,loss\np,wide,300\n")
    assert ingest_file(sqlite_settings, path)["rows_written"] == 1
    path.write_text("prompt,expert,loss\np,narrow,3\n")
    with pytest.raises(JobInputError, match=r"d\.csv line 2: loss 3 is outside the allowed range \[0, 2\]"):
        ingest_file(sqlite_settings, path)
    assert _counts(sqlite_settings) == (1, 1)


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": "a\u0000b", "expert": "a", "loss": 1}, "prompt holds the control character U+0000 (NUL)"),
    ({"prompt": "a\ud800", "expert": "a", "loss": 1}, "prompt holds a lone surrogate U+D800"),
    ({"prompt": "p", "expert": "a\u0007", "loss": 1}, "expert name holds the control character U+0007"),
    ({"question": "p", "scores": {"a\u0000": 1}}, "expert name holds the control character U+0000"),
])
def test_text_the_store_cannot_hold_is_refused(pg_settings, tmp_path: Path, row, message) -> None:  # type: ignore[no-untyped-def]
    _add_external(pg_settings, "a")
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "ok", "expert": "a", "loss": 1}\n' + json.dumps(row) + "\n")
    with pytest.raises(JobInputError, match=r"d\.jsonl line 2: " + re.escape(message)):
        ingest_file(pg_settings, path)
    assert _counts(pg_settings) == (0, 0)
