"""The ``finetune_expert`` job: fine-tune one local expert on the prompts the router sent it.

Data: the most recent distinct prompts of the request log routed to the expert
(THALAMUS_FINETUNE_MAX_PROMPTS). A prompt whose salted hash falls below
THALAMUS_FINETUNE_HOLDOUT_SHARE (``Salt.FINETUNE_HOLDOUT``) is never trained on: it measures the
loss before and after on the expert's own traffic; the held-out prompts routed to the *other*
experts measure forgetting. Both with a 95 % paired bootstrap interval of (after − before).

With ``weighting=confidence`` a prompt weighs the router's confidence in the choice: the softmax of
the negative predicted losses logged with the request, at the chosen expert (mean over its
requests), scaled to mean 1.

The result is a candidate ``expert_versions`` row pointing at a new directory
``THALAMUS_HOME/experts/versions/<expert>/v<N>-<hash12>``; the served directory is never touched.
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.errors import JobInputError
from jobs.gates import Skip
from jobs.runs import Progress
from router.hashing import Salt, stable_fraction
from store.db import session_scope
from store.schema import Prompt, Request
from store.settings import Settings

# Parameters the job takes, each mapped to the FinetuneConfig field or job option it sets.
_CONFIG_PARAMS = ("method", "lora_r", "lora_alpha", "epochs", "learning_rate", "batch_size", "max_length", "seed")
_JOB_PARAMS = ("expert", "weighting", "max_prompts", "min_routed_prompts", "holdout_share", "auto_approve")
WEIGHTINGS = ("none", "confidence")
_OTHER_LIMIT = 400  # held-out prompts of the other experts scored for forgetting


@dataclass(frozen=True)
class Plan:
    """What one run does, validated."""

    expert: str
    config: Any  # experts.finetune.FinetuneConfig (imported lazily: torch)
    weighting: str
    max_prompts: int
    min_routed_prompts: int
    holdout_share: float
    auto_approve: bool | None


@dataclass(frozen=True)
class RoutedPrompts:
    train: list[str]
    weights: list[float]
    own_holdout: list[str]
    other_holdout: list[str]

    @property
    def total(self) -> int:
        return len(self.train) + len(self.own_holdout)


def plan(settings: Settings, params: dict[str, Any]) -> Plan:
    """Validate the parameters (JobInputError: one sentence naming the problem)."""
    from experts.finetune import FinetuneConfig
    from experts.local import ExpertError

    unknown = sorted(set(params) - set(_CONFIG_PARAMS) - set(_JOB_PARAMS))
    if unknown:
        raise JobInputError(f"finetune_expert does not take {', '.join(unknown)}; it takes "
                            f"{', '.join((*_JOB_PARAMS, *_CONFIG_PARAMS))}")
    if params.get("expert") in (None, ""):
        raise JobInputError("finetune_expert needs the expert to fine-tune: --param expert=NAME")
    config = FinetuneConfig(method=settings.finetune_method, lora_r=settings.finetune_lora_r,
                            lora_alpha=settings.finetune_lora_alpha, epochs=settings.finetune_epochs,
                            learning_rate=settings.finetune_learning_rate, batch_size=settings.finetune_batch_size,
                            max_length=settings.finetune_max_length)
    config = replace(config, **{k: params[k] for k in _CONFIG_PARAMS if k in params})
    try:
        config.validate()
    except ExpertError as exc:
        raise JobInputError(f"finetune_expert: {exc}") from None
    weighting = str(params.get("weighting", settings.finetune_weighting))
    if weighting not in WEIGHTINGS:
        raise JobInputError(f"weighting must be one of {', '.join(WEIGHTINGS)}, not {weighting!r}")
    max_prompts = params.get("max_prompts", settings.finetune_max_prompts)
    minimum = params.get("min_routed_prompts", settings.finetune_min_routed_prompts)
    share = params.get("holdout_share", settings.finetune_holdout_share)
    for name, value, ok in (("max_prompts", max_prompts, isinstance(max_prompts, int) and max_prompts > 0),
                            ("min_routed_prompts", minimum, isinstance(minimum, int) and minimum > 0),
                            ("holdout_share", share, isinstance(share, int | float) and 0 < share < 1)):
        if isinstance(value, bool) or not ok:
            raise JobInputError(f"{name}={value!r} is out of range for finetune_expert")
    auto = params.get("auto_approve")
    if auto is not None and auto not in (0, 1, "true", "false"):
        raise JobInputError(f"auto_approve must be true or false, not {auto!r}")
    return Plan(str(params["expert"]), config, weighting, int(max_prompts), int(minimum), float(share),
                None if auto is None else auto in (1, "true"))


def _confidence(expert: str, predicted: dict[str, Any] | None) -> float:
    """softmax(−predicted loss) at the chosen expert; 1 when the request logged no predictions."""
    values = {k: float(v) for k, v in (predicted or {}).items() if isinstance(v, int | float) and math.isfinite(v)}
    if expert not in values:
        return 1.0
    low = min(values.values())
    total = sum(math.exp(low - v) for v in values.values())
    return math.exp(low - values[expert]) / total


def _held_out(key: str, share: float) -> bool:
    return stable_fraction(key, salt=Salt.FINETUNE_HOLDOUT) < share


def routed_prompts(session: Session, job: Plan) -> RoutedPrompts:
    """The expert's recent distinct routed prompts, split by the salted hash, and the others' held-out ones."""
    rows = session.execute(
        select(Request.prompt_hash, Prompt.text, Request.predicted_losses)
        .join(Prompt, Prompt.hash == Request.prompt_hash)
        .where(Request.expert == job.expert).order_by(Request.created_at.desc(), Request.id)
        .limit(20 * job.max_prompts)
    ).all()
    texts: dict[str, str] = {}
    confidences: dict[str, list[float]] = {}
    for key, text, predicted in rows:
        if key not in texts and len(texts) >= job.max_prompts:
            continue
        texts.setdefault(key, text)
        confidences.setdefault(key, []).append(_confidence(job.expert, predicted))
    train, weights, own = [], [], []
    for key in sorted(texts):
        if _held_out(key, job.holdout_share):
            own.append(texts[key])
        else:
            train.append(texts[key])
            weights.append(float(np.mean(confidences[key])) if job.weighting == "confidence" else 1.0)
    if weights:
        mean = float(np.mean(weights)) or 1.0
        weights = [w / mean for w in weights]
    others = session.execute(
        select(Request.prompt_hash, Prompt.text).join(Prompt, Prompt.hash == Request.prompt_hash)
        .where(Request.expert != job.expert).order_by(Request.created_at.desc(), Request.id)
        .limit(20 * _OTHER_LIMIT)
    ).all()
    other: dict[str, str] = {}
    for key, text in others:
        if key not in texts and key not in other and len(other) < _OTHER_LIMIT and _held_out(key, job.holdout_share):
            other[key] = text
    return RoutedPrompts(train, weights, own, [other[k] for k in sorted(other)])


def _skip(job: Plan, data: RoutedPrompts) -> Skip | None:
    if data.total >= job.min_routed_prompts and len(data.own_holdout) >= 2 and data.train:
        return None
    return Skip(f"skipped: expert {job.expert!r} has {data.total} distinct routed prompts "
                f"({len(data.train)} to train on, {len(data.own_holdout)} held out); fine-tuning needs "
                f"{job.min_routed_prompts} (THALAMUS_FINETUNE_MIN_ROUTED_PROMPTS), at least one to train on "
                "and two held out",
                {"expert": job.expert, "routed_prompts": data.total, "train": len(data.train),
                 "held_out": len(data.own_holdout), "min_routed_prompts": job.min_routed_prompts})


def check(settings: Settings, params: dict[str, Any]) -> Skip | None:
    """Before a run is recorded: bad parameters or expert → JobInputError; too few routed prompts → a Skip."""
    from jobs.expert_versions import local_expert

    job = plan(settings, params)
    with session_scope(settings) as session:
        expert = local_expert(session, job.expert)
        _model_dir(expert)
        return _skip(job, routed_prompts(session, job))


def _model_dir(expert: Any) -> None:
    from experts.local import ExpertError, check_model_dir

    try:
        check_model_dir(expert.name, expert.kind, expert.uri)
    except ExpertError as exc:
        raise JobInputError(str(exc)) from None


def scheduled(settings: Settings) -> list[dict[str, Any]]:
    """One run's parameters per expert named by THALAMUS_FINETUNE_EXPERTS (``all-local``: every active local one)."""
    from store.queries import active_experts

    wanted = [name.strip() for name in settings.finetune_experts.split(",") if name.strip()]
    if wanted == ["all-local"]:
        with session_scope(settings) as session:
            wanted = [e.name for e in active_experts(session) if e.kind in ("masked-lm", "causal-lm")]
    return [{"expert": name} for name in wanted]


def lock_key(params: dict[str, Any]) -> str:
    """The job's lock is per expert: two experts fine-tune at once, one expert never twice."""
    return str(params.get("expert", ""))


def _interval(after: list[float], before: list[float]) -> dict[str, Any] | None:
    from router.metrics import paired_bootstrap

    pairs = [(a, b) for a, b in zip(after, before, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if not pairs:
        return None
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    diff, low, high = paired_bootstrap(a, b)
    return {"n": len(pairs), "before": float(b.mean()), "after": float(a.mean()), "diff": diff,
            "ci_low": low, "ci_high": high}


def _version_root(settings: Settings, name: str) -> Any:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")[:60] or "expert"
    return settings.experts_dir / "versions" / f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def finetune_expert(settings: Settings, progress: Progress | None = None,
                    params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune, measure, write the new version directory, register it as a candidate (or auto-approve it)."""
    from experts.finetune import finetune, save_version_dir
    from experts.local import LocalExpert
    from jobs.expert_versions import (
        activate,
        auto_approve_reason,
        ensure_base_version,
        local_expert,
        next_version,
        register_candidate,
    )

    report = progress or (lambda fraction, message: None)
    job = plan(settings, dict(params or {}))
    with session_scope(settings) as session:
        expert = local_expert(session, job.expert)
        _model_dir(expert)
        name, kind, uri, base_version = expert.name, expert.kind, expert.uri or "", expert.version
        data = routed_prompts(session, job)
    skip = _skip(job, data)
    if skip is not None:
        raise JobInputError(skip.message.removeprefix("skipped: "))
    report(0.02, f"loading {name} version {base_version}")
    model = LocalExpert.load(name, kind, uri)
    report(0.05, f"scoring {len(data.own_holdout)} own and {len(data.other_holdout)} other held-out prompts")
    own_before, other_before = model.losses(data.own_holdout), model.losses(data.other_holdout)
    trained, history = finetune(model.model, model.tokenizer, kind, data.train, data.weights, job.config,
                                progress=lambda f, m: report(0.1 + 0.75 * f, m))
    tuned = LocalExpert(name, kind, trained, model.tokenizer)
    report(0.87, "scoring the fine-tuned model")
    own_after, other_after = tuned.losses(data.own_holdout), tuned.losses(data.other_holdout)
    metrics = {"own": _interval(own_after, own_before), "other": _interval(other_after, other_before),
               "n_train": len(data.train), "train_seconds": round(history.seconds, 3),
               "epoch_losses": history.epoch_losses}
    training = {**job.config.as_dict(), "weighting": job.weighting, "steps": history.steps,
                "trainable_parameters": history.trainable_parameters, "base_version": base_version}
    report(0.93, "writing the version directory")
    with session_scope(settings) as session:
        version = next_version(session, name, local_expert(session, name).version)
    started = time.perf_counter()
    path, digest = save_version_dir(trained, model.tokenizer, _version_root(settings, name), version)
    training["save_seconds"] = round(time.perf_counter() - started, 3)
    try:
        with session_scope(settings) as session:
            expert = local_expert(session, name)
            ensure_base_version(session, expert)
            row = register_candidate(session, expert, version, path, digest, training, metrics)
            enabled = settings.finetune_auto_approve if job.auto_approve is None else job.auto_approve
            auto = auto_approve_reason(settings.model_copy(update={"finetune_auto_approve": enabled}), metrics)
            if auto:
                activate(session, expert, row, actor="policy", reason=auto)
            status = str(row.status)
    except BaseException:  # not registered: the directory would be an orphan nobody can approve
        shutil.rmtree(path, ignore_errors=True)
        raise
    report(1.0, f"registered {name} version {version} ({status})")
    return {"expert": name, "version": version, "parent_version": base_version, "status": status,
            "uri": str(path), "content_hash": digest, "auto_approved": bool(auto), "metrics": metrics,
            "training": training}
