"""Head selection by cross-validation and the calibrated spread, on synthetic worlds whose right head is known."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from router.selection import (
    SelectionConfig,
    calibrate,
    coverage_of,
    expert_balanced_weights,
    neighbour_stats,
    select_head,
    top_layers,
    unit_rows,
)

FAST: dict[str, Any] = {"mlp_epochs": 5, "mlp_hidden": 32, "folds": 5}


def linear_world(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Losses linear in 24 features (two pooled 'layers' of 12): a ridge head is right."""
    rng = np.random.RandomState(seed)
    x = rng.normal(size=(n, 24))
    w = np.random.RandomState(99).normal(size=(24, 4))
    return x, x @ w + 0.3 * rng.normal(size=(n, 4))


def clustered_world(n: int, seed: int, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """60 tight clusters on a 4-d sphere, each with an arbitrary best expert: no linear map fits it,
    the neighbour head does. Returns (x, losses, cluster)."""
    world = np.random.RandomState(7)
    centres = world.normal(size=(60, 4))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    table = world.uniform(0, 1, size=(60, 3))
    rng = np.random.RandomState(seed)
    cluster = rng.randint(0, 60, size=n)
    x = centres[cluster] + 0.03 * rng.normal(size=(n, 4))
    return x, table[cluster] + noise * rng.normal(size=(n, 3)), cluster


def test_a_linear_world_picks_ridge() -> None:
    x, y = linear_world(400, seed=0)
    selection = select_head(x, y, SelectionConfig(pool_layers=(1, 2), **FAST), max_pool=2)
    assert selection.chosen.family == "ridge", selection.table[:5]
    assert selection.chosen.pool_layers == 2  # the lower 'layer' carries half the signal
    by_label = {row["label"]: row["mean"] for row in selection.table}
    best_neighbour = min(v for k, v in by_label.items() if k.startswith("neighbour"))
    assert by_label[selection.chosen.label] < best_neighbour


def test_a_clustered_nonlinear_world_picks_the_neighbour_head() -> None:
    x, y, _ = clustered_world(900, seed=0)
    selection = select_head(x, y, SelectionConfig(pool_layers=(1,), neighbors=(5, 10, 30), **FAST))
    assert selection.chosen.family == "neighbour", selection.table[:5]
    by_label = {row["label"]: row["mean"] for row in selection.table}
    best_ridge = min(v for k, v in by_label.items() if k.startswith("ridge"))
    assert by_label[selection.chosen.label] < best_ridge - 0.05


def test_noise_that_cannot_be_learnt_falls_back_to_the_simplest_head() -> None:
    """Losses independent of the features: no head is better than another beyond noise, so the
    one-SE rule chooses the simplest family (ridge)."""
    rng = np.random.RandomState(3)
    selection = select_head(rng.normal(size=(300, 8)), rng.uniform(size=(300, 3)),
                            SelectionConfig(pool_layers=(1,), **FAST))
    assert selection.chosen.family == "ridge", selection.table[:5]


def test_the_cv_reads_only_the_rows_it_is_given_and_covers_each_once() -> None:
    x, y = linear_world(100, seed=1)
    selection = select_head(x, y, SelectionConfig(pool_layers=(1,), **FAST), max_pool=2)
    assert selection.folds.shape == (100,)
    assert sorted(np.bincount(selection.folds).tolist()) == [20] * 5


def test_one_observed_expert_per_row_is_scored_by_each_experts_error_equally() -> None:
    """Bandit rows: the mean over rows of the weighted cell errors is the mean over experts of each expert's
    mean error, so an expert served on 10 % of rows counts as much as the one served on 90 %."""
    rng = np.random.default_rng(0)
    y = np.full((100, 3), np.nan)
    served = np.r_[np.zeros(90, dtype=int), np.ones(10, dtype=int)]  # expert 2 never observed
    y[np.arange(100), served] = rng.uniform(size=100)
    error = rng.uniform(size=(100, 3))
    weights = expert_balanced_weights(y)
    assert weights[2] == 0 and weights[1] == pytest.approx(9 * weights[0])
    per_row = np.where(~np.isnan(y), error * weights, 0.0).sum(axis=1)
    assert per_row.mean() == pytest.approx((error[:90, 0].mean() + error[90:, 1].mean()) / 2)
    x = rng.normal(size=(100, 4))
    selection = select_head(x, y, SelectionConfig(pool_layers=(1,), neighbors=(5, 10), alphas=(1.0,), mlp_hidden=0))
    assert selection.objective == "expert_mse"


def test_top_layers_takes_the_last_columns() -> None:
    x = np.arange(12.0).reshape(1, 12)
    assert top_layers(x, 1, 3).tolist() == [[8.0, 9.0, 10.0, 11.0]]
    assert top_layers(x, 3, 3).shape == (1, 12)


def test_neighbour_stats_mean_and_std_of_the_k_nearest() -> None:
    keys = unit_rows(np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]))
    losses = torch.tensor([[1.0, np.nan], [3.0, 2.0], [10.0, 5.0]])
    (mean1, std1), (mean2, std2) = neighbour_stats(torch.tensor([[1.0, 0.01]]), keys, losses, [1, 2])
    assert mean1.tolist() == [[1.0, pytest.approx(float("nan"), nan_ok=True)]]
    assert mean2[0].tolist() == [2.0, 2.0] and std2[0].tolist() == [1.0, 0.0]


def test_the_calibrated_spread_covers_80_percent_of_fresh_rows() -> None:
    """Heteroscedastic clusters: the spread, calibrated on out-of-fold residuals of the training rows,
    covers about 80 % of the losses of rows it never saw."""
    world = np.random.RandomState(11)
    centres = world.normal(size=(40, 6))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    means, noise = world.uniform(0, 1, size=(40, 3)), world.uniform(0.02, 0.4, size=(40, 3))

    def draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.RandomState(seed)
        c = rng.randint(0, 40, size=n)
        return centres[c] + 0.02 * rng.normal(size=(n, 6)), means[c] + noise[c] * rng.normal(size=(n, 3))

    x, y = draw(1500, 0)
    config = SelectionConfig(pool_layers=(1,), neighbors=(30, 60), blend=False, mlp_hidden=0)
    selection = select_head(x, y, config)
    assert selection.chosen.family == "neighbour"
    x_new, y_new = draw(2000, 1)
    k = selection.spread_k
    (predicted, dispersion), = neighbour_stats(torch.as_tensor(x_new), unit_rows(x), torch.as_tensor(y), [k])
    assert selection.chosen.k is not None
    (predicted, _), = neighbour_stats(torch.as_tensor(x_new), unit_rows(x), torch.as_tensor(y), [selection.chosen.k])
    spread = selection.spread_scale[None, :] * np.maximum(dispersion.double().numpy(), selection.spread_floor[None, :])
    coverage = coverage_of(y_new, predicted.double().numpy(), spread)
    assert coverage is not None and abs(coverage - 0.8) <= 0.05, coverage
    assert selection.oof_coverage is not None and abs(selection.oof_coverage - 0.8) <= 0.03
    # the spread follows the noise: rows of noisy clusters get wider intervals than quiet ones
    assert np.corrcoef(spread.ravel(), np.abs(y_new - predicted.double().numpy()).ravel())[0, 1] > 0.3


def test_calibrate_scales_residuals_to_the_nominal_quantile() -> None:
    rng = np.random.RandomState(0)
    true = rng.normal(size=(1000, 1))
    scale, floor = calibrate(true, np.zeros_like(true), np.ones_like(true), 0.8)
    assert scale[0] == pytest.approx(1.2816, abs=0.12) and floor[0] == pytest.approx(0.1)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("alphas", (), "α grid"), ("neighbors", (), "k grid"), ("neighbors", (10, 0), "k must be >= 1"),
    ("pool_layers", (), "pooled-layer grid"), ("pool_layers", (0,), ">= 1"), ("alphas", (-1.0,), "> 0"),
    ("folds", 1, "2 folds"),
])
def test_bad_grids_are_refused_with_a_sentence(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SelectionConfig(**{field: value})  # type: ignore[arg-type]


def test_too_few_rows_for_the_folds_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 10 rows"):
        select_head(np.ones((6, 2)), np.ones((6, 2)), SelectionConfig(pool_layers=(1,)))


def test_intervals_overlap_compares_the_top_two_experts() -> None:
    from router.selection import intervals_overlap

    predicted = np.array([[0.1, 0.5, 0.9], [0.3, 0.35, 0.9], [0.2, 0.25, 0.1]])
    spread = np.array([[0.1, 0.1, 0.1], [0.1, 0.1, 0.1], [np.nan, np.nan, np.nan]])
    assert intervals_overlap(predicted, spread).tolist() == [False, True, False]


def test_difficulty_shared_by_every_head_does_not_let_a_worse_simple_head_through() -> None:
    """The clustered world plus a per-prompt offset common to every expert (some prompts are hard for
    all): routing is unchanged, but fold means now vary so much that ridge, 0.19 behind the neighbour
    head, lies within one fold standard error of it (Breiman's rule would take it). The paired rule
    compares the heads on the same rows, where the offset cancels, and keeps the neighbour head."""
    x, y, _ = clustered_world(900, seed=0)
    offset = np.random.RandomState(5).normal(0, 8.0, size=(900, 1))
    selection = select_head(x, y + offset, SelectionConfig(pool_layers=(1,), neighbors=(5, 10, 30), **FAST))
    assert selection.chosen.family == "neighbour", selection.table[:5]
    best = selection.table[0]
    ridge = min((r for r in selection.table if r["family"] == "ridge"), key=lambda r: r["mean"])
    assert ridge["vs_best"] < best["se"]  # inside one fold s.e.: the old rule would have chosen ridge
    assert ridge["vs_best"] > 2 * ridge["vs_best_se"]  # far outside two paired s.e.


def test_a_shrunk_neighbour_candidate_spans_the_neighbour_and_the_ridge_head() -> None:
    """(Σ observed + κ · ridge) / (count + κ): with κ far below k it scores as the neighbour mean, far above
    it as the ridge head of the same α (rows fully observed, so every neighbour counts)."""
    rng = np.random.RandomState(3)
    x = rng.normal(size=(300, 5))
    y = np.c_[x[:, 0] + 0.3 * rng.normal(size=300), -x[:, 0] + 0.3 * rng.normal(size=300)]
    config = SelectionConfig(alphas=(1.0,), neighbors=(20,), pool_layers=(1,), blend=False, shrinks=(1e-9, 1e9),
                             mlp_hidden=0)
    table = {row["label"]: row["mean"] for row in select_head(x, y, config).table}
    assert table["shrink p=1 α=1 k=20 κ=1e-09"] == pytest.approx(table["neighbour p=1 k=20"], abs=1e-6)
    assert table["shrink p=1 α=1 k=20 κ=1e+09"] == pytest.approx(table["ridge p=1 α=1"], abs=1e-6)
    with pytest.raises(ValueError, match="pseudo-count"):
        SelectionConfig(shrinks=(0.0,))


def shared_difficulty_world(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Five experts whose losses share one strong linear 'difficulty' and differ by small linear terms and
    offsets: what a prompt costs every expert is most of the signal, which expert is best the rest."""
    world = np.random.RandomState(11)
    common, own = world.normal(size=(30, 1)), 0.3 * world.normal(size=(30, 5))
    rng = np.random.RandomState(seed)
    x = rng.normal(size=(n, 30))
    return x, x @ common + x @ own + np.arange(5) * 0.2 + 0.5 * rng.normal(size=(n, 5))


def test_ridge_toward_a_shared_weight_spans_each_experts_own_fit_and_the_shared_one() -> None:
    """α → 0: each expert's own ridge; α → ∞: the one shared weight with per-expert offsets (every expert
    ranks prompts alike, so the argmin is always the expert with the lowest offset)."""
    from router.selection import RidgePath

    x, y = shared_difficulty_world(400, seed=0)
    y[np.random.RandomState(1).rand(*y.shape) < 0.6] = np.nan
    path = RidgePath(x, y)
    (own, own_bias), (pooled, pooled_bias) = path.shared([(1.0, 1e-9), (1.0, 1e9)])
    weight, bias = path.solution(1e-9)
    np.testing.assert_allclose(own, weight, atol=1e-6)
    np.testing.assert_allclose(own_bias, bias, atol=1e-6)
    np.testing.assert_allclose(pooled, np.broadcast_to(pooled[0], pooled.shape), atol=1e-6)
    assert np.ptp(pooled_bias) > 0.5  # the offsets stay per expert


def test_on_one_observed_expert_per_row_the_shared_weight_routes_better_than_each_experts_own_ridge() -> None:
    """Bandit rows of the shared-difficulty world: each expert sees a fifth of the rows, too few to learn the
    common part again on its own; the shared candidate learns it from every row. Its best setting routes
    fresh prompts closer to the oracle than the best per-expert ridge, and the CV (expert_mse) prefers it."""
    from router.selection import candidates, fit_candidates

    x, full = shared_difficulty_world(500, seed=0)
    pick = np.random.RandomState(2).randint(0, 5, size=500)
    y = np.full_like(full, np.nan)
    y[np.arange(500), pick] = full[np.arange(500), pick]
    fresh, truth = shared_difficulty_world(4000, seed=1)
    config = SelectionConfig(alphas=(0.1, 1.0, 10.0), pool_layers=(1,), blend=False, shared=True, mlp_hidden=0,
                             neighbors=(10,))
    predicted, _ = fit_candidates(x, y, fresh, candidates(config, 1), config.alphas, config.neighbors)
    regret = {c: float((truth[np.arange(4000), p.argmin(axis=1)] - truth.min(axis=1)).mean())
              for c, p in predicted.items()}
    best_of = {family: min(v for c, v in regret.items() if c.family == family) for family in ("ridge", "shared")}
    assert best_of["shared"] < 0.9 * best_of["ridge"], best_of
    selection = select_head(x, y, config)
    assert selection.objective == "expert_mse"
    assert selection.chosen.family == "shared", selection.table[:5]
