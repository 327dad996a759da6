"""The quality benchmark: its recipe, and a real --quick run on the benchmark data
(``../shared/data/dcrouter`` beside the repository; the test fails when it is missing)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from benchmarks import quality
from benchmarks.data import QUICK_TEST, QUICK_TRAIN
from benchmarks.report import format_report, plot
from jobs.recipe import TrainRecipe
from store.settings import Settings


def test_bench_recipe_is_the_product_recipe_with_a_frozen_encoder() -> None:
    product = TrainRecipe.from_settings(Settings(backbone="/models/x", train_batch_size=16))
    recipe = quality.bench_recipe(product)
    changed = {k for k, v in asdict(recipe).items() if asdict(product)[k] != v}
    assert changed == {"max_length", "lora_r", "epochs", "learning_rate", "holdout_share"}
    assert (recipe.lora_r, recipe.max_length, recipe.backbone, recipe.batch_size) == (0, 256, "/models/x", 16)
    assert quality.bench_recipe(product, quick=True).max_length == 128


def test_quick_bench_router_beats_random_and_best_single(dcrouter: Path, tmp_path: Path) -> None:
    """Real run of the product path on a fixed-seed slice (1,500 train / 300 held-out rows):
    register experts, ingest, production training job, load the bundle, evaluate."""
    recipe = quality.bench_recipe(TrainRecipe.from_settings(Settings()), quick=True)
    report = quality.run(dcrouter, recipe, seeds=1, quick=True, home=tmp_path / "home", compare_fixed=False)
    s = report["summary"]
    assert report["n_train"] == QUICK_TRAIN and report["n_test"] == QUICK_TEST
    assert s["thalamus"]["score"] > s["random"]["score"]
    assert s["thalamus"]["score"] > s["best_single"]["score"]
    assert s["oracle"]["score"] >= s["thalamus"]["score"]
    assert 0.0 < s["random"]["hit_rate"] < s["thalamus"]["hit_rate"] <= s["oracle"]["hit_rate"] == 1.0
    # the router fits on nearly every non-holdout prompt (validation share 0.1 of them)
    assert s["thalamus"]["n_fit_rows"] >= 0.8 * s["thalamus"]["n_train_rows"] > 0
    sweep = report["pareto"]["thalamus"]
    assert [p["lambda_size"] for p in sweep] == list(quality.LAMBDA_GRID)
    assert sweep[-1]["mean_params"] < sweep[0]["mean_params"]  # a size penalty picks smaller experts
    text = format_report(report)
    assert "| thalamus |" in text and "95% paired bootstrap" in text
    # the head was selected by CV on the training rows, and its 80 % intervals hold on the test split
    chosen = report["selections"][0]["chosen"]
    assert chosen["family"] in ("ridge", "neighbour", "blend", "mlp") and f"selected head {chosen['label']}" in text
    assert "head selection:" in text and "| candidate | CV mean |" in text
    assert abs(s["thalamus"]["test_coverage"] - 0.8) <= 0.05 and abs(s["thalamus"]["holdout_coverage"] - 0.8) <= 0.08
    # plain JSON, the recipe recorded (its grids are tuples, JSON lists)
    assert json.loads(json.dumps(report))["recipe"] == json.loads(json.dumps(asdict(recipe)))
    out = tmp_path / "pareto.png"
    plot(report, out)
    assert out.stat().st_size > 1000
