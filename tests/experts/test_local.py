"""LocalExpert on tiny real models: loading errors, losses, fill-mask, generation, and the cache."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from experts.local import ExpertCache, ExpertError, LocalExpert


def test_masked_lm_fill_mask_with_literal_or_tokenizer_mask(masked_lm_dir: Path) -> None:
    expert = LocalExpert.load("mlm", "masked-lm", str(masked_lm_dir))
    out = expert.infer("the cat sat on the [MASK] and looked at the [MASK]")
    assert out["kind"] == "fill-mask"
    assert len(out["masks"]) == 2 and all(len(m) == 5 for m in out["masks"])
    assert "[MASK]" not in out["text"] and out["text"].startswith("the cat sat on the ")
    scores = [c["score"] for c in out["masks"][0]]
    assert scores == sorted(scores, reverse=True)
    same = expert.infer(f"the cat sat on the {expert.tokenizer.mask_token} and looked at the [MASK]")
    assert same["masks"] == out["masks"]


def test_masked_lm_without_a_mask_predicts_the_last_word(masked_lm_dir: Path) -> None:
    expert = LocalExpert.load("mlm", "masked-lm", str(masked_lm_dir))
    out = expert.infer("the quick brown fox")
    assert len(out["masks"]) == 1
    assert out["text"].startswith("the quick brown ")
    assert expert.num_parameters() > 0
    losses = expert.losses(["the cat sat on the mat", "import os and print the path"])
    assert len(losses) == 2 and all(x > 0 for x in losses)


def test_causal_lm_generation_and_nll(causal_lm_dir: Path) -> None:
    expert = LocalExpert.load("gpt", "causal-lm", str(causal_lm_dir))
    out = expert.infer("the cat sat", max_new_tokens=5)
    assert out["kind"] == "generation" and out["tokens"] == 5 and isinstance(out["text"], str)
    assert expert.infer("the cat sat", max_new_tokens=5) == out  # greedy: deterministic
    assert len(expert.losses(["the cat sat on the mat", "def add(a, b): return a + b"])) == 2


def test_clear_errors(tmp_path: Path, masked_lm_dir: Path, causal_lm_dir: Path) -> None:
    with pytest.raises(ExpertError, match="does not exist"):
        LocalExpert.load("x", "masked-lm", str(tmp_path / "missing"))
    with pytest.raises(ExpertError, match="not a Hugging Face model directory"):
        LocalExpert.load("x", "masked-lm", str(tmp_path))
    with pytest.raises(ExpertError, match="not a causal-lm"):
        LocalExpert.load("x", "causal-lm", str(masked_lm_dir))
    with pytest.raises(ExpertError, match="not a masked-lm"):
        LocalExpert.load("x", "masked-lm", str(causal_lm_dir))
    with pytest.raises(ExpertError, match="only masked-lm and causal-lm"):
        LocalExpert.load("x", "external", "https://example.invalid")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    with pytest.raises(ExpertError, match="cannot load"):
        LocalExpert.load("x", "masked-lm", str(broken))
    with pytest.raises(ExpertError, match="empty"):
        LocalExpert.load("x", "masked-lm", str(masked_lm_dir)).infer("  ")
    assert issubclass(ExpertError, ValueError)


def test_cache_loads_each_key_once_and_evicts_lru(tmp_path: Path, masked_lm_dir: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(masked_lm_dir, copy)
    cache = ExpertCache(capacity=2)
    results: list[LocalExpert] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("a", "masked-lm", str(masked_lm_dir))))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(r) for r in results}) == 1  # loaded once under concurrency
    first = results[0]
    second = cache.get("a", "masked-lm", str(masked_lm_dir), version=2)  # a new version is a new entry
    assert second is not first
    cache.get("a", "masked-lm", str(masked_lm_dir), version=2)  # touch: v1 is now least recent
    cache.get("b", "masked-lm", str(copy))
    assert len(cache) == 2
    assert cache.get("a", "masked-lm", str(masked_lm_dir)) is not first  # v1 was evicted, reloaded
    with pytest.raises(ExpertError):
        cache.get("c", "masked-lm", str(tmp_path / "missing"))
