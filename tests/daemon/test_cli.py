"""Every CLI verb refuses bad input with one sentence and exit code 2, and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from daemon.cli import main
from store.db import session_scope
from store.schema import Base, Expert


def _row_counts(settings) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        return {t.name: session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


@pytest.fixture
def seeded(sqlite_settings):  # type: ignore[no-untyped-def]
    with session_scope(sqlite_settings) as session:
        session.add(Expert(name="a", kind="external", attributes={"params": 7e9}))
    return sqlite_settings


BAD = [
    (["admin", "approve", "999"], "does not exist"),
    (["admin", "approve", "abc"], "not an integer"),
    (["admin", "approve", "-3"], "positive integer"),
    (["admin", "show", "999"], "does not exist"),
    (["admin", "reject", "999", "--reason", "worse"], "does not exist"),
    (["admin", "reject", "1"], "--reason"),
    (["admin", "rollback"], "nothing to roll back"),
    (["experts", "add", "x", "--kind", "bogus"], "invalid choice"),
    (["experts", "add", "x", "--kind", "external", "--attr", "params"], "KEY=VALUE"),
    (["experts", "add", "x", "--kind", "external", "--attr", "params=inf"], "finite"),
    (["experts", "add", "x", "--kind", "masked-lm", "--uri", "/nonexistent/model"], "/nonexistent/model"),
    (["experts", "add", "x", "--kind", "external", "--attr", "params=-5"], "attribute params must be a number > 0"),
    (["experts", "add", "x", "--kind", "external", "--attr", "release_date=notadate"],
     "attribute release_date must be an ISO date"),
    (["experts", "add", "x", "--kind", "external", "--attr", "cost=cheap"], "attribute cost must be a number"),
    (["experts", "add", "a", "--kind", "external", "--attr", "latency_ms=0"], "attribute latency_ms must be a number > 0"),
    (["admin", "activate", "999", "--reason", "back"], "does not exist"),
    (["admin", "activate", "1"], "--reason"),
    (["ingest", "losses", "/nonexistent.jsonl"], "not a file"),
    (["jobs", "run", "nope"], "unknown job"),
    (["jobs", "run", "train_router", "--param", "epochs"], "KEY=VALUE"),
    (["jobs", "list", "--limit", "0"], "positive integer"),
    (["frobnicate"], "invalid choice"),
    (["bench", "quality", "--dataset", "/nonexistent/data"], "does not exist"),
    (["bench", "quality", "--dataset", "/", "--seeds", "0"], "positive integer"),
    (["bench", "quality", "--dataset", "/", "--recipe", "fast"], "invalid choice"),
    (["bench", "demo-dataset", "--out", "/etc/hostname"], "not a directory"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_2_with_a_sentence_and_writes_nothing(seeded, capsys, argv, message) -> None:  # type: ignore[no-untyped-def]
    before = _row_counts(seeded)
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert message in err
    assert "usage:" not in err and len(err.strip().splitlines()) == 1, f"one sentence, no usage line: {err!r}"
    assert _row_counts(seeded) == before


def test_bad_ingest_file_writes_nothing(seeded, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "expert": "a", "loss": 1}\n{"prompt": "q", "expert": "zzz", "loss": 1}\n')
    before = _row_counts(seeded)
    code, _, err = _run(["ingest", "losses", str(path)], capsys)
    assert code == 2 and "unknown expert" in err and "zzz" in err
    assert _row_counts(seeded) == before


def test_good_verbs_work(seeded, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    main(["experts", "add", "big", "--kind", "external", "--attr", "params=51e9", "--attr", "cost=0.9"])
    assert "expert big registered" in capsys.readouterr().out
    path = tmp_path / "ok.csv"
    path.write_text("prompt,expert,score\nhello,big,0.75\nhello,a,0.25\n")
    main(["ingest", "losses", str(path)])
    assert "ingested 2 loss records for 1 prompts" in capsys.readouterr().out
    main(["experts", "list"])
    out = capsys.readouterr().out
    assert "big" in out and "51000000000" in out.replace(".0", "")
    main(["admin", "versions"])
    assert "status" in capsys.readouterr().out


def test_a_binary_file_is_refused_naming_the_file(seeded, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    before = _row_counts(seeded)
    for name in ("losses.csv", "losses.json", "losses.jsonl"):
        path = tmp_path / name
        path.write_bytes(b"prompt,expert,loss\nok,a,1\n" + bytes(range(256)) * 40)
        code, _, err = _run(["ingest", "losses", str(path)], capsys)
        assert code == 2 and f"{path} is not UTF-8 text" in err and len(err.strip().splitlines()) == 1
    assert _row_counts(seeded) == before


def test_admin_activate_goes_back_to_a_retired_version(seeded, capsys, bundles) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from store.schema import Activation, RouterVersion
    from tests.daemon.conftest import register_version

    first = register_version(seeded, bundles["a"], status="candidate")
    second = register_version(seeded, bundles["b"], status="candidate")
    for version in (first, second):
        main(["admin", "approve", str(version)])
    capsys.readouterr()
    code, _, err = _run(["admin", "approve", str(first)], capsys)
    assert code == 2 and "admin activate" in err
    main(["admin", "activate", str(first), "--reason", "the second one misroutes code", "--actor", "carol"])
    assert f"router version {first} is active" in capsys.readouterr().out
    with session_scope(seeded) as session:
        assert {v.id: v.status for v in session.scalars(select(RouterVersion))} == {first: "active", second: "retired"}
        last = session.scalars(select(Activation).order_by(Activation.id.desc())).first()
        assert (last.router_version_id, last.previous_version_id, last.actor, last.reason) == (
            first, second, "carol", "the second one misroutes code")


def test_ingest_refuses_a_loss_outside_the_bound(seeded, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "huge.csv"
    path.write_text("prompt,expert,loss\nfine,a,0.5\nhuge,a,1e308\n")
    before = _row_counts(seeded)
    code, _, err = _run(["ingest", "losses", str(path)], capsys)
    assert code == 2
    assert "huge.csv line 3: loss 1e+308 is outside the allowed range [0, 100]" in err
    assert len(err.strip().splitlines()) == 1
    assert _row_counts(seeded) == before
