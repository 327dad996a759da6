"""Off-policy evaluation of a candidate router against the active one on logged traffic.

The logged rows are requests whose served expert has a loss in the loss table (reported feedback or
a computed loss, for the expert's current version) and whose prompt lies in the training holdout
(``jobs.loss_table.holdout_mask``: fixed by the prompt's hash, so no router trained by
``train_router`` ever saw these prompts' losses; a router that had would choose with hindsight and
look better than it is). Each router's target policy is its greedy argmin of predicted loss plus
the request's own λ-weighted constraints, exactly as a daemon routes. The estimates (IPS, SNIPS,
DR with a cross-fitted ridge direct model on the frozen encoder features, ESS, support) come from
``router.offpolicy`` and are stored in the candidate's ``metrics["off_policy"]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.errors import JobInputError
from jobs.loss_table import LossTable, holdout_mask, load_loss_table
from jobs.runs import Progress
from router.offpolicy import ESTIMATORS, Logged, compare, cross_fit, estimate, folds_by_key, greedy, ridge_fit
from store.db import session_scope
from store.queries import active_experts, active_router_version
from store.schema import Expert, Request, RouterVersion
from store.settings import Settings
from store.states import VersionStatus

if TYPE_CHECKING:
    from router.model import Router

FOLDS = 5
DIRECT_MODEL = f"per-expert ridge (leave-one-out penalty) on the frozen encoder's mean-pooled features, {FOLDS}-fold " \
               "cross-fitted by prompt hash"


@dataclass(frozen=True)
class LoggedRows:
    """The usable logged requests, in the loss table's expert columns."""

    hashes: list[str]  # prompt hash of each row
    lambdas: list[dict[str, float]]
    logged: Logged
    logged_probs: np.ndarray  # (n, E): the logging policy's whole distribution (one-hot where it was not logged)
    observed: np.ndarray  # (n, E): every known loss of the row's prompt (NaN = unknown), for the direct model
    explored: int
    skipped: dict[str, int]


def newest_candidate(session: Session) -> RouterVersion | None:
    return session.scalars(select(RouterVersion).where(RouterVersion.status == VersionStatus.CANDIDATE)
                           .order_by(RouterVersion.id.desc())).first()


def _version(session: Session, params: Mapping[str, Any]) -> RouterVersion:
    raw = params.get("version")
    if raw is None:
        version = newest_candidate(session)
        if version is None:
            raise JobInputError("there is no candidate router version to evaluate; pass version=ID")
        return version
    try:
        version_id = int(raw)
    except (TypeError, ValueError):
        raise JobInputError(f"version must be a router version id, got {raw!r}") from None
    version = session.get(RouterVersion, version_id)
    if version is None:
        raise JobInputError(f"router version {version_id} does not exist")
    return version


def logged_rows(session: Session, table: LossTable, holdout_share: float, limit: int) -> LoggedRows:
    """The newest ``limit`` requests whose prompt is in the holdout and whose served expert has a loss."""
    row_of = {h: i for i, h in enumerate(table.hashes)}
    column = {name: j for j, name in enumerate(table.experts)}
    query = (select(Request.prompt_hash, Request.lambdas, Request.expert, Request.propensity, Request.action_probs,
                    Request.explored).order_by(Request.created_at.desc(), Request.id.desc()).limit(limit))
    skipped = {"not_holdout": 0, "no_loss": 0, "unknown_expert": 0, "bad_propensity": 0}
    hashes, lambdas, losses, actions, propensities, probs, observed = [], [], [], [], [], [], []
    explored = 0
    requests = session.execute(query).all()
    in_holdout = holdout_mask([r.prompt_hash for r in requests], holdout_share) if requests else np.zeros(0, bool)
    for request, held_out in zip(requests, in_holdout, strict=True):
        if not held_out:
            skipped["not_holdout"] += 1
            continue
        if request.expert not in column:
            skipped["unknown_expert"] += 1
            continue
        row, action = row_of.get(request.prompt_hash), column[request.expert]
        if row is None or np.isnan(table.targets[row, action]):
            skipped["no_loss"] += 1
            continue
        propensity = float(request.propensity if request.propensity is not None else 1.0)
        if not 0 < propensity <= 1:
            skipped["bad_propensity"] += 1
            continue
        distribution = np.zeros(len(table.experts))
        for name, p in (request.action_probs or {request.expert: 1.0}).items():
            if name in column:
                distribution[column[name]] = float(p)
        distribution[action] = max(distribution[action], propensity)
        hashes.append(request.prompt_hash)
        lambdas.append(dict(request.lambdas or {}))
        losses.append(float(table.targets[row, action]))
        actions.append(action)
        propensities.append(propensity)
        probs.append(distribution)
        observed.append(table.targets[row])
        explored += bool(request.explored)
    n_experts = len(table.experts)
    logged = Logged(np.array(losses), np.array(actions, dtype=np.int64), np.array(propensities), n_experts)
    return LoggedRows(hashes, lambdas, logged, np.array(probs).reshape(-1, n_experts),
                      np.array(observed, dtype=np.float64).reshape(-1, n_experts), explored, skipped)


def greedy_targets(router_experts: Sequence[str], predicted: np.ndarray, constraints: np.ndarray,
                   lambdas: Sequence[Mapping[str, float]], columns: Sequence[str]) -> np.ndarray:
    """(n, E) one-hot target over ``columns``: per row the router's argmin of predicted + λ·C over its own
    experts that are in ``columns`` (ties to the lower index of its head, as ``router.constraints.choose``)."""
    from router.constraints import penalty

    names = [str(name) for name in router_experts]
    allowed = np.array([name in columns for name in names])
    out = np.zeros((len(lambdas), len(columns)))
    if not allowed.any():
        return out
    groups: dict[str, list[int]] = {}
    for i, weights in enumerate(lambdas):
        groups.setdefault(json.dumps(dict(weights), sort_keys=True), []).append(i)
    where = [list(columns).index(name) if ok else -1 for name, ok in zip(names, allowed, strict=True)]
    for key, rows in groups.items():
        chosen = greedy(predicted[rows] + penalty(constraints, json.loads(key)), allowed).argmax(axis=1)
        out[rows, [where[c] for c in chosen]] = 1.0
    return out


def _constraints(session: Session, router: Router) -> np.ndarray:
    from router.serving import constraints_for

    names = [str(n) for n in router.expert_names]
    rows = session.scalars(select(Expert).where(Expert.name.in_(names)))
    attributes = {e.name: dict(e.attributes or {}) for e in rows}
    return constraints_for([attributes.get(name, {}) for name in names])


def off_policy(rows: LoggedRows, experts: Sequence[str], candidate: Router, active: Router | None,
               candidate_constraints: np.ndarray, active_constraints: np.ndarray | None, prompts: Mapping[str, str],
               *, n_boot: int, seed: int, progress: Progress) -> dict[str, Any]:
    """The estimates for the rows: both routers' greedy targets, the cross-fitted direct model, the bootstrap."""
    distinct = sorted(set(rows.hashes))
    index = {h: i for i, h in enumerate(distinct)}
    texts = [prompts[h] for h in distinct]
    at = [index[h] for h in rows.hashes]
    progress(0.15, f"the candidate routes {len(distinct)} logged prompts")
    candidate_target = greedy_targets(candidate.expert_names, candidate.predict(texts)[at], candidate_constraints,
                                      rows.lambdas, experts)
    active_target = None
    if active is not None and active_constraints is not None:
        progress(0.4, f"the active router routes {len(distinct)} logged prompts")
        active_target = greedy_targets(active.expert_names, active.predict(texts)[at], active_constraints,
                                       rows.lambdas, experts)
    progress(0.65, "fitting the direct model (cross-fitted)")
    features = candidate.frozen_embed(texts)[at]
    direct = cross_fit(folds_by_key(rows.hashes, FOLDS), ridge_fit(features, rows.observed), len(experts))
    progress(0.8, f"bootstrapping {n_boot} resamples")
    if active_target is None:
        alone = estimate(rows.logged, candidate_target, direct, logged_probs=rows.logged_probs, n_boot=n_boot,
                         seed=seed)
        return {"candidate": alone.as_dict(), "active": None, "difference": None, "agreement": None}
    comparison = compare(rows.logged, candidate_target, active_target, direct, logged_probs=rows.logged_probs,
                         n_boot=n_boot, seed=seed)
    agreement = float(np.mean(candidate_target.argmax(axis=1) == active_target.argmax(axis=1)))
    return {**comparison.as_dict(), "agreement": agreement}


def evaluate_candidate(settings: Settings, progress: Progress | None = None, params: dict[str, Any] | None = None,
                       *, candidate_router: Router | None = None) -> dict[str, Any]:
    """Estimate the candidate's and the active router's expected loss on logged traffic; store it in the
    candidate's ``metrics["off_policy"]``. params: ``version`` (default: the newest candidate),
    ``bootstrap`` (resamples, default ``THALAMUS_OPE_BOOTSTRAP_SAMPLES``), ``seed`` (0).

    ``candidate_router``: the candidate already in memory (the training job passes the one it trained).
    """
    from jobs.router_store import load_version

    report = progress or (lambda fraction, message: None)
    params = dict(params or {})
    n_boot = int(params.get("bootstrap", settings.ope_bootstrap_samples))
    seed = int(params.get("seed", 0))
    if n_boot < 50:
        raise JobInputError(f"bootstrap must be at least 50 resamples, got {n_boot}")
    started = time.perf_counter()
    report(0.01, "reading the logged requests and the loss table")
    with session_scope(settings) as session:
        version = _version(session, params)
        version_id = version.id
        active = active_router_version(session)
        active_id = active.id if active is not None else None
        experts = [e.name for e in active_experts(session)]
        table = load_loss_table(session, active_experts(session), settings.max_loss)
        rows = logged_rows(session, table, settings.train_holdout_share, settings.ope_max_rows)
        routers: tuple[Router, Router | None, np.ndarray, np.ndarray | None] | None = None
        if len(rows.logged):  # no logged row: nothing to load
            candidate = candidate_router if candidate_router is not None else load_version(version)
            active_router = None
            if active is not None:
                active_router = candidate if active.id == version_id else load_version(active)
            routers = (candidate, active_router, _constraints(session, candidate),
                       _constraints(session, active_router) if active_router is not None else None)
    result: dict[str, Any] = {
        "candidate_version": version_id, "active_version": active_id, "n_rows": len(rows.logged),
        "n_prompts": len(set(rows.hashes)), "explored_rows": rows.explored, "skipped": rows.skipped,
        "logged_mean_loss": float(rows.logged.losses.mean()) if len(rows.logged) else None,
        "estimators": list(ESTIMATORS), "confidence": 0.95, "bootstrap": n_boot, "seed": seed,
        "direct_model": DIRECT_MODEL, "rows": "requests on holdout prompts with a loss for the served expert",
    }
    if routers is not None:
        prompts = dict(zip(table.hashes, table.prompts, strict=True))
        result.update(off_policy(rows, experts, *routers, prompts, n_boot=n_boot, seed=seed, progress=report))
    else:
        result.update({"candidate": None, "active": None, "difference": None, "agreement": None})
    result["seconds"] = round(time.perf_counter() - started, 3)
    report(0.95, "storing the estimates in the candidate's metrics")
    with session_scope(settings) as session:
        row = session.get(RouterVersion, version_id, with_for_update=True)
        if row is None:
            raise JobInputError(f"router version {version_id} disappeared while it was evaluated")
        row.metrics = {**(row.metrics or {}), "off_policy": result}
    report(1.0, f"evaluated router version {version_id} on {result['n_rows']} logged requests")
    return {"version_id": version_id, "off_policy": result}
