"""Training pieces of the demo library: a WordPiece tokenizer and small BERT masked-LMs from scratch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ExpertRecipe:
    """One demo expert: what it reads and how big it is."""

    name: str
    domains: tuple[str, ...]
    hidden: int
    layers: int
    steps: int
    lr: float = 2e-3
    release_date: str = "2026-01-01"


def train_tokenizer(texts: Sequence[str], vocab_size: int, directory: Path) -> Any:
    """A cased WordPiece vocabulary trained on ``texts``, returned as a BertTokenizerFast."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    raw = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    raw.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, show_progress=False)
    directory.mkdir(parents=True, exist_ok=True)
    raw.save_model(str(directory))
    return BertTokenizerFast(str(directory / "vocab.txt"),  # positional: vocab_file (v4) / vocab (v5)
                             do_lower_case=False, strip_accents=False,
                             model_max_length=512)


def train_masked_lm(recipe: ExpertRecipe, texts: Sequence[str], tokenizer: Any, seed: int, max_length: int,
                    batch_size: int, report: Callable[[float], None] = lambda fraction: None) -> Any:
    """A fresh BertForMaskedLM trained for ``recipe.steps`` steps of dynamic 15 % masking on ``texts``."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=recipe.hidden, num_hidden_layers=recipe.layers,
                        num_attention_heads=max(2, recipe.hidden // 32), intermediate_size=4 * recipe.hidden,
                        max_position_embeddings=max(128, max_length), pad_token_id=tokenizer.pad_token_id,
                        # a few hundred steps cannot overfit: dropout would only cost time (~40 % per step)
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForMaskedLM(config)
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, recipe.steps))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(recipe.steps):
        rows = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        batch = collator([{"input_ids": encoded[i]} for i in rows])
        loss = _masked_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 10 == 0:
            report(step / recipe.steps)
    model.eval()
    return model


def _lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over the first 10 % of steps, then linear decay to 5 %."""
    warmup = max(1, steps // 10)
    return min((step + 1) / warmup, max(0.05, (steps - step) / (steps - warmup + 1)))


def _masked_loss(model: Any, batch: Any) -> Any:
    """MLM loss computing the vocabulary head on masked positions only (most of a small model's cost)."""
    import torch.nn.functional as F

    hidden = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    chosen = batch["labels"] != -100
    return F.cross_entropy(model.cls(hidden[chosen]), batch["labels"][chosen])


def measure_latency_ms(model: Any, tokenizer: Any, repeats: int = 5) -> float:
    """Median wall time of one forward pass over 8 short prompts."""
    import statistics
    import time

    import torch

    batch = tokenizer(["def example(value): return value + 1  # a short prompt"] * 8, return_tensors="pt",
                      padding=True)
    times = []
    with torch.no_grad():
        model(**batch)
        for _ in range(repeats):
            started = time.perf_counter()
            model(**batch)
            times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 3)
