"""The ``thalamus`` parser: built from the verb groups, every bad input one sentence and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli import _common
from cli._common import Group, arg, verb
from cli.main import GROUPS, build_parser, main
from store.db import session_scope
from store.schema import Expert
from tests.helpers import row_counts


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
    (["admin", "approve", "1", "--force"], "--force needs --reason"),
    (["admin", "approve", "1", "--force", "--reason", "  "], "--force needs --reason"),
    (["admin", "approve", "999", "--force", "--reason", "drill"], "does not exist"),
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
    (["bench", "faults", "--scenarios", "swap,meteor"], "unknown scenario(s) meteor"),
    (["bench", "faults", "--scenarios", ","], "unknown scenario(s) (none given)"),
    (["bench", "faults", "--rate", "0"], "--rate must be a positive number"),
    (["bench", "ope", "--sizes", "10"], "--sizes must be at least 20 rows"),
    (["bench", "ope", "--epsilons", "0"], "--epsilons in (0, 1]"),
    (["bench", "ope", "--sizes", "a,b"], "must be comma-separated numbers"),
    (["bench", "bandit-training", "--dataset", "/", "--policies", "epsilon:-1"],
     "--policies epsilon must lie in [0, 1], got -1"),
    (["bench", "bandit-training", "--dataset", "/", "--policies", "softmax:0"], "temperature must be a finite number > 0"),
    (["bench", "bandit-training", "--dataset", "/", "--margin", "-1"], "--margin must be a finite number >= 0"),
    (["bench", "bandit-training", "--dataset", "/nonexistent/data"], "does not exist"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_2_with_a_sentence_and_writes_nothing(seeded, capsys, argv, message) -> None:  # type: ignore[no-untyped-def]
    before = row_counts(seeded)
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert message in err
    assert "usage:" not in err and len(err.strip().splitlines()) == 1, f"one sentence, no usage line: {err!r}"
    assert row_counts(seeded) == before


def test_bad_ingest_file_writes_nothing(seeded, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "expert": "a", "loss": 1}\n{"prompt": "q", "expert": "zzz", "loss": 1}\n')
    before = row_counts(seeded)
    code, _, err = _run(["ingest", "losses", str(path)], capsys)
    assert code == 2 and "unknown expert" in err and "zzz" in err
    assert row_counts(seeded) == before


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
    before = row_counts(seeded)
    for name in ("losses.csv", "losses.json", "losses.jsonl"):
        path = tmp_path / name
        path.write_bytes(b"prompt,expert,loss\nok,a,1\n" + bytes(range(256)) * 40)
        code, _, err = _run(["ingest", "losses", str(path)], capsys)
        assert code == 2 and f"{path} is not UTF-8 text" in err and len(err.strip().splitlines()) == 1
    assert row_counts(seeded) == before


def test_top_level_help_says_what_thalamus_is_and_lists_every_group(capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = _run(["--help"], capsys)
    assert code == 0 and "continual-learning routing daemon" in out and "one function per verb" not in out
    for group in GROUPS:
        names = [v.name for v in group.verbs] if group.name is None else [group.name]
        for name in names:
            assert f"    {name}" in out, f"{name} missing from the top-level help"


def test_ingest_refuses_a_loss_outside_the_bound(seeded, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "huge.csv"
    path.write_text("prompt,expert,loss\nfine,a,0.5\nhuge,a,1e308\n")
    before = row_counts(seeded)
    code, _, err = _run(["ingest", "losses", str(path)], capsys)
    assert code == 2
    assert "huge.csv line 3: loss 1e+308 is outside the allowed range [0, 100]" in err
    assert len(err.strip().splitlines()) == 1
    assert row_counts(seeded) == before


def test_each_group_help_lists_its_verbs_with_their_docstring_line(capsys) -> None:  # type: ignore[no-untyped-def]
    for group in GROUPS:
        if group.name is None:
            continue
        code, out, _ = _run([group.name, "--help"], capsys)
        assert code == 0 and group.help in out
        for v in group.verbs:
            assert v.name in out and v.help.split()[0] in out


def test_a_verb_whose_arguments_do_not_match_its_function_is_refused_when_the_parser_is_built(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def approve(settings, version_id: int, *, actor: str) -> None:  # type: ignore[no-untyped-def]
        """Approve."""

    broken = Group("broken", "a group", (verb("approve", approve, arg("id", type=int)),))
    monkeypatch.setattr("cli.main.GROUPS", (*GROUPS, broken))
    with pytest.raises(TypeError, match=r"\['id'\] are not parameters.*\['actor', 'version_id'\] have no argument"):
        build_parser()


def test_a_verb_runs_with_the_parsed_arguments_and_its_result_is_shown(seeded, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = []

    def echo(settings, name: str, *, times: int = 1, loud: bool = False) -> str:  # type: ignore[no-untyped-def]
        """Say a name."""
        calls.append((settings.home, name, times, loud))
        return name * times

    group = Group("test", "a group", (verb("echo", echo, arg("name"), arg("--times", type=int), show=print,
                                           fails=lambda said: said == "", cli={"loud": True}),))
    monkeypatch.setattr("cli.main.GROUPS", (*GROUPS, group))
    main(["test", "echo", "ab", "--times", "2"])
    assert capsys.readouterr().out == "abab\n" and calls == [(seeded.home, "ab", 2, True)]
    code, _, _ = _run(["test", "echo", "ab", "--times", "0"], capsys)
    assert code == 1


def test_pairs_become_numbers_where_they_are_numbers() -> None:
    assert _common.parse_pair("params=51e9") == ("params", 51e9)
    assert _common.parse_pair("epochs=3") == ("epochs", 3) and isinstance(_common.parse_pair("epochs=3")[1], int)
    assert _common.parse_pair("lr=3.0")[1] == 3.0 and isinstance(_common.parse_pair("lr=3.0")[1], float)
    assert _common.parse_pair("license=MIT") == ("license", "MIT")
    for bad in ("params", "=3", "x=nan"):
        with pytest.raises(ValueError):
            _common.parse_pair(bad)


def test_python_dash_m_cli_is_the_thalamus_command() -> None:
    done = subprocess.run([sys.executable, "-m", "cli", "admin", "--help"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and "usage: thalamus admin" in done.stdout and "rollback" in done.stdout


@pytest.mark.parametrize(("value", "sentence"), [
    ("maybe", "THALAMUS_EXPLORE must be 'off', 'epsilon:ε' (0 <= ε <= 1) or 'softmax:τ' (τ > 0), got 'maybe'."),
    ("epsilon:-0.2", "THALAMUS_EXPLORE epsilon must lie in [0, 1], got -0.2."),
    ("softmax:-1", "THALAMUS_EXPLORE softmax temperature must be a finite number > 0, got -1."),
])
def test_serve_refuses_a_bad_explore_setting_before_starting(seeded, capsys, monkeypatch, value: str,  # type: ignore[no-untyped-def]
                                                             sentence: str) -> None:
    """Every verb reads the settings first, so ``thalamus serve`` exits 2 with one sentence, starting nothing."""
    from store.settings import get_settings

    monkeypatch.setenv("THALAMUS_EXPLORE", value)
    get_settings.cache_clear()
    before = row_counts(seeded)
    code, out, err = _run(["serve"], capsys)
    get_settings.cache_clear()
    assert code == 2 and err == f"thalamus: error: {sentence}\n" and out == ""
    assert row_counts(seeded) == before


def test_serve_refuses_auth_off_on_a_non_loopback_address(sqlite_settings, capsys) -> None:  # type: ignore[no-untyped-def]
    import os

    import pytest

    from cli.main import main
    from store.settings import get_settings

    os.environ.update({"THALAMUS_AUTH": "off", "THALAMUS_HOST": "0.0.0.0"})  # restored by thalamus_env
    get_settings.cache_clear()
    with pytest.raises(SystemExit) as exit_info:
        main(["serve"])
    assert exit_info.value.code == 2 and "loopback-only" in capsys.readouterr().err
