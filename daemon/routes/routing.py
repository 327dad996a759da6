"""``POST /v1/route`` (choose an expert) and ``POST /v1/infer`` (choose, then run a local expert).

Routing is CPU-bound torch, so the endpoints are plain ``def`` functions that FastAPI runs in its
threadpool. Each request reads ``holder.current`` once and finishes on that bundle even if a swap
happens meanwhile. Bad input is rejected before anything is written.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException

from daemon.auth import PrincipalDep
from daemon.deps import ExpertsDep, HolderDep, MetricsDep, SettingsDep, ShadowsDep, WriterDep
from daemon.holder import Decision, LoadedRouter, RouterHolder
from daemon.logwriter import RequestLogWriter
from daemon.metrics import Metrics
from daemon.schemas import InferRequest, InferResponse, RouteRequest, RouteResponse, error_responses
from daemon.shadow import ShadowRunner
from router.exploration import OFF, ExplorePolicy, explore_fraction
from router.hashing import Salt, stable_fraction
from store.schema import utcnow
from store.settings import Settings

router = APIRouter()


@router.post("/v1/route", response_model=RouteResponse, responses=error_responses(400, 422, 503))
def route(body: RouteRequest, settings: SettingsDep, holder: HolderDep, writer: WriterDep,
          metrics: MetricsDep, shadows: ShadowsDep, principal: PrincipalDep) -> dict[str, Any]:
    """Choose the expert: argmin of predicted loss + Σ λ·constraint, or, when the exploration policy
    explores, a near-best expert; ``propensity`` and ``action_probs`` say with what probability."""
    body.app = principal.app_or(body.app)  # the application id comes from the API key
    routed = _route(settings, holder, metrics, body)
    return _answer(settings, writer, metrics, body, routed, shadows)


@router.post("/v1/infer", response_model=InferResponse, responses=error_responses(400, 409, 422, 503))
def infer(body: InferRequest, settings: SettingsDep, holder: HolderDep, writer: WriterDep, metrics: MetricsDep,
          experts: ExpertsDep, shadows: ShadowsDep, principal: PrincipalDep) -> dict[str, Any]:
    """Route, then run the chosen local expert (fill-mask or generation)."""
    body.app = principal.app_or(body.app)  # the application id comes from the API key
    from experts.local import LOCAL_KINDS, ExpertError

    routed = _route(settings, holder, metrics, body, explore=False)
    loaded, _, prompt, _, decision, _ = routed
    info = loaded.expert(decision.expert)
    if info is None or not info.registered:
        raise HTTPException(409, f"expert {decision.expert!r} is not registered, so it cannot run here")
    if info.kind not in LOCAL_KINDS or not info.uri:
        raise HTTPException(409, f"expert {decision.expert!r} is {info.kind}: call it yourself (use "
                                 "POST /v1/route to choose) and report its loss with POST /v1/feedback")
    try:
        output = experts.get(info.name, info.kind, info.uri, info.version or 1).infer(
            prompt, max_new_tokens=body.max_new_tokens)
    except ExpertError as exc:
        raise HTTPException(422, f"expert {decision.expert!r} cannot answer: {exc}") from None
    return {**_answer(settings, writer, metrics, body, routed, shadows), "output": output,
            "expert_version": info.version}


_Routed = tuple[LoadedRouter, str, str, dict[str, float], Decision, float]
"""The bundle that decided, the request id, the prompt without flags, the λ in force, the decision,
and its latency in ms."""


def _route(settings: Settings, holder: RouterHolder, metrics: Metrics, body: RouteRequest,
           explore: bool = True) -> _Routed:
    """``explore=False`` (``/v1/infer``): the argmin, propensity 1. An explored expert may be external and
    could not answer here, so inference never explores; its rows still log the (degenerate) distribution."""
    prompt, lambdas = _prompt_and_lambdas(settings, body)
    loaded = holder.current
    if loaded is None:
        raise HTTPException(503, f"no router is loaded yet: {holder.last_error or 'starting up'}")
    request_id = str(uuid.uuid4())  # before the draw: (prompt, request id) fix it, so a replay reproduces it
    policy = _policy(settings, body) if explore else OFF
    started = time.perf_counter()
    decision = loaded.route(prompt, lambdas, policy, explore_fraction(prompt, request_id) if policy.active else 0.0)
    seconds = time.perf_counter() - started
    metrics.route_latency.observe(seconds)
    return loaded, request_id, prompt, lambdas, decision, 1000 * seconds


def _policy(settings: Settings, body: RouteRequest) -> ExplorePolicy:
    """The exploration policy for this request: off when the request or its app opted out."""
    if body.explore is False or (body.app is not None and body.app in settings.explore_opt_out_apps):
        return OFF
    return settings.explore_policy


def _answer(settings: Settings, writer: RequestLogWriter, metrics: Metrics, body: RouteRequest,
            routed: _Routed, shadows: ShadowRunner) -> dict[str, Any]:
    """Log the decision (asynchronously) and build the response body."""
    loaded, request_id, prompt, lambdas, decision, latency_ms = routed
    sampled = _sampled(prompt, settings.label_share)
    writer.submit({
        "id": request_id, "created_at": utcnow(), "prompt": prompt, "lambdas": lambdas,
        "router_version_id": loaded.version_id, "expert": decision.expert,
        "predicted_losses": decision.predicted, "propensity": decision.propensity, "sampled": sampled,
        "latency_ms": latency_ms, "app": body.app, "action_probs": decision.action_probs,
        "explored": decision.explored,
    })
    metrics.chosen.labels(decision.expert).inc()
    # Off the response path (queues or drops). Shadows are compared with the active router's own choice
    # (its argmin), not with an expert the exploration policy drew instead.
    shadows.offer(request_id, prompt, lambdas, decision.greedy or decision.expert)
    return {"request_id": request_id, "expert": decision.expert, "predicted_losses": decision.predicted,
            "predicted_spread": decision.spread,  # issue 14: calibrated spread per predicted loss
            "objective": decision.objective, "router_version": loaded.version_id, "lambdas": lambdas,
            "sampled": sampled, "propensity": decision.propensity, "explored": decision.explored,
            "action_probs": decision.action_probs, "latency_ms": round(latency_ms, 3)}


def _prompt_and_lambdas(settings: Settings, body: RouteRequest) -> tuple[str, dict[str, float]]:
    """The prompt with flags stripped and the λ in force: request > flags > defaults. Raises 422."""
    from router.constraints import LambdaError, validate_lambdas
    from router.flags import FlagError, parse_flags

    raw = body.prompt
    if not raw.strip():
        raise HTTPException(422, "prompt is empty")
    if len(raw) > settings.max_prompt_chars:
        raise HTTPException(422, f"prompt has {len(raw)} characters; the limit is {settings.max_prompt_chars}")
    try:
        prompt, flagged = parse_flags(raw)
    except FlagError as exc:
        raise HTTPException(422, str(exc)) from None
    if not prompt.strip():
        raise HTTPException(422, "prompt is empty once its flags are removed")
    try:
        requested = validate_lambdas(body.lambdas or {})
    except LambdaError as exc:
        raise HTTPException(422, f"lambdas: {exc}") from None
    return prompt, {**validate_lambdas(settings.default_lambdas), **flagged, **requested}


def _sampled(prompt: str, share: float) -> bool:
    """Deterministic per prompt: the same text is always sampled for labels, or never."""
    if share <= 0:
        return False
    return stable_fraction(prompt, salt=Salt.LABEL_SAMPLE) < share
