"""The head diagnostic: every candidate refitted and routed on held-out truth, compared with its CV score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.head_truth import candidate_predictions, ceiling, compare, draw_cells, main, routed_losses, split_half
from router.selection import candidates
from router.selection_config import SelectionConfig


def _clusters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two clusters; expert 0 is right (loss 0.1) in the first and wrong (0.9) in the second, expert 1 the reverse."""
    rng = np.random.default_rng(seed)
    side = rng.integers(0, 2, n)
    x = np.c_[side * 2.0 - 1.0, rng.normal(size=(n, 3)) * 0.1]
    y = np.where(side[:, None] == np.array([[0, 1]]), 0.1, 0.9) + rng.normal(0, 0.02, (n, 2))
    return x, y


def test_every_candidate_is_refitted_and_the_local_heads_route_to_the_truth() -> None:
    x, y = _clusters(200, 0)
    query, truth = _clusters(100, 1)
    config = SelectionConfig(alphas=(0.1, 1e6), neighbors=(5,), pool_layers=(1,), shrinks=(2.0,), mlp_hidden=0)
    predictions = candidate_predictions(x, y, query, config, max_pool=1)
    assert set(predictions) == set(candidates(config, 1)) and all(p.shape == (100, 2) for p in predictions.values())
    routed = {c.label: loss for c, loss in routed_losses(predictions, truth).items()}
    assert routed["neighbour p=1 k=5"] == pytest.approx(truth.min(axis=1).mean())  # the oracle
    assert routed["ridge p=1 α=1e+06"] > 0.45  # shrunk to a constant: one expert everywhere
    y_partial = y.copy()
    y_partial[::2, 0] = np.nan  # half the rows observe expert 0 only through the ridge prior
    shrunk = candidate_predictions(x, y_partial, query, config, max_pool=1)
    assert np.isfinite(np.concatenate(list(shrunk.values()))).all()


def test_draw_cells_keeps_that_many_true_losses_per_prompt() -> None:
    full = np.random.default_rng(0).random((50, 4))
    for cells in (1, 3, 9):
        y = draw_cells(full, cells, np.random.default_rng(cells))
        seen = ~np.isnan(y)
        assert (seen.sum(axis=1) == min(cells, 4)).all()
        assert np.array_equal(y[seen], full[seen])
    assert not np.array_equal(np.isnan(draw_cells(full, 1, np.random.default_rng(0))),
                              np.isnan(draw_cells(full, 1, np.random.default_rng(1))))  # the draw is the seed's


def test_the_ceiling_with_full_information_routes_like_the_oracle() -> None:
    x, y = _clusters(200, 0)
    query, truth = _clusters(100, 1)
    config = SelectionConfig(alphas=(0.1, 1e6), neighbors=(5,), pool_layers=(1,), mlp_hidden=0)
    out = ceiling(x, y, query, truth, config, 1, cells=(1, 2), draws=2, seed=0)
    assert out["full"]["routed_loss"] == pytest.approx(truth.min(axis=1).mean())
    assert set(out["cells"]) == {"1", "2"} and all(len(item["draws"]) == 2 for item in out["cells"].values())
    assert out["cells"]["2"]["mean_routed_loss"] == pytest.approx(out["full"]["routed_loss"])  # 2 of 2 experts
    worst = truth.max(axis=1).mean()
    assert all(out["full"]["routed_loss"] <= r["routed_loss"] < worst for r in out["cells"]["1"]["draws"])


def test_compare_names_the_chosen_the_cv_best_and_each_familys_best() -> None:
    cv = {"ridge p=1 α=1": 0.5, "neighbour p=1 k=5": 0.4, "blend p=1 α=1 k=5": 0.45}
    routed = {"ridge p=1 α=1": 0.30, "neighbour p=1 k=5": 0.20, "blend p=1 α=1 k=5": 0.25}
    out = compare(cv, routed, "ridge p=1 α=1")
    assert out["chosen"] == {"label": "ridge p=1 α=1", "routed_loss": 0.30}
    assert out["best_by_cv"]["label"] == "neighbour p=1 k=5"
    assert list(out["best_per_family"]) == ["ridge", "neighbour", "blend"]
    assert out["spearman_cv_vs_routed"] == pytest.approx(1.0)


def test_a_home_not_kept_by_bench_loop_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(tmp_path)]) == 2
    assert "--keep-home" in capsys.readouterr().err


def test_bench_loop_keeps_only_a_new_or_empty_home(tmp_path: Path, thalamus_env: None) -> None:
    from cli._common import CliError
    from cli.bench import loop
    from tests.conftest import make_settings

    settings = make_settings(tmp_path / "home")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "thalamus.db").write_text("")
    with pytest.raises(CliError, match="new or empty"):
        loop(settings, dataset=tmp_path, keep_home=tmp_path / "full")
    assert (tmp_path / "full").is_dir() and not (tmp_path / "full" / "loop-plan.json").exists()


def test_the_best_of_equal_candidates_looks_better_where_it_was_chosen_than_on_the_other_half() -> None:
    """40 candidates all truly as good as the best single expert (each routed loss an independent coin with
    its mean), over 30 independent held-out sets: the best on one half beats the single expert there, and
    on the other half it does not, on average."""
    rng = np.random.default_rng(0)
    truth = np.c_[np.full(400, 0.4), np.full(400, 0.6)]
    runs = [split_half((rng.random((40, 400)) < 0.4).astype(float), truth, splits=50, seed=k) for k in range(30)]
    assert all(r["splits"] == 50 for r in runs)
    assert np.mean([r["chosen_half_vs_single"] for r in runs]) < -0.04  # the winner's curse: ~2 s.e. of 0.035
    assert abs(np.mean([r["other_half_vs_single"] for r in runs])) < 0.01
    routed = (rng.random((40, 400)) < 0.4).astype(float)
    better = split_half(np.r_[routed, np.full((1, 400), 0.3)], truth, splits=20)  # one truly better candidate
    assert better["other_half_vs_single"] == pytest.approx(-0.1)
