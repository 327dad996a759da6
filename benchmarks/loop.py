"""The continual-learning loop, measured (``thalamus bench loop``).

A dataset's prompts arrive as a stream (:mod:`benchmarks.loop_stream`) at the daemon's own HTTP
app, in process (FastAPI's TestClient over :func:`daemon.app.create_app`, so the lifespan, the
router holder, the exploration policy, the request log and its spool are the product's). Each answer
is followed by the application's feedback through ``POST /v1/feedback``: the served expert's
loss only (``bandit``, the default) or every registered expert's (``full``). Every ``cycle``
requests the production jobs run as the scheduler runs them, from the job registry (the train
gate, ``refresh_losses``, ``train_router`` with its off-policy evaluation and auto-approve gate),
and the holder hot-swaps to whatever became active. Nothing skips the product's code: the loss
table the router trains on is what the feedback path wrote.

Baselines in the same run: the best single expert (fixed), the oracle, and an offline router
trained with full information on the whole pool (the ``bench quality`` recipe), scored on the same
prompts. :mod:`benchmarks.loop_report` turns the per-request records into windows, promotions,
targets and a plot.
"""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from benchmarks.data import Split, load_dataset
from benchmarks.loop_stream import FEEDBACK, SCENARIOS, Stream, make_stream
from store.settings import Settings

log = logging.getLogger(__name__)

Say = Callable[[str], None]

_POLL_EVERY = 25
"""Requests between two re-reads of the active version, as the daemon's watcher polls every few seconds."""

QUICK_ROWS = 900
"""``--quick``: complete train rows kept (a seeded sample), so the whole run fits in about two minutes."""


@dataclass(frozen=True)
class LoopPlan:
    """One run of the loop benchmark."""

    scenario: str = "cold"
    feedback: str = "bandit"
    requests: int | None = None  # default: one pass over the pool (``--quick``: 600)
    cycle: int = 500  # requests between two runs of the production jobs (``--quick``: 150)
    window: int = 250  # requests per reported window (``--quick``: 75)
    seed: int = 0
    quick: bool = False
    explore: str | None = None  # THALAMUS_EXPLORE for the run; None keeps the settings' (the product default)
    offline: bool = True  # train the offline full-information router baseline
    heldout_share: float = 0.2
    # The production job with the encoder frozen (THALAMUS_TRAIN_LORA_R=0, one epoch: the head is still
    # selected by CV), the default: each cycle encodes only new prompts (router/feature_cache.py), ~10x cheaper
    # than LoRA on a CPU, and LoRA did not measurably help routing on dcrouter (docs/benchmarks.md). False
    # (``--lora``) trains with the settings' own recipe (LoRA by default).
    frozen_encoder: bool = True
    # Score each candidate and the router it would replace on the held-out prompts at the cycle (the truth
    # the off-policy gate estimates; one batched prediction per version, cached).
    truth: bool = True

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose one of {', '.join(SCENARIOS)}")
        if self.feedback not in FEEDBACK:
            raise ValueError(f"unknown feedback {self.feedback!r}; choose one of {', '.join(FEEDBACK)}")
        for name in ("cycle", "window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"requests must be at least 1, got {self.requests}")

    def resolved(self) -> LoopPlan:
        """``--quick`` defaults filled in (600 requests, cycles of 150, windows of 75)."""
        if not self.quick:
            return self
        return replace(self, requests=self.requests or 600, cycle=min(self.cycle, 150), window=min(self.window, 75),
                       frozen_encoder=True)


@dataclass
class Record:
    """One request of the stream, as served and as the world scored it."""

    t: int
    expert: str
    loss: float  # reported loss of the served expert (what the application measured)
    oracle: float  # the best registered expert's loss on this request
    explored: bool
    propensity: float
    version: int
    greedy_loss: float = float("nan")  # loss of the router's argmin on this request (what "off" would serve)
    labelled: bool = False  # every expert's loss was posted for this request (full, or labelled and sampled)


@dataclass
class Cycle:
    """One run of the production jobs."""

    t: int  # requests served before it
    skipped: str | None = None  # the train gate's reason, when it did not train
    version: int | None = None  # the candidate it registered
    promoted: bool = False
    active_after: int | None = None
    error: str | None = None
    failed: bool = False  # the job raised (an error of the product, not a refusal): counted by the report
    seconds: float = 0.0
    off_policy: dict[str, Any] | None = None
    holdout: dict[str, Any] | None = None
    gate: str | None = None
    # What the benchmark knows and the gate cannot: candidate and active router on the held-out prompts
    # (never streamed), scored by the world as it is at ``t`` (:func:`_heldout_truth`).
    truth: dict[str, Any] | None = None
    # On a promotion: the replaced router's argmin on each request of the next window ({t: expert index}),
    # so the report compares the two routers on the same requests (loop_report.promotions).
    replaced: dict[str, Any] | None = None


@dataclass
class LoopRun:
    """Everything a report needs."""

    plan: LoopPlan
    stream: Stream
    records: list[Record] = field(default_factory=list)
    cycles: list[Cycle] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    offline_choice: np.ndarray | None = None  # (len(pool),) the offline router's expert index per pool row
    offline_heldout: np.ndarray | None = None  # (len(heldout),)
    online_heldout: np.ndarray | None = None  # (len(heldout),) the final active router's choice
    online_names: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)  # the exploration and gate settings the run used


class _SeededUUIDs:
    """``uuid4`` from a seeded generator: the request ids the daemon draws, and so its exploration draws
    (which hash the id), are the same in every run of a seed, so a run reproduces."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self._random.getrandbits(128), version=4)


@contextlib.contextmanager
def _seeded_request_ids(seed: int) -> Iterator[None]:
    """The daemon's request ids (``daemon.routes.routing``) drawn from :class:`_SeededUUIDs` meanwhile."""
    from daemon.routes import routing

    with mock.patch.object(routing, "uuid", _SeededUUIDs(seed)):
        yield


def _loop_settings(base: Settings, home: Path, plan: LoopPlan) -> Settings:
    """The product's settings with a throw-away home (SQLite), the auto-approve gate on, and no
    watcher polling (the benchmark swaps right after each cycle, as a NOTIFY would)."""
    # Auth off: the app is driven in process (no socket); keys and scopes are not what this measures.
    overrides: dict[str, Any] = {"home": home, "database_url": None, "broker_url": None, "auto_approve": True,
                                 "swap_poll_seconds": 3600.0, "auth": False}
    if plan.explore is not None:
        overrides["explore"] = plan.explore
    if plan.frozen_encoder:
        overrides.update(train_lora_r=0, train_epochs=1)
    return Settings(**{**base.model_dump(), **overrides})


def _register(settings: Settings, names: list[str], attributes: dict[str, dict[str, Any]]) -> None:
    from experts.registry import register_experts
    from store.db import session_scope

    with session_scope(settings) as session:
        register_experts(session, [{"name": n, "kind": "external", "attributes": attributes.get(n, {})}
                                   for n in names])


def _run_jobs(settings: Settings, t: int, say: Say) -> Cycle:
    """What the scheduler does at a tick: refresh the loss table, then train when the gate lets it."""
    from jobs.errors import CandidateRejected, JobInputError
    from jobs.registry import JOBS

    cycle = Cycle(t=t)
    started = time.perf_counter()
    JOBS["refresh_losses"].run(settings, lambda f, m: None, {})
    train = JOBS["train_router"]
    skip = train.skip(settings)
    if skip is not None:
        cycle.skipped = skip.message
    else:
        try:
            result = train.run(settings, lambda f, m: None, {})
        except (JobInputError, CandidateRejected) as exc:
            cycle.error = str(exc)
        except Exception as exc:  # the job run fails and the daemon goes on, as under the scheduler
            log.exception("train_router failed at t=%d", t)
            cycle.error, cycle.failed = f"job failed: {type(exc).__name__}: {exc}", True
        else:
            cycle.version = result.get("version_id")
            cycle.promoted = bool(result.get("auto_approved"))
            metrics = result.get("metrics", {})
            cycle.off_policy = metrics.get("off_policy")
            cycle.holdout = {"candidate": metrics.get("candidate"), "active": metrics.get("active")}
            cycle.gate = _last_gate(settings, cycle.version)
    cycle.seconds = time.perf_counter() - started
    say(f"  t={t}: " + (f"skipped ({cycle.skipped})" if cycle.skipped else cycle.error or
                         f"candidate {cycle.version} {'promoted' if cycle.promoted else 'kept as candidate'}")
        + f" in {cycle.seconds:.0f}s")
    return cycle


def _last_gate(settings: Settings, version_id: int | None) -> str | None:
    """The promotion gate's last verdict on a version, as "decision (basis): reason"."""
    from sqlalchemy import select

    from store.db import session_scope
    from store.schema import GateDecision

    with session_scope(settings) as session:
        row = session.scalars(select(GateDecision).where(GateDecision.router_version_id == version_id)
                              .order_by(GateDecision.id.desc())).first()
        return None if row is None else f"{row.decision} ({row.basis}): {row.reason or ''}"


def _offline_router(base: Settings, stream: Stream, attributes: dict[str, dict[str, Any]], quick: bool,
                    seed: int, say: Say) -> tuple[np.ndarray, np.ndarray, float]:
    """The full-information baseline: the ``bench quality`` recipe trained on every pool row with
    every expert's loss; its choices on the pool and on the held-out rows."""
    from benchmarks.quality import bench_recipe, prepare_home, train_and_predict
    from jobs.recipe import TrainRecipe

    recipe = bench_recipe(TrainRecipe.from_settings(base), quick=quick)
    with tempfile.TemporaryDirectory(prefix="thalamus-loop-offline-") as home:
        say(f"offline full-information router on {len(stream.pool.prompts)} pool prompts")
        settings = prepare_home(Path(home), stream.pool, attributes, recipe)
        prompts = stream.pool.prompts + stream.heldout.prompts
        predicted, _spread, order, _, seconds, _served = train_and_predict(settings, recipe, seed, prompts)
    predicted = predicted[:, [order.index(n) for n in stream.pool.experts]]
    choice = predicted.argmin(axis=1)
    return choice[:len(stream.pool.prompts)], choice[len(stream.pool.prompts):], seconds


def _router_choice(settings: Settings, version_id: int, prompts: Sequence[str], experts: Sequence[str]) -> np.ndarray:
    """A registered router version's argmin (index into ``experts``) on each prompt (no λ, as the stream routes)."""
    from jobs.router_store import load_version
    from store.db import session_scope
    from store.schema import RouterVersion

    with session_scope(settings) as session:
        version = session.get(RouterVersion, version_id)
        if version is None:
            raise ValueError(f"router version {version_id} does not exist")
        router = load_version(version)
    names = [str(n) for n in router.expert_names]
    predicted = router.predict(list(prompts), batch_size=64)
    return np.array([list(experts).index(names[i]) for i in predicted.argmin(axis=1)], dtype=np.int64)


def _heldout_choice(settings: Settings, version_id: int, stream: Stream,
                    cache: dict[int, np.ndarray]) -> np.ndarray:
    if version_id not in cache:
        cache[version_id] = _router_choice(settings, version_id, stream.heldout.prompts, stream.pool.experts)
    return cache[version_id]


def _heldout_truth(settings: Settings, stream: Stream, t: int, candidate: int, active: int | None,
                   cache: dict[int, np.ndarray]) -> dict[str, Any]:
    """Candidate and active router's true mean loss on the held-out prompts at ``t``, and candidate −
    active with a 95 % paired bootstrap interval: what the off-policy estimate tries to tell the gate."""
    from router.metrics import paired_bootstrap

    names, rows = stream.pool.experts, range(len(stream.heldout.prompts))

    def losses(version_id: int) -> np.ndarray:
        choice = _heldout_choice(settings, version_id, stream, cache)
        return np.array([stream.loss(t, names[int(c)], stream.heldout, i) for i, c in zip(rows, choice, strict=True)])

    new = losses(candidate)
    out: dict[str, Any] = {"candidate_loss": float(new.mean()), "n": len(stream.heldout.prompts)}
    if active is not None and active != candidate:
        old = losses(active)
        value, low, high = paired_bootstrap(new, old, n=2000, seed=0)
        out.update(active_loss=float(old.mean()), difference={"value": value, "low": low, "high": high})
    return out


def _frozen_embed(base: Settings) -> Callable[[Sequence[str]], np.ndarray]:
    from benchmarks.quality import frozen_embeddings

    return lambda prompts: frozen_embeddings(base.backbone_path, prompts, 128)


def _quick_train(train: Split, seed: int) -> Split:
    complete = np.flatnonzero(~np.isnan(train.losses).any(axis=1))
    rng = np.random.default_rng(seed + 7)
    return train.subset(np.sort(rng.permutation(complete)[:QUICK_ROWS]))


def run(dataset: Path, plan: LoopPlan, base: Settings, *, say: Say | None = None,
        home: Path | None = None) -> LoopRun:
    """Replay the stream through the daemon and the production jobs; see the module docstring."""
    from fastapi.testclient import TestClient

    from daemon.app import create_app

    say = say or (lambda message: None)
    for name in ("httpx", "httpx2"):  # one INFO line per in-process request would drown the report
        logging.getLogger(name).setLevel(logging.WARNING)
    plan = plan.resolved()
    started = time.perf_counter()
    train, _test, attributes = load_dataset(dataset)
    if plan.quick:
        train = _quick_train(train, plan.seed)
    embed = _frozen_embed(base) if plan.scenario == "drift" else None
    stream = make_stream(train, plan.scenario, requests=plan.requests, seed=plan.seed,
                         heldout_share=plan.heldout_share, embed=embed)
    loop = LoopRun(plan=plan, stream=stream)
    say(f"{plan.scenario}: {len(stream)} requests over {len(stream.pool.prompts)} pool prompts, "
        f"{len(stream.heldout.prompts)} held out; {plan.feedback} feedback; jobs every {plan.cycle}")
    if plan.offline:
        t0 = time.perf_counter()
        loop.offline_choice, loop.offline_heldout, _ = _offline_router(base, stream, attributes, plan.quick,
                                                                       plan.seed, say)
        loop.seconds["offline"] = time.perf_counter() - t0

    temp = tempfile.TemporaryDirectory(prefix="thalamus-loop-") if home is None else None
    home_dir = Path(temp.name) if temp is not None else Path(home)  # type: ignore[arg-type]
    try:
        from store.migrate import upgrade

        settings = _loop_settings(base, home_dir, plan)
        loop.policy = {"explore": settings.explore_policy.as_dict(), "gate_growth": settings.gate_growth,
                       "gate_min_logged_rows": settings.gate_min_logged_rows}
        settings.ensure_home()
        upgrade(settings)
        _register(settings, stream.available(0), attributes)
        app = create_app(settings)
        serve_seconds = 0.0
        choices: dict[int, np.ndarray] = {}  # held-out argmin per router version (the truth per cycle)
        with TestClient(app) as client, _seeded_request_ids(plan.seed):
            holder, writer = app.state.holder, app.state.writer
            for t in range(len(stream)):
                if t == stream.event_at and plan.scenario == "new-expert":
                    say(f"  t={t}: registering {stream.event_expert}")
                    _register(settings, [str(stream.event_expert)], attributes)
                t1 = time.perf_counter()
                record = _serve(client, stream, t, plan.feedback, loop.failures)
                serve_seconds += time.perf_counter() - t1
                if record is not None:
                    loop.records.append(record)
                if (t + 1) % _POLL_EVERY == 0:  # the watcher's poll: experts' versions and warm-up counts
                    holder.load_active()
                if (t + 1) % plan.cycle == 0 and t + 1 < len(stream):
                    writer.flush(timeout=30)
                    active_before = holder.current.version_id if holder.current else None
                    cycle = _run_jobs(settings, t + 1, say)
                    if plan.truth and cycle.version is not None:
                        cycle.truth = _heldout_truth(settings, stream, t + 1, cycle.version, active_before, choices)
                    if cycle.promoted and active_before is not None and active_before != cycle.version:
                        ahead = range(t + 1, min(t + 1 + plan.window, len(stream)))
                        picked = _router_choice(settings, active_before, [stream.pool.prompts[int(stream.order[i])]
                                                                          for i in ahead], stream.pool.experts)
                        cycle.replaced = {"version": active_before,
                                          "choice": {str(i): int(c) for i, c in zip(ahead, picked, strict=True)}}
                    holder.load_active()
                    cycle.active_after = holder.current.version_id if holder.current else None
                    loop.cycles.append(cycle)
            loop.online_names = list(holder.current.expert_names)
            predicted = holder.current.predict(stream.heldout.prompts)
            loop.online_heldout = np.array([stream.pool.experts.index(loop.online_names[i])
                                            for i in predicted.argmin(axis=1)])
        loop.seconds["serve"] = serve_seconds
        loop.seconds["jobs"] = sum(c.seconds for c in loop.cycles)
    finally:
        if temp is not None:
            temp.cleanup()
    loop.seconds["wall"] = time.perf_counter() - started
    return loop


def _serve(client: Any, stream: Stream, t: int, feedback: str, failures: list[str]) -> Record | None:
    """Route request ``t``, then post the application's feedback; None (and a failure) on an error answer."""
    prompt = stream.pool.prompts[int(stream.order[t])]
    answer = client.post("/v1/route", json={"prompt": prompt, "app": "bench-loop"})
    if answer.status_code != 200:
        failures.append(f"t={t} route HTTP {answer.status_code}: {answer.text[:200]}")
        return None
    body = answer.json()
    expert = body["expert"]
    losses = stream.losses_at(t)
    names = stream.pool.experts
    # labelled: the application evaluates every expert on the requests the daemon sampled for labels (the
    # route answer's ``sampled``, drawn at the label share), as it would send them to a judge or a review queue.
    every = feedback == "full" or (feedback == "labelled" and bool(body.get("sampled")))
    targets = stream.available(t) if every else [expert]
    for name in targets:
        loss = float(losses[names.index(name)])
        payload = {"request_id": body["request_id"], "score": 1.0 - loss, "app": "bench-loop"}
        if name != expert:
            payload["expert"] = name
        reply = client.post("/v1/feedback", json=payload)
        if reply.status_code != 202:
            failures.append(f"t={t} feedback HTTP {reply.status_code}: {reply.text[:200]}")
    objective = body.get("objective") or {expert: 0.0}
    greedy = min(objective, key=objective.__getitem__)  # ties: the first in head order, as the daemon breaks them
    return Record(t=t, expert=expert, loss=float(losses[names.index(expert)]), oracle=float(np.nanmin(losses)),
                  explored=bool(body.get("explored", False)), propensity=float(body.get("propensity", 1.0)),
                  version=int(body["router_version"]), greedy_loss=float(losses[names.index(greedy)]),
                  labelled=every)


def plan_dict(plan: LoopPlan) -> dict[str, Any]:
    return asdict(plan)
