"""Routing datasets for the benchmarks: (prompt, expert, loss) records as train/test matrices.

Nothing here knows a dataset's name. A dataset is a directory holding ``train.*`` and ``test.*``
(JSON/JSONL/CSV, read by :func:`jobs.datasets.read_loss_records`, the parser ingestion uses too)
and optionally ``models.json`` ({expert: {size: "7B", input_price, output_price}}), or a single
file that is split 80/20 by a salted prompt hash.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobs.datasets import LossRecord, read_loss_records
from jobs.errors import JobInputError
from router.hashing import Salt, stable_fraction

TEST_SHARE = 0.2
"""Share of a single-file dataset's prompts that become the test split."""
QUICK_TRAIN, QUICK_TEST = 1500, 300


@dataclass
class Split:
    prompts: list[str]
    experts: list[str]
    losses: np.ndarray  # (N, E), NaN = unobserved
    records: list[LossRecord]

    def subset(self, rows: Sequence[int] | np.ndarray) -> Split:
        keep = [self.prompts[i] for i in rows]
        wanted = set(keep)
        return Split(keep, self.experts, self.losses[np.asarray(rows, dtype=int)],
                     [r for r in self.records if r.prompt in wanted])


def to_matrix(records: Sequence[LossRecord], experts: Sequence[str] | None = None) -> Split:
    """Records → one row per distinct prompt (first-seen order), one column per expert."""
    names = list(experts) if experts is not None else sorted({r.expert for r in records})
    col = {n: j for j, n in enumerate(names)}
    row: dict[str, int] = {}
    for r in records:
        row.setdefault(r.prompt, len(row))
    losses = np.full((len(row), len(names)), np.nan)
    for r in records:
        if r.expert in col:
            losses[row[r.prompt], col[r.expert]] = r.loss
    return Split(list(row), names, losses, list(records))


def parse_params(size: Any) -> float | None:
    """'7B' → 7.0, '350M' → 0.35, 7 → 7.0 (billions); None when unknown."""
    if size is None:
        return None
    if isinstance(size, (int, float)):
        return float(size)
    text = str(size).strip().upper()
    scale = {"B": 1.0, "M": 1e-3, "K": 1e-6, "T": 1e3}.get(text[-1:])
    try:
        return float(text[:-1]) * scale if scale is not None else float(text)
    except ValueError:
        return None


def _find(directory: Path, stem: str) -> Path:
    for suffix in (".json", ".jsonl", ".csv"):
        if (directory / f"{stem}{suffix}").is_file():
            return directory / f"{stem}{suffix}"
    raise JobInputError(f"{directory} has no {stem}.json, {stem}.jsonl or {stem}.csv")


def _attributes(meta: Path) -> dict[str, dict[str, Any]]:
    """{expert: {"params": billions, "cost": mean of input/output price}} from ``models.json``."""
    attributes: dict[str, dict[str, Any]] = {}
    for name, info in json.loads(meta.read_text(encoding="utf-8")).items():
        attrs: dict[str, Any] = {}
        params = parse_params(info.get("size", info.get("params")))
        if params is not None:
            attrs["params"] = params
        prices = [info.get(k) for k in ("input_price", "output_price") if isinstance(info.get(k), (int, float))]
        if prices:
            attrs["cost"] = float(sum(prices) / len(prices))
        attributes[str(name)] = attrs
    return attributes


def load_dataset(path: Path) -> tuple[Split, Split, dict[str, dict[str, Any]]]:
    """(train, test, attributes per expert) from a dataset directory or a single file."""
    path = Path(path)
    attributes: dict[str, dict[str, Any]] = {}
    if path.is_dir():
        train_records = read_loss_records(_find(path, "train"))
        test_records = read_loss_records(_find(path, "test"))
        if (path / "models.json").is_file():
            attributes = _attributes(path / "models.json")
    elif path.is_file():
        records = read_loss_records(path)
        in_test = {r.prompt: stable_fraction(r.prompt, salt=Salt.BENCH_TEST) < TEST_SHARE for r in records}
        train_records = [r for r in records if not in_test[r.prompt]]
        test_records = [r for r in records if in_test[r.prompt]]
        if not train_records or not test_records:
            raise JobInputError(f"{path}: too few prompts to split into train and test")
    else:
        raise JobInputError(f"{path} is neither a dataset directory nor a file")
    experts = sorted({r.expert for r in train_records} | {r.expert for r in test_records})
    train, test = to_matrix(train_records, experts), to_matrix(test_records, experts)
    test_prompts = set(test.prompts)
    overlap = [i for i, p in enumerate(train.prompts) if p in test_prompts]
    if overlap:  # a prompt in both splits would leak; keep it in test only
        train = train.subset([i for i in range(len(train.prompts)) if train.prompts[i] not in test_prompts])
    return train, test, attributes


def quick_slice(train: Split, test: Split, seed: int = 0, n_train: int = QUICK_TRAIN,
                n_test: int = QUICK_TEST) -> tuple[Split, Split]:
    """The fixed-seed slice used by ``--quick``: ``n_train`` train rows and ``n_test`` complete test rows."""
    rng = np.random.RandomState(seed)
    tr = np.sort(rng.permutation(len(train.prompts))[:n_train])
    complete = np.flatnonzero(~np.isnan(test.losses).any(axis=1))
    te = np.sort(rng.permutation(complete)[:n_test])
    return train.subset(tr), test.subset(te)
