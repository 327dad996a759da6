"""Exporting a (miniature) demo library as a routing dataset and benchmarking routing on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.data import load_dataset
from benchmarks.demo_dataset import export_demo_dataset
from jobs.datasets import read_loss_records
from tests.conftest import BuiltDemo


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, mini_demo: BuiltDemo) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("demo-data")
    library = mini_demo.library
    calls: list[float] = []
    counts = export_demo_dataset(library, root / "data", progress=lambda f, m: calls.append(f))
    assert calls == sorted(calls) and calls[-1] == pytest.approx(1.0)
    return root / "data", (library, counts)


def test_export_scores_traffic_and_heldout_with_every_expert(exported) -> None:  # type: ignore[no-untyped-def]
    out, (library, counts) = exported
    names = {e["name"] for e in library.experts}
    train, test = read_loss_records(out / "train.jsonl"), read_loss_records(out / "test.jsonl")
    assert len(train) == counts["train"] and len(test) == counts["test"]
    traffic = {r["prompt"] for r in library.prompts("traffic")}
    heldout = {r["prompt"] for r in library.prompts("heldout")}
    assert {r.prompt for r in train} == traffic and {r.prompt for r in test} == heldout
    assert {r.expert for r in train} == names and len(train) == len(traffic) * len(names)
    assert all(np.isfinite(r.loss) and r.loss > 0 for r in train + test)
    models = json.loads((out / "models.json").read_text())
    assert {n: m["params"] * 1e9 for n, m in models.items()} == pytest.approx(
        {e["name"]: e["attributes"]["params"] for e in library.experts})
    assert not list(out.glob(".*"))  # no temporary file left behind


def test_exported_dataset_loads_in_the_bench(exported) -> None:  # type: ignore[no-untyped-def]
    out, (library, _) = exported
    train, test, attributes = load_dataset(out)
    assert train.experts == sorted(e["name"] for e in library.experts)
    assert not np.isnan(test.losses).any() and not set(train.prompts) & set(test.prompts)
    assert all(attributes[n]["params"] > 0 for n in train.experts)
