"""Routing-quality benchmark through the product's own path.

For a dataset of (prompt, expert, loss|score) rows: a throw-away THALAMUS_HOME with a SQLite DB,
the experts registered as ``external`` (params/cost from an optional ``models.json``), the
training rows ingested with :func:`jobs.ingest.ingest_records`, a router trained by the
production job :func:`jobs.train_router.train_router` (recipe from THALAMUS_TRAIN_* settings and
``params``), its candidate bundle loaded back with :func:`jobs.router_store.load_version`, and
every policy evaluated on the test rows read with :func:`jobs.datasets.read_loss_records`.

Nothing here knows a dataset's name. ``--dataset`` is a directory holding ``train.*`` and
``test.*`` (JSON/JSONL/CSV) and optionally ``models.json`` ({expert: {size: "7B", input_price,
output_price}}), or a single file that is split 80/20 by prompt hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobs import baselines as B
from jobs.datasets import LossRecord, read_loss_records
from jobs.errors import JobInputError

Progress = Callable[[str], None]

LAMBDA_GRID: tuple[float, ...] = (0.0, *(round(2.0 ** (e / 2), 4) for e in range(-10, 9)))
"""λ_size sweep: 0 plus a log grid of √2 steps from 1/32 to 16 (size constraint = params / max params)."""

RECIPE: dict[str, str] = {
    # The benchmark's router recipe, chosen by 5-fold CV on the training split (docs/benchmarks.md):
    # frozen MiniLM, mean pooling of the top 3 hidden states concatenated, a neighbour head
    # (k = 100 most similar training prompts) over a linear head fitted in closed form by ridge
    # regression; one epoch at a negligible learning rate keeps that fit.
    "THALAMUS_TRAIN_MAX_LENGTH": "256",
    "THALAMUS_TRAIN_LORA_R": "0",
    "THALAMUS_TRAIN_POOL_LAYERS": "3",
    "THALAMUS_TRAIN_HEAD_NEIGHBORS": "100",
    "THALAMUS_TRAIN_HEAD_RIDGE": "1000",
    "THALAMUS_TRAIN_EPOCHS": "1",
    "THALAMUS_TRAIN_LOSS": "huber",
    "THALAMUS_TRAIN_LEARNING_RATE": "0.000001",
    "THALAMUS_TRAIN_HOLDOUT_SHARE": "0.05",
}
QUICK_RECIPE: dict[str, str] = {**RECIPE, "THALAMUS_TRAIN_MAX_LENGTH": "128"}
QUICK_TRAIN, QUICK_TEST = 1500, 300


# ---- data ------------------------------------------------------------------------------------
@dataclass
class Split:
    prompts: list[str]
    experts: list[str]
    losses: np.ndarray  # (N, E), NaN = unobserved
    records: list[LossRecord]

    def subset(self, rows: Sequence[int]) -> "Split":
        keep = [self.prompts[i] for i in rows]
        wanted = set(keep)
        return Split(keep, self.experts, self.losses[np.asarray(rows, dtype=int)],
                     [r for r in self.records if r.prompt in wanted])


def to_matrix(records: Sequence[LossRecord], experts: Sequence[str] | None = None) -> Split:
    """Records → one row per distinct prompt (first-seen order), one column per expert."""
    names = list(experts) if experts is not None else sorted({r.expert for r in records})
    col = {n: j for j, n in enumerate(names)}
    row: dict[str, int] = {}
    for r in records:
        row.setdefault(r.prompt, len(row))
    losses = np.full((len(row), len(names)), np.nan)
    for r in records:
        if r.expert in col:
            losses[row[r.prompt], col[r.expert]] = r.loss
    return Split(list(row), names, losses, list(records))


def parse_params(size: Any) -> float | None:
    """'7B' → 7.0, '350M' → 0.35, 7 → 7.0 (billions); None when unknown."""
    if size is None:
        return None
    if isinstance(size, (int, float)):
        return float(size)
    text = str(size).strip().upper()
    scale = {"B": 1.0, "M": 1e-3, "K": 1e-6, "T": 1e3}.get(text[-1:], None)
    try:
        return float(text[:-1]) * scale if scale is not None else float(text)
    except ValueError:
        return None


def _hash_unit(prompt: str) -> float:
    return int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def _find(directory: Path, stem: str) -> Path:
    for suffix in (".json", ".jsonl", ".csv"):
        if (directory / f"{stem}{suffix}").is_file():
            return directory / f"{stem}{suffix}"
    raise JobInputError(f"{directory} has no {stem}.json, {stem}.jsonl or {stem}.csv")


def load_dataset(path: Path) -> tuple[Split, Split, dict[str, dict[str, Any]]]:
    """(train, test, attributes per expert) from a dataset directory or a single file."""
    path = Path(path)
    attributes: dict[str, dict[str, Any]] = {}
    if path.is_dir():
        train_records = read_loss_records(_find(path, "train"))
        test_records = read_loss_records(_find(path, "test"))
        meta = path / "models.json"
        if meta.is_file():
            for name, info in json.loads(meta.read_text(encoding="utf-8")).items():
                attrs: dict[str, Any] = {}
                params = parse_params(info.get("size", info.get("params")))
                if params is not None:
                    attrs["params"] = params
                prices = [info.get(k) for k in ("input_price", "output_price") if isinstance(info.get(k), (int, float))]
                if prices:
                    attrs["cost"] = float(sum(prices) / len(prices))
                attributes[str(name)] = attrs
    elif path.is_file():
        records = read_loss_records(path)
        train_records = [r for r in records if _hash_unit(r.prompt) >= 0.2]
        test_records = [r for r in records if _hash_unit(r.prompt) < 0.2]
        if not train_records or not test_records:
            raise JobInputError(f"{path}: too few prompts to split into train and test")
    else:
        raise JobInputError(f"{path} is neither a dataset directory nor a file")
    experts = sorted({r.expert for r in train_records} | {r.expert for r in test_records})
    train, test = to_matrix(train_records, experts), to_matrix(test_records, experts)
    test_prompts = set(test.prompts)
    overlap = [i for i, p in enumerate(train.prompts) if p in test_prompts]
    if overlap:  # a prompt in both splits would leak; keep it in test only
        train = train.subset([i for i in range(len(train.prompts)) if train.prompts[i] not in test_prompts])
    return train, test, attributes


def quick_slice(train: Split, test: Split, seed: int = 0) -> tuple[Split, Split]:
    """The fixed-seed slice used by ``--quick``: QUICK_TRAIN train rows and QUICK_TEST complete test rows."""
    rng = np.random.RandomState(seed)
    tr = np.sort(rng.permutation(len(train.prompts))[:QUICK_TRAIN])
    complete = np.flatnonzero(~np.isnan(test.losses).any(axis=1))
    te = np.sort(rng.permutation(complete)[:QUICK_TEST])
    return train.subset(tr), test.subset(te)


# ---- metrics ---------------------------------------------------------------------------------
def policy_row(chosen_losses: np.ndarray, test_losses: np.ndarray, single: int, params: np.ndarray,
               chosen: np.ndarray | None, higher_is_better: bool) -> dict[str, float]:
    """One table row from the per-prompt loss of a policy's choice (complete test rows only).

    score = 1 − loss when the data are scores. hit_rate counts ties with the best expert.
    regret = policy loss − oracle loss; gap_captured = (single − policy) / (single − oracle).
    """
    best = test_losses.min(axis=1)
    routed, single_loss, oracle = float(chosen_losses.mean()), float(test_losses[:, single].mean()), float(best.mean())
    gap = single_loss - oracle
    row = {
        "loss": routed,
        "hit_rate": float(np.mean(chosen_losses <= best + 1e-12)),
        "regret": routed - oracle,
        "gap_captured": (single_loss - routed) / gap if gap > 1e-12 else float(routed <= oracle + 1e-12),
    }
    if higher_is_better:
        row["score"] = 1.0 - routed
    if chosen is not None and np.isfinite(params).any():
        row["mean_params"] = float(np.nanmean(params[chosen]))
    return row


def route(predicted: np.ndarray, size: np.ndarray, lam: float) -> np.ndarray:
    """argmin of predicted loss + λ_size · params/max params (ties → lower index)."""
    return np.argmin(predicted + lam * size[None, :], axis=1)


# ---- the product path ------------------------------------------------------------------------
def _settings(home: Path, recipe: dict[str, str]):  # type: ignore[no-untyped-def]
    from store.settings import Settings

    values = {k.removeprefix("THALAMUS_").lower(): v for k, v in recipe.items()}
    return Settings(home=home, database_url=None, **values)


def prepare_home(home: Path, train: Split, attributes: dict[str, dict[str, Any]], recipe: dict[str, str]):  # type: ignore[no-untyped-def]
    """Migrate a fresh SQLite DB, register the experts as external, ingest the training rows."""
    from experts.registry import register_experts
    from jobs.ingest import ingest_records
    from store.db import session_scope
    from store.migrate import upgrade

    settings = _settings(home, recipe)
    settings.ensure_home()
    upgrade(settings)
    with session_scope(settings) as session:
        register_experts(session, [{"name": n, "kind": "external", "attributes": attributes.get(n, {})}
                                   for n in train.experts])
    ingest_records(settings, train.records, source="bench")
    return settings


def train_and_predict(settings, seed: int, test_prompts: Sequence[str], params: dict[str, Any] | None = None,
                      ) -> tuple[np.ndarray, list[str], dict[str, Any], float]:  # type: ignore[no-untyped-def]
    """Run the production training job, load the candidate bundle, predict the test losses."""
    from jobs.router_store import load_version
    from jobs.train_router import train_router
    from store.db import session_scope
    from store.schema import RouterVersion

    started = time.perf_counter()
    result = train_router(settings, None, {"seed": seed, **(params or {})})
    with session_scope(settings) as session:
        version = session.get(RouterVersion, result["version_id"])
        router = load_version(version)
    predicted = router.predict(list(test_prompts), batch_size=64)
    return predicted, router.expert_names, result["metrics"], time.perf_counter() - started


def frozen_embeddings(settings, prompts: Sequence[str], max_length: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Mean-pooled last-layer embeddings of the frozen backbone (the baselines' features)."""
    from router.model import Router, RouterConfig

    router = Router.from_config(RouterConfig(backbone=settings.backbone_path, expert_names=["x"], lora_r=0,
                                             max_length=max_length))
    return router.embed(list(prompts), batch_size=64)


def run(dataset: Path, seeds: int = 3, quick: bool = False, progress: Progress | None = None,
        recipe: dict[str, str] | None = None, lambdas: Sequence[float] = LAMBDA_GRID,
        home: Path | None = None) -> dict[str, Any]:
    """The whole benchmark; returns a JSON-able report (see :func:`format_report`)."""
    say = progress or (lambda message: None)
    started = time.perf_counter()
    train, test, attributes = load_dataset(dataset)
    if quick:
        train, test = quick_slice(train, test)
        seeds = min(seeds, 1)
    recipe = dict(recipe or (QUICK_RECIPE if quick else RECIPE))
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
                              "best_single_expert": experts[single], "recipe": recipe,
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

    temp = tempfile.TemporaryDirectory(prefix="thalamus-bench-") if home is None else None
    home_dir = Path(temp.name) if temp is not None else Path(home)  # type: ignore[arg-type]
    try:
        say(f"preparing {home_dir}: {len(experts)} experts, {len(train.prompts)} train prompts")
        settings = prepare_home(home_dir, train, attributes, recipe)
        say("embedding prompts with the frozen backbone for the baselines")
        t = time.perf_counter()
        emb = frozen_embeddings(settings, train.prompts + test.prompts, int(recipe.get("THALAMUS_TRAIN_MAX_LENGTH", 128)))
        tr_x, te_x = emb[:len(train.prompts)], emb[len(train.prompts):]
        embed_seconds = time.perf_counter() - t
        grids = {"knn": (10, 30, 100, 200), "ridge": (1.0, 10.0, 100.0, 1000.0, 3000.0),
                 "mlp": (1e-2,) if quick else (1e-2, 1e-1)}
        baseline_preds: dict[str, list[np.ndarray]] = {}
        for name, grid in grids.items():
            for seed in (range(seeds) if name == "mlp" else range(1)):  # kNN and ridge are deterministic
                say(f"baseline {name} (seed {seed})")
                t = time.perf_counter()
                pred, chosen_h = B.tuned(name, tr_x, train.losses, te_x, grid, seed=seed)
                choice = pred.argmin(axis=1)
                add(f"{name}_probe" if name != "knn" else "knn", choice, y[rows, choice],
                    time.perf_counter() - t + embed_seconds, hyper=chosen_h)
                baseline_preds.setdefault(name, []).append(pred)
        thalamus_preds = []
        for seed in range(seeds):
            say(f"training the router (seed {seed}) with the production job")
            pred, order, metrics, seconds = train_and_predict(settings, seed, test.prompts)
            if order != experts:
                pred = pred[:, [order.index(n) for n in experts]]
            thalamus_preds.append(pred)
            choice = pred.argmin(axis=1)
            add("thalamus", choice, y[rows, choice], seconds,
                examples_per_second=metrics.get("examples_per_second"), best_epoch=metrics.get("best_epoch"),
                n_train_rows=metrics.get("n_train"))
            say(f"  seed {seed}: loss {y[rows, choice].mean():.4f} in {seconds:.0f}s")
    finally:
        if temp is not None:
            temp.cleanup()

    from router.metrics import paired_bootstrap

    cis = []
    for pred in thalamus_preds:
        choice = pred.argmin(axis=1)
        # (thalamus − best single) in "higher is better" units: single loss − thalamus loss.
        cis.append(paired_bootstrap(y[:, single], y[rows, choice], n=2000, seed=0))
    mean_pred = np.mean(thalamus_preds, axis=0)
    report["bootstrap"] = {"per_seed": cis,
                           "seed_mean_policy": paired_bootstrap(
                               y[:, single], np.mean([y[rows, p.argmin(axis=1)] for p in thalamus_preds], axis=0),
                               n=2000, seed=0)}
    # Pareto sweep of λ_size for the router (mean over seeds) and the single experts.
    sweep = []
    for lam in lambdas:
        losses_, sizes_ = [], []
        for pred in thalamus_preds:
            choice = route(pred, size, lam)
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
    report["summary"] = summarize(report["policies"], higher_is_better)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    return report


def summarize(policies: dict[str, list[dict[str, Any]]], higher_is_better: bool) -> dict[str, dict[str, float]]:
    """Mean and sd over seeds of every numeric field, per policy."""
    out: dict[str, dict[str, float]] = {}
    for name, rows in policies.items():
        keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float)) and rows[0][k] is not None]
        out[name] = {"n": len(rows)}
        for k in keys:
            values = np.array([r.get(k) for r in rows if r.get(k) is not None], dtype=float)
            out[name][k] = float(values.mean())
            out[name][f"{k}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def format_report(report: dict[str, Any]) -> str:
    """Plain-text tables: one row per policy (mean ± sd over seeds), the CI and the Pareto sweep."""
    hib = report["higher_is_better"]
    metric = "score" if hib else "loss"
    lines = [f"dataset {report['dataset']}: {report['n_train']} train / {report['n_test']} test prompts, "
             f"{len(report['experts'])} experts; best single on train = {report['best_single_expert']}",
             f"| policy | seeds | mean {metric} | hit rate | regret | gap captured | mean params | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in report["summary"].items():
        params = f"{s['mean_params']:.4g}" if "mean_params" in s else "–"
        lines.append(f"| {name} | {s['n']} | {s[metric]:.4f} ± {s[metric + '_sd']:.4f} | {s['hit_rate']:.3f} | "
                     f"{s['regret']:.4f} | {s['gap_captured']:.3f} | {params} | {s['seconds']:.1f} |")
    eps = report["summary"].get("thalamus", {}).get("examples_per_second")
    if eps:
        lines.append(f"router training: {eps:.0f} examples/s (whole run incl. caching the frozen layers)")
    boot = report["bootstrap"]
    sign = 1.0 if hib else -1.0
    for i, (d, lo, hi) in enumerate(boot["per_seed"]):
        lines.append(f"seed {i}: thalamus − best single = {d:+.4f} {metric} (95% paired bootstrap "
                     f"[{lo:+.4f}, {hi:+.4f}])" if hib else
                     f"seed {i}: best single − thalamus = {d:+.4f} loss (95% CI [{lo:+.4f}, {hi:+.4f}])")
    d, lo, hi = boot["seed_mean_policy"]
    lines.append(f"seed-averaged: {d:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    lines += ["", f"| λ_size | mean {metric} | sd | mean params |", "|---|---|---|---|"]
    for p in report["pareto"]["thalamus"]:
        value = 1 - p["loss"] if hib else p["loss"]
        lines.append(f"| {p['lambda_size']:g} | {value:.4f} | {p['loss_sd']:.4f} | {p['mean_params']:.4g} |")
    for p in report["pareto"]["single"]:
        value = 1 - p["loss"] if hib else p["loss"]
        lines.append(f"| single {p['expert']} | {value:.4f} | – | {p['mean_params']} |")
    cheap = report["pareto"]["cheapest_keeping_best_single"]
    lines.append("cheapest λ keeping the best single model's quality: " + (
        f"λ_size={cheap['lambda_size']:g} at {cheap['mean_params']:.4g} mean params" if cheap else "none"))
    lines.append(f"wall time {report['wall_seconds']:.0f}s sign={sign:+.0f}")
    return "\n".join(lines)


def plot(report: dict[str, Any], out: Path) -> None:
    """Quality vs mean params: the router's λ sweep and every single expert (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hib = report["higher_is_better"]
    conv = (lambda v: 1 - v) if hib else (lambda v: v)
    sweep = report["pareto"]["thalamus"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["mean_params"] for p in sweep], [conv(p["loss"]) for p in sweep], "o-", label="thalamus (λ_size sweep)")
    for p in sweep:
        ax.annotate(f"{p['lambda_size']:g}", (p["mean_params"], conv(p["loss"])), fontsize=7)
    singles = [p for p in report["pareto"]["single"] if p["mean_params"] is not None]
    ax.scatter([p["mean_params"] for p in singles], [conv(p["loss"]) for p in singles], c="grey", marker="s",
               label="single experts")
    ax.set_xlabel("mean params of the chosen expert (B)")
    ax.set_ylabel("mean score" if hib else "mean loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main_env_recipe(recipe: dict[str, str]) -> dict[str, str]:
    """The recipe with THALAMUS_TRAIN_* environment variables taking precedence."""
    return {**recipe, **{k: v for k, v in os.environ.items() if k.startswith("THALAMUS_TRAIN_")}}
