"""Training pieces of the demo library: a WordPiece tokenizer, small BERT masked-LMs and GPT-2 causal-LMs
trained from scratch.

Both kinds read the same WordPiece vocabulary, so a prompt is the same token sequence for every expert
and their losses are nats per token of one tokenization (see ``experts.demo`` for what that makes
comparable). The causal-LM's tokenizer differs only in its template: ``[CLS]`` (its BOS) before the
text and no ``[SEP]`` after, so it can continue a prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and transformers load only when a library is built
    import torch
    from transformers import BertForMaskedLM, GPT2LMHeadModel, PreTrainedModel, PreTrainedTokenizerBase

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
    kind: str = "masked-lm"  # or "causal-lm" (GPT-2)
    mask_rate: float = 0.15  # masked-LM training only (scoring always masks 15 %)


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


def causal_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    """The WordPiece tokenizer in ``directory`` (``vocab.txt``) for a causal LM: ``[CLS]`` + text, no ``[SEP]``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
    ids = {token: index for index, token in enumerate(vocab)}
    core = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    core.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                                 lowercase=False)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A", pair="[CLS] $A $B",
                                                        special_tokens=[("[CLS]", ids["[CLS]"])])
    core.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="[CLS]", eos_token="[SEP]", unk_token="[UNK]",
                                   pad_token="[PAD]", mask_token="[MASK]", model_max_length=512)


def train_causal_lm(recipe: ExpertRecipe, texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, seed: int,
                    max_length: int, batch_size: int,
                    report: Callable[[float], None] = lambda fraction: None) -> GPT2LMHeadModel:
    """A fresh GPT-2 trained for ``recipe.steps`` steps of next-token prediction on ``texts``
    (``tokenizer`` from :func:`causal_tokenizer`: each text is ``[CLS]`` + its tokens, as scored)."""
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    from router.layer import pad_token_ids

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=recipe.hidden, n_layer=recipe.layers,
                        n_head=max(2, recipe.hidden // 32), n_inner=4 * recipe.hidden,
                        n_positions=max(128, max_length), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    pad_id = int(tokenizer.pad_token_id)

    def step_loss(batch_rows: list[list[int]]) -> torch.Tensor:
        ids, attention = pad_token_ids(batch_rows, pad_id)
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        targets = ids[:, 1:].masked_fill(attention[:, 1:] == 0, -100)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)

    _fit(model, recipe, seed, lambda rows: step_loss([list(encoded[i]) for i in rows]), len(encoded), batch_size,
         report)
    return model


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
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=recipe.mask_rate, return_tensors="pt")
    _fit(model, recipe, seed, lambda rows: _masked_loss(model, collator([{"input_ids": encoded[i]} for i in rows])),
         len(encoded), batch_size, report)
    return model


def _fit(model: PreTrainedModel, recipe: ExpertRecipe, seed: int, loss_of: Callable[[list[int]], torch.Tensor],
         rows: int, batch_size: int, report: Callable[[float], None]) -> None:
    """``recipe.steps`` AdamW steps on batches of ``batch_size`` row indices drawn (seeded) from ``rows``."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, recipe.steps))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(recipe.steps):
        loss = loss_of(torch.randint(rows, (batch_size,), generator=generator).tolist())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 10 == 0:
            report(step / recipe.steps)
    model.eval()


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
