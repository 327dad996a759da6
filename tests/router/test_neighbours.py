"""router.neighbours: the exact scan, the faiss index's recall, and the numpy twins of the torch heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from router.layer import neighbour_losses
from router.neighbours import NeighbourIndex, exact_neighbours, neighbour_mean, neighbour_mean_std, recall_at_k
from router.selection import neighbour_stats

APPROX_RECALL_BOUND = 0.95
"""recall@k the faiss index must reach on the seeded clustered keys below (it measures ≈ 0.99)."""


def unit_fp16(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


@pytest.fixture
def case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys fp16 (300, 48), queries not unit-norm (6, 48), losses (300, 5) with NaN) from a fixed seed."""
    rng = np.random.default_rng(3)
    keys = unit_fp16(rng.normal(size=(300, 48)))
    queries = (rng.normal(size=(6, 48)) * 3).astype(np.float32)
    losses = rng.normal(size=(300, 5)).astype(np.float32)
    losses[rng.random(losses.shape) < 0.4] = np.nan
    losses[:, 4] = np.nan
    losses[rng.random(300) < 0.3, 4] = 1.5  # expert 4 seen rarely: some neighbour sets see it once or never
    return keys, queries, losses


def test_exact_mode_equals_a_brute_force_scan_and_torch_topk(case: tuple[np.ndarray, ...]) -> None:
    keys, queries, _ = case
    index = NeighbourIndex.build(keys)
    assert index.kind == "exact" and index.describe()["rows"] == 300 and index.describe()["dim"] == 48
    got = index.search(queries, 10)
    scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ keys.astype(np.float32).T
    assert got.dtype == np.int64 and got.shape == (6, 10)
    assert np.array_equal(got, np.argsort(-scores, axis=1)[:, :10])
    unit = torch.nn.functional.normalize(torch.tensor(queries), dim=1)
    assert np.array_equal(got, (unit @ torch.tensor(keys).float().T).topk(10, dim=1).indices.numpy())


def test_k_beyond_the_rows_is_clamped_in_both_modes(case: tuple[np.ndarray, ...]) -> None:
    keys, queries, _ = case
    small = keys[:40]
    exact = NeighbourIndex.build(small).search(queries, 100)
    approx_index = NeighbourIndex.build(small, exact_up_to=0)
    assert approx_index.kind == "faiss-ivf"
    approx = approx_index.search(queries, 100)
    assert exact.shape == approx.shape == (6, 40)
    # k = rows: every row (the index probes every list when its probes hold too few), in the scan's order
    assert np.array_equal(exact, approx)


def overlapping_clusters(rows: int, seed: int) -> np.ndarray:
    """Unit keys around 64 fixed centres in 96 dimensions, noisy enough that clusters overlap (a hard case)."""
    centres = np.random.default_rng(0).normal(size=(64, 96))
    rng = np.random.default_rng(seed)
    return unit_fp16(centres[rng.integers(0, 64, rows)] + 1.6 * rng.normal(size=(rows, 96)))


def test_approximate_index_recall_on_clustered_keys() -> None:
    keys = overlapping_clusters(6000, seed=1)
    queries = overlapping_clusters(64, seed=2).astype(np.float32)
    index = NeighbourIndex.build(keys, exact_up_to=1000, seed=0)
    assert index.kind == "faiss-ivf"
    assert index.describe()["nlist"] == 77 and index.describe()["nprobe"] == 20
    recalls = {k: recall_at_k(index, queries, k) for k in (10, 50)}
    print(f"faiss-ivf recall on 6,000 × 96 overlapping clusters: {recalls}")
    assert min(recalls.values()) >= APPROX_RECALL_BOUND, recalls
    # probing fewer lists loses neighbours: the recall measured above is the index's, not the scan's
    assert recall_at_k(NeighbourIndex.build(keys, exact_up_to=1000, nprobe=1), queries, 50) < min(recalls.values())
    assert recall_at_k(NeighbourIndex.build(keys), queries, 10) == 1.0
    # the same keys and seed give the same index and answers
    again = NeighbourIndex.build(keys, exact_up_to=1000, seed=0)
    assert np.array_equal(index.search(queries, 50), again.search(queries, 50))


def test_numpy_twins_equal_the_torch_heads(case: tuple[np.ndarray, ...]) -> None:
    keys, queries, losses = case
    index = NeighbourIndex.build(keys)
    for k in (1, 7, 40):
        mine = neighbour_mean(losses, index.search(queries, k))
        theirs = neighbour_losses(torch.tensor(queries), torch.tensor(keys).float(), torch.tensor(losses), k).numpy()
        assert np.array_equal(np.isnan(mine), np.isnan(theirs))
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6, equal_nan=True)
    ks = [1, 2, 10, 40, 1000]  # 1000 > rows: clamped, as the torch code does
    mine_stats = neighbour_mean_std(losses, index.search(queries, max(ks)), ks)
    theirs_stats = neighbour_stats(torch.tensor(queries), torch.tensor(keys).float(), torch.tensor(losses), ks)
    assert len(mine_stats) == len(ks)
    for (mean, std), (t_mean, t_std) in zip(mine_stats, theirs_stats, strict=True):
        np.testing.assert_allclose(mean, t_mean.numpy(), rtol=1e-5, atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(std, t_std.numpy(), rtol=1e-4, atol=1e-5, equal_nan=True)
    mean1, std1 = mine_stats[0]
    assert np.isnan(mean1).any() and np.array_equal(np.isnan(mean1), np.isnan(std1))
    assert (std1[~np.isnan(std1)] == 0).all()  # one observation: std 0


def test_bad_input_is_refused(case: tuple[np.ndarray, ...]) -> None:
    keys, queries, losses = case
    with pytest.raises(ValueError, match="non-empty"):
        NeighbourIndex.build(np.zeros((0, 48), np.float16))
    with pytest.raises(ValueError, match="non-empty"):
        NeighbourIndex.build(np.zeros(48, np.float16))
    bad = keys.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        NeighbourIndex.build(bad)
    for index in (NeighbourIndex.build(keys), NeighbourIndex.build(keys, exact_up_to=0)):
        with pytest.raises(ValueError, match=r"\(batch, 48\)"):
            index.search(queries[:, :40], 5)
        with pytest.raises(ValueError, match=r"\(batch, 48\)"):
            index.search(queries[0], 5)
    with pytest.raises(ValueError, match="nearest"):
        neighbour_mean(losses, np.zeros((2, 0), np.int64))
    with pytest.raises(ValueError):
        exact_neighbours(keys, queries[:, :3], 5)


def test_the_search_path_does_not_import_torch() -> None:
    """The daemon's torch-free inference path builds and searches with this module."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, numpy as np; from router.neighbours import NeighbourIndex, neighbour_mean_std; "
            "keys = np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float16); "
            "i = NeighbourIndex.build(keys, exact_up_to=100); "
            "neighbour_mean_std(np.zeros((2000, 3), np.float32), i.search(np.ones((2, 16)), 5), [5]); "
            "assert i.kind == 'faiss-ivf' and 'torch' not in sys.modules, sorted(sys.modules)")
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=root, env=env)
