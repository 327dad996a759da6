"""Fine-tuning tiny real experts: the loss on the training texts falls, LoRA is merged, the directory is atomic."""

from __future__ import annotations

from pathlib import Path

import pytest

from experts.finetune import FinetuneConfig, finetune, save_version_dir
from experts.local import ExpertError, LocalExpert
from experts.registry import content_hash

TEXTS = ["the cat sat on the mat and looked at the dog", "the quick brown fox jumps over the lazy dog"] * 8


@pytest.mark.parametrize(("kind", "method", "rate"),
                         [("masked-lm", "lora", 1e-2), ("causal-lm", "lora", 5e-2), ("causal-lm", "full", 5e-3)])
def test_finetune_lowers_the_loss_and_saves_one_plain_directory(
        kind: str, method: str, rate: float, masked_lm_dir: Path, causal_lm_dir: Path, tmp_path: Path) -> None:
    source = masked_lm_dir if kind == "masked-lm" else causal_lm_dir
    served_hash = content_hash(source)
    expert = LocalExpert.load("e", kind, str(source))
    before = sum(expert.losses(TEXTS[:2])) / 2
    config = FinetuneConfig(method=method, lora_r=4, epochs=10, learning_rate=rate,
                            batch_size=8)
    model, history = finetune(expert.model, expert.tokenizer, kind, TEXTS, None, config)
    assert history.steps == 20 and len(history.epoch_losses) == 10
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged: a plain model again
    after = sum(LocalExpert("e", kind, model, expert.tokenizer).losses(TEXTS[:2])) / 2
    assert after < before - 0.05, (before, after)  # seeded: the same numbers every run

    path, digest = save_version_dir(model, expert.tokenizer, tmp_path / "versions", 2)
    assert path.name == f"v2-{digest[:12]}" and content_hash(path) == digest
    assert [p.name for p in (tmp_path / "versions").iterdir()] == [path.name]  # no temporary left behind
    reloaded = LocalExpert.load("e", kind, str(path))
    assert sum(reloaded.losses(TEXTS[:2])) / 2 == pytest.approx(after, abs=1e-4)
    assert content_hash(source) == served_hash  # the served directory is untouched


def test_weights_zero_out_a_text(masked_lm_dir: Path) -> None:
    expert = LocalExpert.load("e", "masked-lm", str(masked_lm_dir))
    with pytest.raises(ExpertError, match="weights"):
        finetune(expert.model, expert.tokenizer, "masked-lm", TEXTS[:2], [0.0, 0.0], FinetuneConfig())


@pytest.mark.parametrize(("field", "value"), [("lora_r", 0), ("lora_r", 2.5), ("lora_alpha", -1.0), ("method", "qlora"),
                                              ("epochs", 0), ("learning_rate", 3.0), ("batch_size", True)])
def test_invalid_parameters_say_which(field: str, value: object) -> None:
    with pytest.raises(ExpertError, match=field if field != "method" else "method must be"):
        FinetuneConfig(**{field: value}).validate()  # type: ignore[arg-type]
