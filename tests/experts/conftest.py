"""Tiny real models built in tmp dirs (no download): a BERT masked-LM and a GPT-2 causal-LM.

Both share one WordPiece vocabulary trained here with ``tokenizers`` on a few sentences.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = [
    "the cat sat on the mat and looked at the dog",
    "def add(a, b): return a + b",
    "permission is hereby granted free of charge to any person",
    "import os and print the path of the file",
    "the quick brown fox jumps over the lazy dog",
] * 20


def _vocab(directory: Path) -> Path:
    """A WordPiece vocabulary of SENTENCES' words and characters, in a fixed order. (Trained with tokenizers'
    WordPiece trainer, its order changed between processes, so the seeded model and every loss did too.)"""
    import re

    words = sorted({w for s in SENTENCES for w in re.findall(r"\w+|[^\w\s]", s.lower())})
    chars = sorted({c for w in words for c in w})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars),
              *(w for w in words if w not in chars)]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    return directory / "vocab.txt"


@pytest.fixture(scope="session")
def masked_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    root = tmp_path_factory.mktemp("mlm")
    tokenizer = BertTokenizerFast(str(_vocab(root / "vocab")), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertForMaskedLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="session")
def causal_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_causal_lm

    return Path(make_causal_lm(tmp_path_factory.mktemp("clm") / "model", SENTENCES, hidden=32, seed=0))
