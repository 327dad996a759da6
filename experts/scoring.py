"""Expert losses on prompts: masked-LM loss on a deterministic mask, or causal-LM mean token NLL.

The mask of a prompt is seeded by the prompt's sha256 (``store.queries.prompt_hash``), so the
same prompt gets the same mask on every run, on every expert and in every batch composition.
Experts may have different tokenizers: the seed picks 15 % of *that expert's* maskable tokens
(never special tokens, at least one), so each expert sees the same share masked, chosen by the
same seed over its own tokenization. Losses are comparable across experts that share a tokenizer
(as the demo library does); across tokenizers they are comparable in spirit only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from router.layer import pad_token_ids
from store.queries import prompt_hash

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def mask_positions(prompt: str, candidates: int, rate: float = 0.15) -> np.ndarray:
    """Indices (sorted) of the ``candidates`` maskable positions to mask: at least one, seeded by the prompt."""
    if candidates <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(int(prompt_hash(prompt)[:16], 16))
    count = min(candidates, max(1, round(rate * candidates)))
    return np.sort(rng.choice(candidates, size=count, replace=False))


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


def _mean_per_row(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    token_loss = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    counts = (labels != -100).sum(1)
    return (token_loss.sum(1) / counts).tolist()  # 0/0 → NaN: nothing to score


@torch.no_grad()
def mlm_losses(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int = 128,
               mask_rate: float = 0.15, batch_size: int = 16) -> list[float]:
    """Mean cross-entropy over the masked positions of each text (one float per text, input order)."""
    if tokenizer.mask_token_id is None:
        raise ValueError("this tokenizer has no mask token, so it cannot score a masked LM")
    model.eval()
    device = _device(model)
    special = set(tokenizer.all_special_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    losses: list[float] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        encoded = tokenizer(chunk, truncation=True, max_length=max_length)["input_ids"]
        ids, attention = pad_token_ids([list(e) for e in encoded], pad_id)
        labels = torch.full_like(ids, -100)
        masked = ids.clone()
        for row, (text, tokens) in enumerate(zip(chunk, encoded, strict=True)):
            maskable = [i for i, t in enumerate(tokens) if t not in special]
            if not maskable:  # an empty prompt: score its last (special) token rather than nothing
                maskable = [len(tokens) - 1]
            chosen = [maskable[i] for i in mask_positions(text, len(maskable), mask_rate)]
            labels[row, chosen] = ids[row, chosen]
            masked[row, chosen] = tokenizer.mask_token_id
        logits = model(input_ids=masked.to(device), attention_mask=attention.to(device)).logits
        losses.extend(_mean_per_row(logits, labels.to(device)))
    return losses


@torch.no_grad()
def causal_nll(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int = 128,
               batch_size: int = 8) -> list[float]:
    """Mean next-token NLL of each text.

    When the tokenizer has a BOS token that it does not add itself (GPT-2), it is prepended, so the
    first token is scored too and a one-token prompt still has a loss. An empty text is scored as
    predicting EOS; a text with nothing to predict at all gets NaN.
    """
    model.eval()
    device = _device(model)
    bos = tokenizer.bos_token_id
    pad_id = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
    losses: list[float] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        encoded = tokenizer(chunk, truncation=True, max_length=max_length)["input_ids"]
        rows = [list(e) if bos is None or (e and e[0] == bos) else [bos, *e][:max_length] for e in encoded]
        rows = [r if len(r) > 1 or tokenizer.eos_token_id is None else [*r, tokenizer.eos_token_id] for r in rows]
        rows = [r or [pad_id] for r in rows]
        ids, attention = pad_token_ids(rows, pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits[:, :-1]
        targets = ids[:, 1:].masked_fill(attention[:, 1:] == 0, -100)
        losses.extend(_mean_per_row(logits, targets.to(device)))
    return losses
