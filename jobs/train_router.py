"""Train a candidate router on the loss table, starting from the active one, and register it."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from jobs import promotion_gate as gate
from jobs.errors import CandidateRejected, JobInputError
from jobs.evaluate_candidate import evaluate_candidate
from jobs.loss_table import LossTable, holdout_mask, load_loss_table
from jobs.promote import activate
from jobs.recipe import TrainRecipe
from jobs.router_store import load_version, save_version
from jobs.runs import Progress
from router.metrics import paired_bootstrap, routing_metrics
from router.model import Router, expand_experts, init_head_cold_start
from router.selection import coverage_of
from router.training import train_router as fit
from store.db import session_scope
from store.queries import active_experts, active_router_version
from store.schema import RouterVersion
from store.settings import Settings
from store.states import VersionStatus


def _complete_rows(table: LossTable) -> np.ndarray:
    return ~np.isnan(table.targets).any(axis=1)


def evaluate(router: Router, table: LossTable, params: np.ndarray, best_single: int | None) -> dict[str, float]:
    """Offline metrics on the holdout rows where every expert's loss is known.

    A router trained before an expert was added (or retired) chooses among its own experts only:
    it is judged on the table's columns for those experts, on the same rows as the candidate.
    """
    return evaluate_routes(router, table, params, best_single)[0]


def evaluate_routes(router: Router, table: LossTable, params: np.ndarray,
                    best_single: int | None) -> tuple[dict[str, float], np.ndarray | None]:
    """:func:`evaluate`'s metrics and the routed loss of each complete holdout row (None without such rows)."""
    rows = np.flatnonzero(_complete_rows(table))
    own = [str(name) for name in router.expert_names]
    known = [name for name in own if name in table.experts]
    if rows.size == 0 or not known:
        return {"n_rows": 0}, None
    columns = [table.experts.index(name) for name in known]
    part = table.subset(rows)
    predicted, spread = router.predict_with_spread(part.prompts)
    order = [own.index(name) for name in known]
    predicted, spread = predicted[:, order], spread[:, order]
    single = columns.index(best_single) if best_single in columns else None
    targets = part.targets[:, columns].astype(np.float64)
    routed = targets[np.arange(len(part)), np.argmin(predicted, axis=1)]
    metrics = routing_metrics(predicted, targets, params=params[columns], best_single=single)
    coverage = coverage_of(targets, predicted, spread)
    if coverage is not None:  # share of holdout losses inside their predicted interval (nominal: training's)
        metrics["interval_coverage"] = coverage
        metrics["mean_spread"] = float(np.nanmean(spread))
    return metrics, routed


def holdout_difference(candidate: np.ndarray | None, active: np.ndarray | None,
                       active_version: int | None) -> dict[str, Any] | None:
    """candidate − active routed loss over the same holdout prompts, with its 95 % paired bootstrap interval."""
    if candidate is None or active is None or active_version is None or candidate.shape != active.shape:
        return None
    value, low, high = paired_bootstrap(candidate, active, n=2000, seed=0)
    return {"value": value, "low": low, "high": high, "n_rows": int(candidate.size), "active_version": active_version}


def train_router(settings: Settings, progress: Progress | None = None, params: dict[str, Any] | None = None,
                 *, recipe: TrainRecipe | None = None) -> dict[str, Any]:
    """Train a candidate with ``recipe`` (default: the settings' own) and register it.

    Run as a job (``jobs.registry``) it holds the exclusive ``train_router`` lock; called directly
    (a benchmark on its own home) it does not.
    """
    report = progress or (lambda fraction, message: None)
    params = dict(params or {})
    recipe = recipe or TrainRecipe.from_settings(settings)
    report(0.01, "reading the loss table")
    shifts = _stale_regressions(settings)
    with session_scope(settings) as session:
        experts = active_experts(session)
        table = load_loss_table(session, experts, settings.max_loss)
        parent = active_router_version(session)
        parent_id = parent.id if parent else None
        parent_router = load_version(parent) if parent else None
        parent_is_cold = bool(parent and (parent.metrics or {}).get("cold_start"))
    if len(table) < 4:
        raise JobInputError(f"the loss table has {len(table)} prompts; at least 4 are needed to train")
    names = table.experts
    sizes = np.array([float(e.attributes.get("params") or np.nan) for e in experts])
    holdout = holdout_mask(table.hashes, recipe.holdout_share)
    train, test = table.subset(np.flatnonzero(~holdout)), table.subset(np.flatnonzero(holdout))
    if len(train) == 0:
        raise JobInputError("every prompt fell in the holdout; add more data")
    train_means = np.array([m if m is not None else np.inf for m in train.mean_losses()])
    best_single = int(np.argmin(train_means))

    report(0.05, f"evaluating the active router on {len(test)} holdout prompts")
    active_metrics: dict[str, float] = {}
    active_routed = None
    if parent_router is not None:  # before training: the candidate may start as this very object
        active_metrics, active_routed = evaluate_routes(parent_router, test, sizes, best_single)
    if parent_router is not None and list(parent_router.expert_names) == names:
        router = parent_router
    elif parent_router is not None:
        router = expand_experts(parent_router, names, train.mean_losses())
    else:
        router = Router.from_config(recipe.router_config(names))
    if parent_router is None or parent_is_cold:
        # A cold-start head predicts constants (or a size prior) that can sit far from the
        # observed losses; start from the training means so the first epochs refine, not travel.
        init_head_cold_start(router, train.mean_losses(), [None if np.isnan(s) else s for s in sizes])

    started = time.perf_counter()
    config = recipe.train_config(params)
    history = fit(router, train.prompts, train.targets, config,
                  progress=lambda f, m: report(0.1 + 0.8 * f, m))
    seconds = time.perf_counter() - started
    report(0.9, "evaluating the candidate")
    candidate_metrics, candidate_routed = evaluate_routes(router, test, sizes, best_single)
    metrics = {
        "candidate": candidate_metrics, "active": active_metrics, "active_version": parent_id,
        "holdout_difference": holdout_difference(candidate_routed, active_routed, parent_id),
        # n_train: non-holdout prompts; of those, n_fit were trained on and n_val chose the epoch.
        "n_train": len(train), "n_fit": history.n_train, "n_val": history.n_val, "n_holdout": len(test),
        "train_seconds": round(seconds, 3),
        "examples_per_second": getattr(history, "examples_per_second", None),
        "best_epoch": getattr(history, "best_epoch", None), "best_single_expert": names[best_single],
        "regressions": shifts,
        # what the router learnt about: the promotion gate calls it stale once one of these changes
        "expert_versions": {e.name: int(e.version) for e in experts},
        # training prompts with a loss per expert: 0 for an expert the head holds only a placeholder for
        "expert_rows": {name: int(n) for name, n in zip(names, (~np.isnan(train.targets)).sum(axis=0), strict=True)},
    }
    if getattr(history, "selection", None) is not None:
        metrics["head_selection"] = history.selection
        metrics["selection_seconds"] = round(history.selection_seconds, 3)
        metrics["cache_seconds"] = round(history.cache_seconds, 3)
        metrics["spread_coverage_nominal"] = recipe.spread_coverage
    with session_scope(settings) as session:
        version = save_version(
            session, settings, router, parent_id=parent_id, status=VersionStatus.CANDIDATE, metrics=metrics,
            training_window={"rows": len(table), "train": len(train), "holdout": len(test)},
            check_prompts=list(test.prompts)[:CHECK_PROMPTS],
        )
        rejected = version.reason if version.status == VersionStatus.REJECTED else None
        version_id = version.id
    if rejected:  # recorded (committed) as rejected; the run fails so that nobody mistakes it for a candidate
        raise CandidateRejected(f"router version {version_id} was recorded as rejected: {rejected}")
    report(0.93, "off-policy evaluation on logged traffic")
    evaluated = evaluate_candidate(settings, lambda f, m: report(0.93 + 0.06 * f, m), {"version": version_id},
                                   candidate_router=router)
    metrics["off_policy"] = evaluated["off_policy"]
    auto = _auto_approve(settings, version_id)
    report(1.0, f"registered candidate router version {version_id}")
    return {"version_id": version_id, "metrics": metrics, "auto_approved": bool(auto),
            "loss_rows": {"read": table.rows_read, "skipped": sum(table.skipped.values()),
                          "skipped_by_expert": table.skipped}}


CHECK_PROMPTS = 256
"""Held-out prompts the inference export is checked on (router/export.py), beside its fixed set."""


def _stale_regressions(settings: Settings) -> list[dict[str, Any]]:
    """Experts whose losses shifted silently get a new version first (jobs/regressions.py)."""
    if not settings.regression_check:
        return []
    from jobs.regressions import detect, make_stale

    with session_scope(settings) as session:
        shifts = detect(session, min_rows=settings.regression_min_rows, p_value=settings.regression_p_value,
                        min_shift=settings.regression_min_shift)
        make_stale(session, shifts)
    return [shift.as_dict() for shift in shifts]


def _auto_approve(settings: Settings, version_id: int) -> str:
    """The policy (``THALAMUS_AUTO_APPROVE``): ask the promotion gate, record its decision, activate on
    ``promote``. Returns the activation's reason, or "" when the candidate stays a candidate."""
    if not settings.auto_approve:
        return ""
    with session_scope(settings) as session:
        version = session.get(RouterVersion, version_id, with_for_update=True)
        if version is None or version.status != VersionStatus.CANDIDATE:  # an admin decided meanwhile
            return ""
        active = active_router_version(session)
        candidate, trained = version.metrics or {}, (active.metrics or {}) if active is not None else {}
        verdict = gate.verdict(candidate, active.id if active is not None else None, settings.gate_min_logged_rows)
        if trained.get("cold_start"):
            # A cold start was trained on nothing: there is no belief to protect, and with bandit
            # feedback no estimator can beat it until a trained router has served (and explored).
            decision, reason = gate.PROMOTE, "auto-approved: the active router is a cold start, trained on no data"
        else:
            current = {e.name: int(e.version) for e in active_experts(session)}
            stale = gate.stale_experts(trained.get("expert_versions"), current)
            stale += gate.learnt_since(trained.get("expert_rows"), candidate.get("expert_rows") or {})
            growth = gate.grown(candidate.get("n_train"), gate.most_prompts_served(session), settings.gate_growth)
            decision, reason = gate.policy(verdict, stale, growth)
        gate.record(session, version_id, verdict, decision, "policy", reason)
        if decision != gate.PROMOTE:
            return ""
        activate(session, version, actor="policy", reason=reason)
        return reason
