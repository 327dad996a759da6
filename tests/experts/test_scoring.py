"""MLM loss on the prompt-seeded mask and causal NLL, on tiny real models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from experts.scoring import causal_nll, mask_positions, mlm_losses

PROMPTS = [
    "the cat sat on the mat and looked at the dog",
    "def add(a, b): return a + b",
    "permission is hereby granted free of charge to any person",
    "the quick brown fox jumps over the lazy dog and the cat",
    "import os",
]


@pytest.fixture(scope="module")
def mlm(masked_lm_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    return AutoModelForMaskedLM.from_pretrained(masked_lm_dir), AutoTokenizer.from_pretrained(masked_lm_dir)


def test_mask_is_seeded_by_the_prompt() -> None:
    assert list(mask_positions("a prompt", 40)) == list(mask_positions("a prompt", 40))
    assert list(mask_positions("a prompt", 40)) != list(mask_positions("another prompt", 40))
    assert len(mask_positions("a prompt", 40)) == 6  # 15 % of 40
    assert len(mask_positions("x", 2)) == 1  # at least one


def test_same_prompt_same_loss_whatever_the_batch(mlm) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = mlm
    alone = [mlm_losses(model, tokenizer, [p])[0] for p in PROMPTS]
    together = mlm_losses(model, tokenizer, PROMPTS, batch_size=16)
    shuffled = mlm_losses(model, tokenizer, PROMPTS[::-1], batch_size=2)[::-1]
    again = mlm_losses(model, tokenizer, PROMPTS)
    assert together == again
    assert together == pytest.approx(alone, abs=1e-4)
    assert shuffled == pytest.approx(alone, abs=1e-4)
    assert all(math.isfinite(x) and x > 0 for x in together)


def test_masks_avoid_special_tokens_and_differ_between_prompts(mlm) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = mlm
    seen = {}
    for prompt in PROMPTS[:4]:
        ids = tokenizer(prompt)["input_ids"]
        maskable = [i for i, t in enumerate(ids) if t not in tokenizer.all_special_ids]
        chosen = [maskable[i] for i in mask_positions(prompt, len(maskable))]
        assert chosen and 0 not in chosen and len(ids) - 1 not in chosen  # never [CLS] / [SEP]
        seen[prompt] = tuple(chosen)
    assert len(set(seen.values())) > 1


def test_empty_prompt_still_has_a_finite_mlm_loss(mlm) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = mlm
    assert math.isfinite(mlm_losses(model, tokenizer, [""])[0])


def test_causal_nll_is_padding_aware(causal_lm_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(causal_lm_dir)
    tokenizer = AutoTokenizer.from_pretrained(causal_lm_dir)
    alone = [causal_nll(model, tokenizer, [p])[0] for p in PROMPTS]
    batched = causal_nll(model, tokenizer, PROMPTS, batch_size=8)
    assert batched == pytest.approx(alone, abs=1e-4)
    # a random model over V tokens has NLL near log V
    assert all(abs(x - math.log(len(tokenizer))) < 1.5 for x in batched)
    assert tokenizer.pad_token is None  # scoring did not mutate the tokenizer
