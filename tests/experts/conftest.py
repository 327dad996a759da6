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
    from tokenizers import BertWordPieceTokenizer

    raw = BertWordPieceTokenizer(lowercase=True)
    raw.train_from_iterator(SENTENCES, vocab_size=200, min_frequency=1, show_progress=False)
    directory.mkdir(parents=True, exist_ok=True)
    raw.save_model(str(directory))
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
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("clm")
    words = sorted({w for s in SENTENCES for w in s.split()})
    vocab = {"<|endoftext|>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                        unk_token="<unk>")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root / "model"
