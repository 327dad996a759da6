"""Training pieces of the demo library: a WordPiece tokenizer and small BERT masked-LMs from scratch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and transformers load only when a library is built
    import torch
    from transformers import BertForMaskedLM, PreTrainedModel, PreTrainedTokenizerBase

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


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


def wordpiece_vocab(texts: Sequence[str], vocab_size: int, min_frequency: int = 2) -> list[str]:
    """A WordPiece vocabulary chosen deterministically (the ``tokenizers`` trainer breaks ties differently
    from run to run, so the same corpus could give different token ids).

    Pieces: the special tokens, every character seen ``min_frequency`` times (alone and as ``##c``),
    then word prefixes and ``##`` suffixes ranked by frequency × characters saved, ties by the piece.
    """
    from collections import Counter

    from tokenizers.pre_tokenizers import BertPreTokenizer

    split = BertPreTokenizer()
    words = Counter(word for text in texts for word, _ in split.pre_tokenize_str(text))
    chars: Counter[str] = Counter()
    pieces: Counter[str] = Counter()
    for word, count in words.items():
        for char in word:
            chars[char] += count
        word = word[:24]
        for i in range(2, len(word) + 1):
            pieces[word[:i]] += count
        for i in range(1, len(word) - 1):
            pieces["##" + word[i:]] += count
    alphabet = sorted(c for c, n in chars.items() if n >= min_frequency)
    base = [*SPECIAL, *alphabet, *(f"##{c}" for c in alphabet)]
    ranked = sorted((p for p, n in pieces.items() if n >= min_frequency),
                    key=lambda p: (-pieces[p] * (len(p.removeprefix("##")) - 1), p))
    return [*base, *ranked[: max(0, vocab_size - len(base))]]


def train_tokenizer(texts: Sequence[str], vocab_size: int, directory: Path) -> PreTrainedTokenizerBase:
    """A cased WordPiece tokenizer for ``texts`` (deterministic), returned as a BertTokenizerFast."""
    # v5 keeps BertTokenizerFast as a runtime alias of BertTokenizer but leaves it out of its exports;
    # v4 (also supported) needs the name.
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

    directory.mkdir(parents=True, exist_ok=True)
    vocab = wordpiece_vocab(texts, vocab_size)
    (directory / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    return BertTokenizerFast(str(directory / "vocab.txt"),  # positional: vocab_file (v4) / vocab (v5)
                             do_lower_case=False, strip_accents=False, model_max_length=512)


def train_masked_lm(recipe: ExpertRecipe, texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, seed: int,
                    max_length: int, batch_size: int,
                    report: Callable[[float], None] = lambda fraction: None) -> BertForMaskedLM:
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


def _masked_loss(model: BertForMaskedLM, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """MLM loss computing the vocabulary head on masked positions only (most of a small model's cost)."""
    import torch.nn.functional as F

    hidden = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    chosen = batch["labels"] != -100
    return F.cross_entropy(model.cls(hidden[chosen]), batch["labels"][chosen])


def measure_latency_ms(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, repeats: int = 10) -> float:
    """Fastest of ``repeats`` forward passes over 8 short prompts (the minimum resists a busy machine)."""
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
    return round(1000 * min(times), 3)
