"""``thalamus admin experts`` and the expert-version verbs: list, approve, reject, roll back; bad input exits 2."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from experts.registry import content_hash, register_experts
from store.db import session_scope
from store.queries import expert_by_name
from tests.conftest import make_masked_lm
from tests.helpers import row_counts


@pytest.fixture
def candidate(sqlite_settings: Any, tmp_path: Path, tiny_backbone: str) -> Any:
    """Expert ``e`` (version 1) and a candidate version 2: a copy of its directory with one more file."""
    from jobs.expert_versions import ensure_base_version, register_candidate

    base = Path(make_masked_lm(tmp_path / "e", tiny_backbone, 16, 5))
    copy = tmp_path / "v2"
    shutil.copytree(base, copy)
    (copy / "generation_note.json").write_text("{}")
    with session_scope(sqlite_settings) as session:
        (expert,) = register_experts(session, [{"name": "e", "kind": "masked-lm", "uri": str(base)}])
        ensure_base_version(session, expert)
        register_candidate(session, expert, 2, copy, content_hash(copy), {"method": "lora"},
                           {"own": {"n": 3, "before": 5.0, "after": 4.0, "diff": -1.0, "ci_low": -1.2,
                                    "ci_high": -0.8}, "other": None})
    return sqlite_settings


def _exit_code(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_list_approve_and_roll_back(candidate: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["admin", "experts"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:4] == ["e", "1", "-", "active"]
    assert lines[2].split()[:4] == ["e", "2", "1", "candidate"] and "5.000→4.000 [-1.200,-0.800]" in lines[2]

    assert _exit_code(["admin", "expert-approve", "e", "2", "--reason", "lower loss"]) == 0
    assert "expert e version 2 approved and served" in capsys.readouterr().out
    with session_scope(candidate) as session:
        expert = expert_by_name(session, "e")
        assert expert is not None and expert.version == 2 and expert.uri is not None and expert.uri.endswith("v2")
    assert _exit_code(["admin", "expert-reject", "e", "2", "--reason", "too late"]) == 2
    assert "only a candidate can be rejected" in capsys.readouterr().err

    assert _exit_code(["admin", "expert-rollback", "e"]) == 0
    assert "expert e serves version 1 again" in capsys.readouterr().out
    with session_scope(candidate) as session:
        expert = expert_by_name(session, "e")
        assert expert is not None and expert.version == 1


def test_reject_needs_a_reason_and_records_it(candidate: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["admin", "expert-reject", "e", "2"]) == 2
    assert _exit_code(["admin", "expert-reject", "e", "2", "--reason", "forgets legal text"]) == 0
    assert _exit_code(["admin", "expert-approve", "e", "2"]) == 2
    assert "is rejected; only a candidate can be approved" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["admin", "expert-approve", "nobody", "2"], "unknown expert 'nobody'"),
    (["admin", "expert-approve", "e", "9"], "expert 'e' has no version 9"),
    (["admin", "expert-approve", "e", "0"], "must be a positive integer"),
    (["admin", "expert-rollback", "e"], "has no predecessor to roll back to"),
])
def test_bad_input_exits_2_and_changes_nothing(candidate: Any, argv: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    before = row_counts(candidate)
    assert _exit_code(argv) == 2
    assert message in capsys.readouterr().err
    assert row_counts(candidate) == before


def test_a_changed_directory_cannot_be_approved(candidate: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.expert_versions import version_row

    with session_scope(candidate) as session:
        row = version_row(session, "e", 2)
        assert row is not None
        (Path(row.uri) / "generation_note.json").write_text('{"changed": true}')
    before = row_counts(candidate)
    assert _exit_code(["admin", "expert-approve", "e", "2"]) == 2
    assert "no longer match the content hash" in capsys.readouterr().err
    assert row_counts(candidate) == before
