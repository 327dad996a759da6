"""Routing-quality benchmark through the product's own path (``thalamus bench quality``).

For a dataset of (prompt, expert, loss|score) rows (:func:`benchmarks.data.load_dataset`): a
throw-away THALAMUS_HOME with a SQLite DB, the experts registered as ``external`` (params/cost from
an optional ``models.json``), the training rows ingested with :func:`jobs.ingest.ingest_records`, a
router trained by the production job :func:`jobs.train_router.train_router` with a
:class:`jobs.recipe.TrainRecipe`, its candidate bundle loaded back with
:func:`jobs.router_store.load_version`, and every policy (:mod:`benchmarks.policies`) evaluated on
the test rows (:mod:`benchmarks.report`).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import policies as B
from benchmarks.data import Split, load_dataset, quick_slice
from benchmarks.report import policy_row, summarize
from jobs.errors import JobInputError
from jobs.recipe import TrainRecipe
from router.selection import coverage_of
from store.settings import Settings

Progress = Callable[[str], None]

LAMBDA_GRID: tuple[float, ...] = (0.0, *(round(2.0 ** (e / 2), 4) for e in range(-10, 9)))
"""λ_size sweep: 0 plus a log grid of √2 steps from 1/32 to 16 (size constraint = params / max params)."""


def bench_recipe(product: TrainRecipe, *, quick: bool = False) -> TrainRecipe:
    """The benchmark's router recipe: the product's with the encoder frozen (``lora_r = 0``, see
    docs/benchmarks.md) and max length 256 (128 with ``quick``); one epoch at a negligible learning
    rate keeps the closed-form fit. The head is the product's: selected by cross-validation on the
    training rows when ``head_select`` is on (the default), else the fixed head of the settings."""
    return replace(product, max_length=128 if quick else 256, lora_r=0, epochs=1, loss="huber", learning_rate=1e-6,
                   holdout_share=0.05)


def fixed_recipe(recipe: TrainRecipe) -> TrainRecipe:
    """The same recipe with head selection off: the fixed head (top-3 pooling, k = 100 neighbour head,
    ridge α = 1000 fallback) that was the product default before head selection, for comparison."""
    return replace(recipe, head_select=False, pool_layers=3, head_neighbors=100, head_ridge=1000.0)


def prepare_home(home: Path, train: Split, attributes: dict[str, dict[str, Any]], recipe: TrainRecipe) -> Settings:
    """Migrate a fresh SQLite DB, register the experts as external, ingest the training rows."""
    from experts.registry import register_experts
    from jobs.ingest import ingest_records
    from store.db import session_scope
    from store.migrate import upgrade

    settings = Settings(home=home, database_url=None, backbone=recipe.backbone)
    settings.ensure_home()
    upgrade(settings)
    with session_scope(settings) as session:
        register_experts(session, [{"name": n, "kind": "external", "attributes": attributes.get(n, {})}
                                   for n in train.experts])
    ingest_records(settings, train.records, source="bench")
    return settings


def train_and_predict(settings: Settings, recipe: TrainRecipe, seed: int, test_prompts: Sequence[str],
                      ) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, Any], float, np.ndarray | None]:
    """Run the production training job, load the candidate bundle, predict the test losses and
    their spreads (NaN without a calibrated spread) with PyTorch, and the test losses again with
    what a daemon serves (the bundle's ONNX export; None when it has none)."""
    from jobs.router_store import load_version
    from jobs.train_router import train_router
    from store.db import session_scope
    from store.schema import RouterVersion

    started = time.perf_counter()
    result = train_router(settings, None, {"seed": seed}, recipe=recipe)
    with session_scope(settings) as session:
        version = session.get(RouterVersion, result["version_id"])
        if version is None:
            raise RuntimeError(f"the training job's router version {result['version_id']} is not in the database")
        router = load_version(version)
        directory, sha = Path(version.checkpoint_uri), version.checkpoint_sha256
        metrics = {**result["metrics"], "inference": (version.metrics or {}).get("inference")}
    predicted, spread = router.predict_with_spread(list(test_prompts), batch_size=64)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    served = _served_predictions(directory, sha, router.expert_names, test_prompts)
    metrics["served_seconds"] = round(time.perf_counter() - started, 2)
    return predicted, spread, router.expert_names, metrics, seconds, served


def _served_predictions(directory: Path, sha: str, experts: Sequence[str], prompts: Sequence[str]) -> np.ndarray | None:
    """The predicted losses of the bundle as the daemon serves it (router/inference.py), or None without an export."""
    from router.inference import has_export
    from router.serving import load_for_serving

    if not has_export(directory):
        return None
    served, _ = load_for_serving(directory, sha, list(experts), [{} for _ in experts])
    return np.asarray(served.predict(list(prompts)))


def frozen_embeddings(backbone: str, prompts: Sequence[str], max_length: int) -> np.ndarray:
    """Mean-pooled last-layer embeddings of the frozen backbone (the baselines' features)."""
    from router.model import Router, RouterConfig

    router = Router.from_config(RouterConfig(backbone=backbone, expert_names=["x"], lora_r=0, max_length=max_length))
    return router.embed(list(prompts), batch_size=64)


def run(dataset: Path, recipe: TrainRecipe, seeds: int = 3, quick: bool = False, progress: Progress | None = None,
        lambdas: Sequence[float] = LAMBDA_GRID, home: Path | None = None, compare_fixed: bool = True,
        ) -> dict[str, Any]:
    """The whole benchmark; returns a JSON-able report (see :func:`benchmarks.report.format_report`)."""
    say = progress or (lambda message: None)
    started = time.perf_counter()
    train, test, attributes = load_dataset(dataset)
    if quick:
        train, test = quick_slice(train, test)
        seeds = min(seeds, 1)
    complete = ~np.isnan(test.losses).any(axis=1)
    if not complete.any():
        raise JobInputError("no test prompt has every expert's loss; cannot score routing policies")
    test = test.subset(np.flatnonzero(complete))
    experts = train.experts
    higher_is_better = bool(np.nanmax(np.r_[train.losses.ravel(), test.losses.ravel()]) <= 1.0)
    params = np.array([attributes.get(n, {}).get("params", np.nan) for n in experts], dtype=float)
    size = params / np.nanmax(params) if np.isfinite(params).any() else np.zeros(len(experts))
    size = np.where(np.isnan(size), 1.0, size)
    y = test.losses
    rows = np.arange(len(y))
    single = B.best_single(train.losses)
    report: dict[str, Any] = {"dataset": str(dataset), "quick": quick, "experts": experts,
                              "params": [None if math.isnan(p) else p for p in params],
                              "n_train": len(train.prompts), "n_test": len(test.prompts),
                              "best_single_expert": experts[single], "recipe": asdict(recipe),
                              "higher_is_better": higher_is_better, "policies": {}, "pareto": {}}

    def add(name: str, chosen: np.ndarray | None, chosen_losses: np.ndarray, seconds: float, **extra: Any) -> None:
        row = policy_row(chosen_losses, y, single, params, chosen, higher_is_better)
        row.update(seconds=round(seconds, 2), **extra)
        report["policies"].setdefault(name, []).append(row)

    t = time.perf_counter()
    # A random pick hits a best expert with probability (number of best experts) / (number of experts).
    add("random", None, B.expected_random_loss(y), time.perf_counter() - t,
        mean_params=float(np.nanmean(params)) if np.isfinite(params).any() else None,
        hit_rate=float(np.mean((y <= y.min(axis=1, keepdims=True) + 1e-12).mean(axis=1))))
    add("best_single", np.full(len(y), single), y[:, single], 0.0)
    oracle = y.argmin(axis=1)
    add("oracle", oracle, y[rows, oracle], 0.0)

    temp: tempfile.TemporaryDirectory[str] | None = None
    if home is None:
        temp = tempfile.TemporaryDirectory(prefix="thalamus-bench-")
        home_dir = Path(temp.name)
    else:
        home_dir = Path(home)
    try:
        say(f"preparing {home_dir}: {len(experts)} experts, {len(train.prompts)} train prompts")
        settings = prepare_home(home_dir, train, attributes, recipe)
        say("embedding prompts with the frozen backbone for the baselines")
        t = time.perf_counter()
        emb = frozen_embeddings(recipe.backbone, train.prompts + test.prompts, recipe.max_length)
        tr_x, te_x = emb[:len(train.prompts)], emb[len(train.prompts):]
        embed_seconds = time.perf_counter() - t
        grids = {"knn": (10, 30, 100, 200), "ridge": (1.0, 10.0, 100.0, 1000.0, 3000.0),
                 "mlp": (1e-2,) if quick else (1e-2, 1e-1)}
        for name, grid in grids.items():
            for seed in (range(seeds) if name == "mlp" else range(1)):  # kNN and ridge are deterministic
                say(f"baseline {name} (seed {seed})")
                t = time.perf_counter()
                pred, chosen_h = B.tuned(name, tr_x, train.losses, te_x, grid, seed=seed)
                choice = pred.argmin(axis=1)
                add(f"{name}_probe" if name != "knn" else "knn", choice, y[rows, choice],
                    time.perf_counter() - t + embed_seconds, hyper=chosen_h)
        thalamus_preds = []
        runs = [("thalamus", recipe, seed) for seed in range(seeds)]
        if compare_fixed and recipe.head_select:
            runs.append(("thalamus_fixed_head", fixed_recipe(recipe), 0))
        for name, run_recipe, seed in runs:
            say(f"training the router ({name}, seed {seed}) with the production job")
            pred, spread, order, metrics, seconds, served = train_and_predict(settings, run_recipe, seed,
                                                                              test.prompts)
            if order != experts:
                pred = pred[:, [order.index(n) for n in experts]]
                spread = spread[:, [order.index(n) for n in experts]]
                served = served[:, [order.index(n) for n in experts]] if served is not None else None
            choice = pred.argmin(axis=1)
            selection = metrics.get("head_selection") or {}
            add(name, choice, y[rows, choice], seconds,
                examples_per_second=metrics.get("examples_per_second"), best_epoch=metrics.get("best_epoch"),
                n_train_rows=metrics.get("n_train"), n_fit_rows=metrics.get("n_fit"),
                train_seconds=metrics.get("train_seconds"), selection_seconds=metrics.get("selection_seconds"),
                cache_seconds=metrics.get("cache_seconds"),
                holdout_coverage=metrics.get("candidate", {}).get("interval_coverage"),
                test_coverage=coverage_of(y, pred, spread), head=(selection.get("chosen") or {}).get("label"))
            if name == "thalamus":
                thalamus_preds.append(pred)
                report.setdefault("selections", []).append(selection)
                if served is not None:  # the same router as the daemon serves it (its ONNX export)
                    served_choice = served.argmin(axis=1)
                    add("thalamus_served", served_choice, y[rows, served_choice], metrics["served_seconds"],
                        inference=(metrics.get("inference") or {}).get("precision"),
                        agreement=float(np.mean(served_choice == choice)),
                        max_abs_diff=float(np.nanmax(np.abs(served - pred))))
            say(f"  {name} seed {seed}: loss {y[rows, choice].mean():.4f} in {seconds:.0f}s"
                + (f", head {selection['chosen']['label']}" if selection.get("chosen") else ""))
    finally:
        if temp is not None:
            temp.cleanup()

    from router.metrics import paired_bootstrap

    cis = []
    for pred in thalamus_preds:
        choice = pred.argmin(axis=1)
        # (thalamus − best single) in "higher is better" units: single loss − thalamus loss.
        cis.append(paired_bootstrap(y[:, single], y[rows, choice], n=2000, seed=0))
    report["bootstrap"] = {"per_seed": cis,
                           "seed_mean_policy": paired_bootstrap(
                               y[:, single], np.mean([y[rows, p.argmin(axis=1)] for p in thalamus_preds], axis=0),
                               n=2000, seed=0)}
    # Pareto sweep of λ_size for the router (mean over seeds) and the single experts.
    sweep = []
    for lam in lambdas:
        losses_, sizes_ = [], []
        for pred in thalamus_preds:
            choice = B.route(pred, size, lam)
            losses_.append(float(y[rows, choice].mean()))
            sizes_.append(float(np.nanmean(params[choice])) if np.isfinite(params).any() else float("nan"))
        sweep.append({"lambda_size": lam, "loss": float(np.mean(losses_)), "loss_sd": float(np.std(losses_)),
                      "mean_params": float(np.mean(sizes_))})
    singles = [{"expert": n, "loss": float(y[:, j].mean()),
                "mean_params": None if math.isnan(params[j]) else float(params[j])} for j, n in enumerate(experts)]
    report["pareto"] = {"thalamus": sweep, "single": singles}
    single_loss = float(y[:, single].mean())
    keeps = [p for p in sweep if p["loss"] <= single_loss + 1e-12 and not math.isnan(p["mean_params"])]
    report["pareto"]["cheapest_keeping_best_single"] = min(keeps, key=lambda p: p["mean_params"]) if keeps else None
    report["summary"] = summarize(report["policies"])
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    return report


def run_many(datasets: Sequence[Path], recipe: TrainRecipe, seeds: int = 3, quick: bool = False,
             progress: Progress | None = None) -> dict[str, Any]:
    """:func:`run` on each dataset; ``{"runs": [report, ...], "summary": [row, ...]}`` with one summary
    row per dataset (see :func:`benchmarks.report.summary_row`)."""
    from benchmarks.report import summary_row

    reports = [run(Path(d), recipe, seeds=seeds, quick=quick, progress=progress) for d in datasets]
    return {"runs": reports, "summary": [summary_row(r) for r in reports]}
