"""The one stable hash behind every deterministic sample or split."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from router.hashing import Salt, stable_fraction

PROMPTS = [f"prompt number {i} about {i % 17} things" for i in range(20_000)]


def test_stable_fraction_is_sha256_of_salt_and_text() -> None:
    # Pinned: the holdout (salt "holdout" over the prompt hash) and the demo corpus keep their members.
    digest = hashlib.sha256(b"holdout:abc").digest()
    assert stable_fraction("abc", salt=Salt.HOLDOUT) == int.from_bytes(digest[:8], "big") / 2**64
    values = [stable_fraction(p, salt=Salt.VALIDATION) for p in PROMPTS[:2000]]
    assert all(0.0 <= v < 1.0 for v in values)
    assert values == [stable_fraction(p, salt=Salt.VALIDATION) for p in PROMPTS[:2000]]
    assert abs(np.mean(np.array(values) < 0.1) - 0.1) < 0.02


def test_label_sample_and_validation_split_are_independent() -> None:
    """At the defaults (both shares 0.1) about a tenth of the labelled prompts, not all, validate."""
    labelled = [p for p in PROMPTS if stable_fraction(p, salt=Salt.LABEL_SAMPLE) < 0.1]
    validating = np.mean([stable_fraction(p, salt=Salt.VALIDATION) < 0.1 for p in labelled])
    assert 1500 < len(labelled) < 2500
    assert 0.07 < validating < 0.13


def test_salts_are_distinct_and_required() -> None:
    assert len({s.value for s in Salt}) == len(Salt)
    with pytest.raises(ValueError):
        stable_fraction("abc", salt="unregistered")  # type: ignore[arg-type]
    assert stable_fraction("abc", salt=Salt.LABEL_SAMPLE) != stable_fraction("abc", salt=Salt.VALIDATION)
