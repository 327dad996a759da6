"""Read loss records from files: the benchmark JSON shape and generic JSONL / CSV.

Accepted shapes (nothing here knows a dataset's name):
- JSON list, or JSONL, of ``{"question" | "prompt": str, "scores": {expert: score in [0, 1]}}``;
- JSONL of ``{"prompt": str, "expert": str, "loss": float}`` or ``... "score": float``;
- CSV with a header ``prompt,expert,loss`` or ``prompt,expert,score``.
A score s becomes the loss 1 − s.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.errors import JobInputError
from store.text import text_problem

MAX_ERRORS_SHOWN = 10


@dataclass(frozen=True)
class LossRecord:
    prompt: str
    expert: str
    loss: float
    where: str = field(default="", compare=False)  # "FILE line N" / "FILE item N", for error messages


def _loss_of(row: Mapping[str, Any], where: str) -> float:
    has_loss, has_score = row.get("loss") not in (None, ""), row.get("score") not in (None, "")
    if has_loss == has_score:
        raise JobInputError(f"{where}: give exactly one of 'loss' or 'score'")
    raw = row["loss"] if has_loss else row["score"]
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise JobInputError(f"{where}: {'loss' if has_loss else 'score'} {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise JobInputError(f"{where}: value {raw!r} is not finite")
    if has_loss:
        if value < 0:
            raise JobInputError(f"{where}: loss {value} is negative")
        return value
    if not 0.0 <= value <= 1.0:
        raise JobInputError(f"{where}: score {value} is outside [0, 1]")
    return 1.0 - value


def _prompt_of(row: Mapping[str, Any], where: str) -> str:
    prompt = row.get("prompt", row.get("question"))
    if not isinstance(prompt, str) or not prompt.strip():
        raise JobInputError(f"{where}: 'prompt' (or 'question') must be a non-empty string")
    _check_text(prompt, "prompt", where)
    return prompt


def _check_text(value: str, what: str, where: str) -> None:
    problem = text_problem(value)
    if problem is not None:
        raise JobInputError(f"{where}: {what} {problem}")


def _records_of(row: Any, where: str) -> Iterator[LossRecord]:
    if not isinstance(row, Mapping):
        raise JobInputError(f"{where}: expected an object, got {type(row).__name__}")
    prompt = _prompt_of(row, where)
    if "scores" in row:
        scores = row["scores"]
        if not isinstance(scores, Mapping) or not scores:
            raise JobInputError(f"{where}: 'scores' must be a non-empty object of expert → score")
        for expert, score in scores.items():
            _check_text(str(expert), "expert name", where)
            yield LossRecord(prompt, str(expert), _loss_of({"score": score}, f"{where} expert {expert!r}"), where)
        return
    expert = row.get("expert")
    if not isinstance(expert, str) or not expert.strip():
        raise JobInputError(f"{where}: 'expert' must be a non-empty string")
    _check_text(expert, "expert name", where)
    yield LossRecord(prompt, expert, _loss_of(row, where), where)


def _rows(path: Path) -> Iterator[tuple[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"prompt", "expert"} - set(reader.fieldnames or [])
            if missing:
                raise JobInputError(f"{path}: CSV header lacks {', '.join(sorted(missing))}")
            for number, row in enumerate(reader, start=2):
                yield f"{path.name} line {number}", row
        return
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise JobInputError(f"{path}: not valid JSON ({exc})") from None
        for index, row in enumerate(data):
            yield f"{path.name} item {index}", row
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JobInputError(f"{path.name} line {number}: not valid JSON ({exc.msg})") from None
        yield f"{path.name} line {number}", row


def read_loss_records(path: Path) -> list[LossRecord]:
    """All records of a file, validated; raises JobInputError listing the first problems."""
    if not path.is_file():
        raise JobInputError(f"{path} is not a file")
    records: list[LossRecord] = []
    errors: list[str] = []
    try:
        for where, row in _rows(path):
            try:
                records.extend(_records_of(row, where))
            except JobInputError as exc:
                errors.append(str(exc))
    except UnicodeDecodeError:  # a binary file, or another encoding: say which file
        raise JobInputError(f"{path} is not UTF-8 text; give a JSON, JSONL or CSV file") from None
    except csv.Error as exc:
        raise JobInputError(f"{path} is not a readable CSV file ({exc})") from None
    if errors:
        more = f" (and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise JobInputError("; ".join(errors[:MAX_ERRORS_SHOWN]) + more)
    if not records:
        raise JobInputError(f"{path} holds no loss records")
    return records
