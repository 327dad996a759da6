"""Which head would have routed best? Every head-selection candidate, refitted on a kept ``bench loop``
home's training rows, scored on the stream's held-out prompts beside its cross-validation score.

    thalamus bench loop --dataset D --scenario cold --seed 0 --requests 1501 --no-offline --keep-home DIR
    python -m benchmarks.head_truth --home DIR [--version N] [--shrinks 10,30,100] [--ceiling] [--reselect]
        [--json OUT]

The training job chooses its head by K-fold CV on its own rows (``router/selection.py``). With bandit
feedback no row has two observed experts, so the CV objective falls back to a regression error on the
one observed cell per row (``expert_mse``), which is not the routing objective. This diagnostic asks what that choice
cost: it rebuilds the job's training rows (the loss table less its holdout), refits every candidate of
the settings' grid on all of them (as ``apply_selection`` does for the chosen one), and scores each
candidate's argmin on the stream's held-out prompts with the dataset's true losses at the end of the
stream. It prints the chosen head, the best head by CV, the best head of each family by the truth,
the rank correlation between CV score and truth, and how much of "best by the truth" survives when
the best is chosen on one half of the held-out prompts and scored on the other (:func:`split_half`).
Frozen-encoder features only (the loop's default).

``--ceiling`` asks the question before it: how much could *any* head of the grid, chosen in hindsight
by the truth, learn from these prompts with other feedback? It refits the grid on the same training
prompts with every expert's true loss (full information), and with 1, 2 and 3 losses per prompt drawn
uniformly at random (a logger that explores everything equally, at an exploration cost far beyond any
budget), and reports the best candidate's routed loss for each. When full information on these prompts
reaches a gain that one logged loss per prompt cannot, the data, not the head or its selection, bounds
what the loop can learn.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from router.selection import FAMILIES, Candidate, candidates, fit_candidates, top_layers
from router.selection_config import SelectionConfig

PLAN_FILE = "loop-plan.json"
"""Written by ``bench loop --keep-home`` into the home: what rebuilds the stream."""


def candidate_predictions(x: np.ndarray, y: np.ndarray, query: np.ndarray, config: SelectionConfig,
                          max_pool: int) -> dict[Candidate, np.ndarray]:
    """Every non-MLP candidate of ``config`` fitted on all of (x, y) and applied to ``query``, (Q, E) each
    (:func:`router.selection.fit_candidates`, as the CV fits them on each fold).

    ``x``/``query`` are pooled features over ``max_pool`` states, ``y`` losses with NaN where unobserved.
    """
    every = candidates(config, max_pool)
    out: dict[Candidate, np.ndarray] = {}
    for p in sorted({c.pool_layers for c in every}):
        fitted, _ = fit_candidates(top_layers(x, p, max_pool), y, top_layers(query, p, max_pool),
                                   [c for c in every if c.pool_layers == p], config.alphas,
                                   sorted(set(config.neighbors)))
        out.update(fitted)
    return out


def routed_rows(predictions: dict[Candidate, np.ndarray], truth: np.ndarray) -> dict[Candidate, np.ndarray]:
    """True loss of each candidate's argmin on every prompt, (Q,) each (``truth`` (Q, E), every entry known)."""
    rows = np.arange(truth.shape[0])
    return {c: truth[rows, p.argmin(axis=1)] for c, p in predictions.items()}


def routed_losses(predictions: dict[Candidate, np.ndarray], truth: np.ndarray) -> dict[Candidate, float]:
    """Mean true loss of each candidate's argmin (``truth`` (Q, E), every entry known)."""
    return {c: float(losses.mean()) for c, losses in routed_rows(predictions, truth).items()}


def split_half(routed: np.ndarray, truth: np.ndarray, *, splits: int = 200, seed: int = 0) -> dict[str, float]:
    """How much of "the grid's best by the truth" is the truth's own noise.

    ``routed`` (C, Q): each candidate's true routed loss per held-out prompt; ``truth`` (Q, E). For each of
    ``splits`` random halves A/B of the prompts, the candidate with the lowest mean on A is scored on A
    (where it was chosen) and on B (where it was not), each against the best single expert of that half.
    The best of many close candidates on one noisy sample is optimistic (a winner's curse): on the three
    cold homes of docs/benchmarks.md (ninth session) the grid's best by the truth captured 0.51, 0.82, 1.24
    of the offline router's gain on the half it was chosen on and 0.23, 0.52, 0.85 on the other half.
    Losses: below 0 is better than the best single expert.
    """
    rng = np.random.default_rng(seed)
    q = routed.shape[1]
    chosen_on, other = [], []
    for _ in range(splits):
        order = rng.permutation(q)
        a, b = order[: q // 2], order[q // 2:]
        best = int(routed[:, a].mean(axis=1).argmin())
        chosen_on.append(routed[best, a].mean() - truth[a].mean(axis=0).min())
        other.append(routed[best, b].mean() - truth[b].mean(axis=0).min())
    return {"chosen_half_vs_single": float(np.mean(chosen_on)), "other_half_vs_single": float(np.mean(other)),
            "splits": splits}


def best_of_grid(x: np.ndarray, y: np.ndarray, query: np.ndarray, truth: np.ndarray, config: SelectionConfig,
                 max_pool: int) -> dict[str, Any]:
    """The candidate of the grid that routes ``query`` best by the truth (hindsight), fitted on (x, y)."""
    routed = routed_losses(candidate_predictions(x, y, query, config, max_pool), truth)
    best = min(routed, key=routed.__getitem__)
    return {"label": best.label, "routed_loss": routed[best]}


def draw_cells(full: np.ndarray, cells: int, rng: np.random.Generator) -> np.ndarray:
    """``full`` with all but ``cells`` uniformly drawn entries per row set to NaN (unobserved)."""
    n, experts = full.shape
    keep = np.argsort(rng.random((n, experts)), axis=1)[:, :min(cells, experts)]
    rows = np.arange(n)[:, None]
    y = np.full_like(full, np.nan, dtype=np.float64)
    y[rows, keep] = full[rows, keep]
    return y


def ceiling(x: np.ndarray, full: np.ndarray, query: np.ndarray, truth: np.ndarray, config: SelectionConfig,
            max_pool: int, *, cells: tuple[int, ...] = (1, 2, 3), draws: int = 2, seed: int = 0) -> dict[str, Any]:
    """The grid's hindsight best with full information on the training prompts (``full``: every expert's
    true loss per prompt) and with ``c`` uniformly drawn losses per prompt for each ``c`` in ``cells``
    (``draws`` seeded draws each); see the module docstring."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"full": best_of_grid(x, full, query, truth, config, max_pool), "cells": {}}
    for c in cells:
        runs = [best_of_grid(x, draw_cells(full, c, rng), query, truth, config, max_pool) for _ in range(draws)]
        out["cells"][str(c)] = {"draws": runs, "mean_routed_loss": float(np.mean([r["routed_loss"] for r in runs]))}
    return out


def compare(cv: dict[str, float], routed: dict[str, float], chosen: str | None) -> dict[str, Any]:
    """CV score against routed truth per candidate label: chosen, best by CV, best per family by truth, ρ."""
    common = sorted(set(cv) & set(routed))
    by_cv = min(common, key=lambda label: cv[label]) if common else None
    families: dict[str, dict[str, Any]] = {}
    for label in sorted(routed, key=lambda label: routed[label]):
        family = label.split(" ", 1)[0]
        families.setdefault(family, {"label": label, "routed_loss": routed[label]})
    rho = _spearman(np.array([cv[label] for label in common]), np.array([routed[label] for label in common])) \
        if len(common) > 2 else None
    return {"chosen": None if chosen is None else {"label": chosen, "routed_loss": routed.get(chosen)},
            "best_by_cv": None if by_cv is None else {"label": by_cv, "cv": cv[by_cv], "routed_loss": routed[by_cv]},
            "best_per_family": {f: families[f] for f in FAMILIES if f in families}, "spearman_cv_vs_routed": rho,
            "candidates": len(common)}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (ties broken by order; CV scores and routed losses of distinct heads rarely tie)."""
    ra, rb = a.argsort().argsort().astype(float), b.argsort().argsort().astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def run(home: Path, *, version: int | None = None, shrinks: tuple[float, ...] | None = None,
        with_ceiling: bool = False, reselect: bool = False) -> dict[str, Any]:
    """The whole diagnostic on a kept home (see the module docstring); a JSON-able report."""
    from sqlalchemy import select

    from benchmarks.bandit_training import embed
    from benchmarks.data import load_dataset
    from benchmarks.loop import LoopPlan, _frozen_embed, _quick_train
    from benchmarks.loop_stream import make_stream
    from jobs.loss_table import holdout_mask, load_loss_table
    from jobs.recipe import TrainRecipe
    from store.db import session_scope
    from store.schema import Expert, RouterVersion
    from store.settings import Settings

    saved = json.loads((home / PLAN_FILE).read_text())
    plan = LoopPlan(**saved["plan"]).resolved()
    base = Settings()
    settings = Settings(**{**base.model_dump(), "home": home, "database_url": None, "broker_url": None})
    train, _test, _ = load_dataset(Path(saved["dataset"]))
    if plan.quick:
        train = _quick_train(train, plan.seed)
    stream = make_stream(train, plan.scenario, requests=plan.requests, seed=plan.seed,
                         heldout_share=plan.heldout_share,
                         embed=_frozen_embed(base) if plan.scenario == "drift" else None)
    with session_scope(settings) as session:
        experts = list(session.scalars(select(Expert).order_by(Expert.name)))
        table = load_loss_table(session, experts, settings.max_loss)
        query = select(RouterVersion).order_by(RouterVersion.id.desc())
        row = session.get(RouterVersion, version) if version is not None else session.scalars(query).first()
        metrics = dict(row.metrics or {}) if row is not None else {}
    recipe = TrainRecipe.from_settings(settings)
    config = recipe.selection() or SelectionConfig()
    if shrinks is not None:
        config = replace(config, shrinks=shrinks)
    rows = np.flatnonzero(~holdout_mask(table.hashes, recipe.holdout_share))
    names = table.experts
    t_end = len(stream)
    truth = np.array([[stream.loss(t_end, name, stream.heldout, i) for name in names]
                      for i in range(len(stream.heldout.prompts))])
    features = embed(recipe.backbone, [table.prompts[i] for i in rows] + stream.heldout.prompts,
                     max_length=recipe.max_length, pool_layers=config.max_pool).astype(np.float64)
    x, query_x = features[:rows.size], features[rows.size:]
    predictions = candidate_predictions(x, table.targets[rows].astype(np.float64), query_x, config, config.max_pool)
    per_prompt = routed_rows(predictions, truth)
    routed = {c.label: float(losses.mean()) for c, losses in per_prompt.items()}
    selection = metrics.get("head_selection") or {}
    if reselect:  # the job's CV again, with this process's grid (e.g. a family the kept run did not have)
        from router.selection import select_head

        selection = select_head(x, table.targets[rows].astype(np.float64), config, config.max_pool).to_metrics()
    cv = {r["label"]: float(r["mean"]) for r in selection.get("table", [])}
    chosen = (selection.get("chosen") or {}).get("label")
    means = np.nanmean(table.targets[rows], axis=0)
    report = {"home": str(home), "plan": saved["plan"], "version": None if row is None else row.id,
              "training_rows": int(rows.size), "observed_cells": int((~np.isnan(table.targets[rows])).sum()),
              "heldout": len(stream.heldout.prompts), "cv_objective": selection.get("objective"),
              "reselected": reselect,
              "reference": {"best_single": float(truth.mean(axis=0).min()),
                            "expert_with_lowest_logged_mean": float(truth[:, int(np.nanargmin(means))].mean()),
                            "oracle": float(truth.min(axis=1).mean())},
              **compare(cv, routed, chosen), "routed": routed,
              "best_by_truth_split_half": split_half(np.stack(list(per_prompt.values())), truth, seed=plan.seed)}
    if with_ceiling:
        pool = {prompt: i for i, prompt in enumerate(stream.pool.prompts)}
        full = np.array([[stream.loss(t_end, name, stream.pool, pool[table.prompts[i]]) for name in names]
                         for i in rows])
        report["ceiling"] = ceiling(x, full, query_x, truth, config, config.max_pool, seed=plan.seed)
    return report


def format_report(report: dict[str, Any]) -> str:
    ref = report["reference"]
    cv = "the CV redone with this grid" if report.get("reselected") else "the job's CV"
    lines = [f"version {report['version']}: {report['training_rows']} training rows, {report['observed_cells']} "
             f"observed cells, {cv}, objective {report['cv_objective']}; {report['heldout']} held-out prompts",
             f"held-out loss: best single {ref['best_single']:.4f} · the expert with the lowest logged mean "
             f"{ref['expert_with_lowest_logged_mean']:.4f} · oracle {ref['oracle']:.4f}"]
    for name in ("chosen", "best_by_cv"):
        item = report[name]
        if item is not None and item.get("routed_loss") is not None:
            lines.append(f"{name.replace('_', ' ')}: {item['label']} routes at {item['routed_loss']:.4f}")
    for family, item in report["best_per_family"].items():
        lines.append(f"best {family} by the truth: {item['label']} routes at {item['routed_loss']:.4f}")
    honest = report.get("best_by_truth_split_half")
    if honest is not None:
        lines.append(f"the grid's best by the truth, chosen on half the held-out prompts ({honest['splits']} random "
                     f"halves), against the best single expert: {honest['chosen_half_vs_single']:+.4f} on that half, "
                     f"{honest['other_half_vs_single']:+.4f} on the other (the difference is the truth's own noise)")
    rho = report["spearman_cv_vs_routed"]
    lines.append(f"Spearman ρ(CV score, routed loss) over {report['candidates']} candidates: "
                 + ("n/a" if rho is None else f"{rho:+.2f}"))
    top = report.get("ceiling")
    if top is not None:
        best = min(report["routed"].values())
        lines.append(f"ceiling (the grid's best by the truth, same {report['training_rows']} prompts): logged rows "
                     f"{best:.4f} · full information {top['full']['routed_loss']:.4f} ({top['full']['label']})")
        for c, item in top["cells"].items():
            each = ", ".join(f"{r['routed_loss']:.4f}" for r in item["draws"])
            lines.append(f"  {c} uniformly drawn loss(es) per prompt: {item['mean_routed_loss']:.4f} (draws: {each})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a home kept by bench loop --keep-home")
    parser.add_argument("--version", type=int, help="the router version whose CV table to compare (default: newest)")
    parser.add_argument("--shrinks", help="shrink κ grid to add, e.g. 10,30,100 (default: the settings')")
    parser.add_argument("--ceiling", action="store_true",
                        help="also refit the grid with full information and with 1-3 random losses per prompt")
    parser.add_argument("--reselect", action="store_true",
                        help="redo the head selection's CV with the settings' grid instead of reading the version's")
    parser.add_argument("--json", dest="json_out", type=Path)
    args = parser.parse_args(argv)
    if not (args.home / PLAN_FILE).is_file():
        print(f"{args.home} holds no {PLAN_FILE}: keep a home with `thalamus bench loop ... --keep-home DIR`",
              file=sys.stderr)
        return 2
    try:
        shrinks = None if args.shrinks is None else tuple(float(v) for v in args.shrinks.split(",") if v.strip())
    except ValueError:
        print(f"--shrinks must be numbers separated by commas, got {args.shrinks!r}", file=sys.stderr)
        return 2
    report = run(args.home, version=args.version, shrinks=shrinks, with_ceiling=args.ceiling, reselect=args.reselect)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report, indent=2))
    print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
