from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.datasets import LossRecord, read_loss_records
from jobs.errors import JobInputError


def test_benchmark_json_shape_turns_scores_into_losses(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"question": "2+2?", "scores": {"a": 1.0, "b": 0.25}}]))
    assert read_loss_records(path) == [LossRecord("2+2?", "a", 0.0), LossRecord("2+2?", "b", 0.75)]


def test_generic_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"prompt": "p", "expert": "a", "loss": 2.5}\n\n{"prompt": "q", "expert": "b", "score": 0.9}\n')
    records = read_loss_records(jsonl)
    assert records[0] == LossRecord("p", "a", 2.5)
    assert records[1].loss == pytest.approx(0.1)
    csv = tmp_path / "rows.csv"
    csv.write_text("prompt,expert,loss,score\nhello,a,1.5,\nworld,b,,0.5\n")
    assert read_loss_records(csv) == [LossRecord("hello", "a", 1.5), LossRecord("world", "b", 0.5)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "p", "expert": "a"}\n', "exactly one of"),
        ('{"prompt": "p", "expert": "a", "loss": 1, "score": 0.5}\n', "exactly one of"),
        ('{"prompt": "p", "expert": "a", "loss": -1}\n', "negative"),
        ('{"prompt": "p", "expert": "a", "loss": "NaN"}\n', "not finite"),
        ('{"prompt": "p", "expert": "a", "score": 1.5}\n', "outside [0, 1]"),
        ('{"prompt": "", "expert": "a", "loss": 1}\n', "non-empty string"),
        ('{"prompt": "p", "loss": 1}\n', "'expert'"),
        ("not json\n", "not valid JSON"),
        ('[1, 2]', "expected an object"),
    ],
)
def test_bad_rows_are_refused_with_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(JobInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_loss_records(path)


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(JobInputError, match="not a file"):
        read_loss_records(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(JobInputError, match="no loss records"):
        read_loss_records(empty)
