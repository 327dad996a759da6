"""The loop benchmark's streams: held-out rows never arrive, events happen mid-stream, families drift."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.data import Split
from benchmarks.loop_stream import kmeans, make_stream


def _split(n: int = 200, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    losses = rng.random((n, 3))
    losses[:, 1] *= 0.5  # "b" is the strongest expert
    return Split([f"prompt {i}" for i in range(n)], ["a", "b", "c"], losses, [])


def test_cold_stream_is_a_seeded_permutation_of_the_pool_and_never_shows_the_heldout() -> None:
    stream = make_stream(_split(), "cold", requests=None, seed=3, heldout_share=0.2)
    assert len(stream.heldout.prompts) == 40 and len(stream) == 160
    assert sorted(stream.order.tolist()) == list(range(160))
    assert not set(stream.pool.prompts) & set(stream.heldout.prompts)
    again = make_stream(_split(), "cold", requests=None, seed=3, heldout_share=0.2)
    assert np.array_equal(stream.order, again.order)
    longer = make_stream(_split(), "cold", requests=400, seed=3)
    assert len(longer) == 400 and np.bincount(longer.order, minlength=160).min() >= 2  # prompts repeat


def test_degraded_scales_the_strongest_experts_score_from_mid_stream() -> None:
    stream = make_stream(_split(), "degraded", requests=100, seed=0, degrade_factor=0.3)
    assert stream.event_at == 50 and stream.event_expert == "b"
    row = int(stream.order[70])
    true = stream.pool.losses[row, 1]
    assert stream.loss(70, "b") == pytest.approx(1 - 0.3 * (1 - true))
    assert stream.loss(70, "a") == stream.pool.losses[row, 0]
    assert stream.loss(10, "b") == stream.pool.losses[int(stream.order[10]), 1]


def test_new_expert_is_unavailable_until_registered() -> None:
    stream = make_stream(_split(), "new-expert", requests=100, seed=0)
    assert stream.available(49) == ["a", "c"] and stream.available(50) == ["a", "b", "c"]
    assert np.isnan(stream.losses_at(10)[1]) and not np.isnan(stream.losses_at(60)[1])


def test_drift_streams_one_family_after_another() -> None:
    rng = np.random.default_rng(0)
    centers = 10 * np.eye(8)[:4]  # four directions: cosine clusters
    points = np.concatenate([c + rng.normal(size=(50, 8)) for c in centers])
    labels = kmeans(points, 4, seed=0)
    assert len(set(labels.tolist())) == 4
    for block in range(4):  # each true cluster is one label
        assert len(set(labels[50 * block : 50 * (block + 1)].tolist())) == 1
    split = _split(200)
    stream = make_stream(split, "drift", requests=None, seed=0, families=4,
                         embed=lambda prompts: points[[split.prompts.index(p) for p in prompts]])
    families = stream.families[stream.order]
    changes = int(np.sum(families[1:] != families[:-1]))
    assert changes == 3  # four contiguous blocks


def test_bad_scenarios_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        make_stream(_split(), "sideways", requests=None, seed=0)
    with pytest.raises(ValueError, match="embedding"):
        make_stream(_split(), "drift", requests=None, seed=0)
