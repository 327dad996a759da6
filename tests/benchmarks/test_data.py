"""Loading routing datasets: matrices, expert sizes, the single-file split, the quick slice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.data import TEST_SHARE, load_dataset, parse_params, quick_slice, to_matrix
from jobs.datasets import LossRecord
from jobs.errors import JobInputError
from router.hashing import Salt, stable_fraction


def test_parse_params_and_matrix() -> None:
    assert parse_params("7B") == 7.0 and parse_params("350M") == pytest.approx(0.35)
    assert parse_params(12) == 12.0 and parse_params(None) is None and parse_params("big") is None
    split = to_matrix([LossRecord("p", "a", 0.1), LossRecord("q", "b", 0.2), LossRecord("p", "b", 0.3)])
    assert split.prompts == ["p", "q"] and split.experts == ["a", "b"]
    np.testing.assert_array_equal(np.isnan(split.losses), [[False, False], [True, False]])


def test_single_file_is_split_by_salted_prompt_hash(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    prompts = [f"question {i}" for i in range(400)]
    path.write_text("".join(json.dumps({"prompt": p, "expert": e, "loss": 0.5})
                            + "\n" for p in prompts for e in ("a", "b")))
    train, test, attributes = load_dataset(path)
    expected = {p for p in prompts if stable_fraction(p, salt=Salt.BENCH_TEST) < TEST_SHARE}
    assert set(test.prompts) == expected and set(train.prompts) == set(prompts) - expected
    assert 50 < len(expected) < 110 and attributes == {}
    assert train.experts == test.experts == ["a", "b"] and len(train.records) == 2 * len(train.prompts)


def test_directory_with_models_and_leak_removed(tmp_path: Path) -> None:
    rows = {"train": [("shared", 0.1), ("only-train", 0.2)], "test": [("shared", 0.3), ("only-test", 0.4)]}
    for stem, items in rows.items():
        (tmp_path / f"{stem}.jsonl").write_text("".join(json.dumps({"prompt": p, "expert": "a", "loss": x}) + "\n"
                                                        for p, x in items))
    (tmp_path / "models.json").write_text(json.dumps({"a": {"size": "7B", "input_price": 1, "output_price": 3}}))
    train, test, attributes = load_dataset(tmp_path)
    assert train.prompts == ["only-train"] and test.prompts == ["shared", "only-test"]
    assert attributes == {"a": {"params": 7.0, "cost": 2.0}}
    with pytest.raises(JobInputError, match="neither"):
        load_dataset(tmp_path / "missing")


def test_quick_slice_is_fixed_and_keeps_complete_test_rows() -> None:
    train = to_matrix([LossRecord(f"t{i}", e, 0.1) for i in range(50) for e in ("a", "b")])
    test = to_matrix([LossRecord(f"s{i}", e, 0.1) for i in range(30) for e in ("a", "b") if i % 3 or e == "a"])
    a_train, a_test = quick_slice(train, test, n_train=20, n_test=5)
    b_train, b_test = quick_slice(train, test, n_train=20, n_test=5)
    assert a_train.prompts == b_train.prompts and len(a_train.prompts) == 20
    assert a_test.prompts == b_test.prompts and len(a_test.prompts) == 5 and not np.isnan(a_test.losses).any()
