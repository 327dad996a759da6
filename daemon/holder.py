"""The active router: one immutable bundle behind a single reference, hot-swapped by a watcher thread.

The watcher LISTENs for activations on PostgreSQL and, on every backend, also re-reads the active
version every ``swap_poll_seconds`` and after every reconnect (NOTIFY is lost while disconnected and
SQLite has none). A load that fails leaves the old bundle serving and records the error; with
nothing served yet (a start-up), the newest loadable version that was once active serves instead,
and ``fallback`` says so until the active version loads or another one is activated.

The holder also loads the shadow routers (versions with ``shadow_share`` set) on every such read,
verified like the active one; a shadow that fails to load is reported in ``shadow_errors`` and
never affects serving. ``daemon/shadow.py`` routes the sampled requests with them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session

from daemon.batcher import MicroBatcher
from daemon.metrics import Metrics, default_metrics
from router.exploration import OFF, ExplorePolicy, choose
from store.db import normalize_url, session_scope
from store.queries import ACTIVATION_CHANNEL, active_router_version
from store.schema import Expert, ExpertLoss
from store.settings import Settings
from store.states import VersionStatus

if TYPE_CHECKING:  # the daemon imports torch lazily, when it loads a bundle without an ONNX export
    from router.inference import OnnxRouter
    from router.model import Router

log = logging.getLogger(__name__)

_RETRY_FAILED_SECONDS = 30.0
_FALLBACK_TRIES = 5
_FALLBACK_STATUSES = (VersionStatus.RETIRED, VersionStatus.APPROVED)
_SHADOW_STATUSES = (VersionStatus.CANDIDATE, VersionStatus.APPROVED)  # as jobs.shadows.SHADOW_STATUSES


@dataclasses.dataclass(frozen=True)
class ExpertInfo:
    """What the daemon knows of one expert of the head, as registered in the database."""

    name: str
    kind: str | None
    uri: str | None
    version: int | None
    attributes: Mapping[str, Any]
    status: str | None
    observed: int = 0  # loss rows at its current version, counted up to a cap (the warm-up threshold)

    @property
    def registered(self) -> bool:
        return self.kind is not None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "uri": self.uri, "version": self.version,
                "attributes": dict(self.attributes), "status": self.status}


@dataclasses.dataclass(frozen=True)
class Decision:
    """One routing decision: the expert served (the argmin of predicted loss plus λ-weighted
    constraints, or a near-best one when the exploration policy explored), and the policy's
    whole distribution over the experts with the probability of the one served."""

    index: int
    expert: str
    predicted: dict[str, float]
    objective: dict[str, float]
    greedy: str = ""  # the argmin; equals ``expert`` unless ``explored``
    action_probs: dict[str, float] = dataclasses.field(default_factory=dict)
    propensity: float = 1.0
    explored: bool = False
    # Half-width of each predicted loss's calibrated interval (nominal 80 %); None where the router
    # has no calibrated spread (router.model.Router.predict_with_spread).
    spread: dict[str, float | None] | None = None


@dataclasses.dataclass(frozen=True)
class Fallback:
    """The active version cannot be loaded, so another one serves."""

    active_version: int
    error: str


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedRouter:
    """An immutable, verified, warmed-up router bundle and the expert metadata it routes over."""

    version_id: int
    sha256: str
    router: Router | OnnxRouter
    expert_names: tuple[str, ...]
    experts: tuple[ExpertInfo, ...]
    constraints: np.ndarray  # (E, C) in head order, read-only
    loaded_at: dt.datetime
    batcher: MicroBatcher = dataclasses.field(repr=False)  # micro-batches this bundle's predictions
    loss_scale: float = 1.0  # mean per-expert std of the training losses: the exploration margin's unit
    inference: str = "torch"  # what computes the predictions: "onnx-int8", "onnx-fp32", "torch", …

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Predicted losses (N, E); a single prompt is micro-batched with concurrent requests."""
        return self.predict_with_spread(texts)[0]

    def predict_with_spread(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(predicted losses (N, E), spread (N, E), NaN where unknown): the batcher runs
        :meth:`router.model.Router.predict_stacked`, both side by side from one forward pass."""
        if len(texts) == 1:
            stacked = np.asarray(self.batcher.predict_one(texts[0]), dtype=np.float64)[None, :]
        else:
            stacked = np.asarray(self.batcher.predict_many(texts), dtype=np.float64)
        n = len(self.expert_names)
        return stacked[:, :n], stacked[:, n:]

    def decide(self, predicted: np.ndarray, lambdas: Mapping[str, float], policy: ExplorePolicy = OFF,
               fraction: float = 0.0, spread: np.ndarray | None = None) -> Decision:
        """Choose among the experts for one row of predicted losses, drawing with ``fraction`` ∈ [0, 1)
        from ``policy`` (see :mod:`router.exploration`); with the policy off this is the argmin.
        ``spread`` (the row's calibrated half-widths, NaN where unknown) serves the ``overlap`` scope."""
        from router.constraints import objective

        values = objective(predicted, self.constraints, lambdas)
        unproven = (np.array([info.observed < policy.warmup_rows for info in self.experts])
                    if policy.warmup_share > 0 else None)
        choice = choose(values, policy, fraction, self.loss_scale, unproven, spread)
        names = self.expert_names
        return Decision(index=choice.index, expert=names[choice.index],
                        predicted={n: float(v) for n, v in zip(names, predicted, strict=True)},
                        objective={n: float(v) for n, v in zip(names, values, strict=True)},
                        greedy=names[choice.greedy],
                        action_probs={n: float(p) for n, p in zip(names, choice.probabilities, strict=True)},
                        propensity=choice.propensity, explored=choice.explored)

    def route(self, prompt: str, lambdas: Mapping[str, float], policy: ExplorePolicy = OFF,
              fraction: float = 0.0) -> Decision:
        predicted, spread = self.predict_with_spread([prompt])
        decision = self.decide(predicted[0], lambdas, policy, fraction, spread[0])
        if not np.isfinite(spread[0]).any():
            return decision
        return dataclasses.replace(decision, spread={n: float(v) if np.isfinite(v) else None
                                                     for n, v in zip(self.expert_names, spread[0], strict=True)})

    def expert(self, name: str) -> ExpertInfo | None:
        for info in self.experts:
            if info.name == name:
                return info
        return None


@dataclasses.dataclass(frozen=True)
class Shadow:
    """A loaded shadow router and the share of live requests it routes (it serves none of them)."""

    loaded: LoadedRouter
    share: float


class RouterHolder:
    """Holds the router being served; ``current`` is read once per request, swapped atomically."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or default_metrics()
        self._current: LoadedRouter | None = None
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: tuple[int, str, float] | None = None  # (version id, sha, when) of the last failed load
        self._read_failed = False  # last_error says the database could not be read
        self.last_error: str | None = None
        self.last_error_at: dt.datetime | None = None
        self.last_checked_at: dt.datetime | None = None
        self.swaps = 0
        self.failures = 0
        self.listening = False
        self.fallback: Fallback | None = None  # set while serving another version than the unloadable active one
        self._shadows: Mapping[int, Shadow] = {}  # replaced whole, never mutated: readers take it once
        self._shadow_lock = threading.Lock()
        self._shadow_failed: dict[int, tuple[str, float]] = {}  # version id -> (sha, when) of its last failed load
        self.shadow_errors: Mapping[int, str] = {}  # shadows that should be loaded but are not, and why

    @property
    def current(self) -> LoadedRouter | None:
        """The bundle to serve; take it once per request and keep using that object."""
        return self._current

    @property
    def shadows(self) -> Mapping[int, Shadow]:
        """The loaded shadow routers by version id; take it once and keep using that mapping."""
        return self._shadows

    # -- loading -------------------------------------------------------------------------------

    def load_active(self) -> bool:
        """Swap in the active version if it differs from the current one. True when a new bundle went live.

        Never raises: a failed read or load is logged, counted and kept in ``last_error``. The shadow
        routers are refreshed after it (see :meth:`load_shadows`).
        """
        with self._load_lock:
            try:
                changed = self._load_active()
            except Exception as exc:  # the DB may be down; the old bundle keeps serving
                self._record_error(f"could not read the active router version: {exc}", count=False)
                self._read_failed = True
                changed = False
        self.load_shadows()
        return changed

    def load_shadows(self) -> bool:
        """Load the shadow versions the database names, unload the others. True when the set changed.

        Never raises: a shadow that fails to load is left out and reported in ``shadow_errors`` (retried
        after 30 s or when its bundle changes); a failed read keeps the shadows as they are.
        """
        with self._shadow_lock:
            try:
                return self._load_shadows()
            except Exception as exc:
                log.warning("could not read the shadow router versions: %s", exc)
                return False

    def _load_shadows(self) -> bool:
        from store.schema import RouterVersion

        with session_scope(self.settings) as session:
            rows = session.scalars(
                select(RouterVersion)
                .where(RouterVersion.shadow_share.is_not(None), RouterVersion.status.in_(_SHADOW_STATUSES))
                .order_by(RouterVersion.id)
            ).all()
            wanted = []
            for row in rows:
                order = tuple(str(name) for name in row.expert_order)
                wanted.append((row.id, row.checkpoint_uri, row.checkpoint_sha256, order,
                               _expert_infos(session, order), float(row.shadow_share or 0.0)))
        before = self._shadows
        shadows: dict[int, Shadow] = {}
        errors: dict[int, str] = {}
        for version_id, uri, sha, order, experts, share in wanted:
            have = before.get(version_id)
            if have is not None and have.loaded.sha256 == sha:
                loaded = have.loaded
                if loaded.experts != experts:
                    loaded = dataclasses.replace(loaded, experts=experts, constraints=_constraints(experts))
                shadows[version_id] = Shadow(loaded, share)
                continue
            failed = self._shadow_failed.get(version_id)
            if failed is not None and failed[0] == sha and time.monotonic() - failed[1] < _RETRY_FAILED_SECONDS:
                errors[version_id] = self.shadow_errors.get(version_id, "failed to load")
                continue
            try:
                loaded = self._load(version_id, uri, sha, order, experts, observe=False)
            except Exception as exc:
                message = f"shadow router version {version_id} failed to load from {uri}: {exc}"
                log.error("%s", message)
                self._shadow_failed[version_id] = (sha, time.monotonic())
                errors[version_id] = message
                continue
            self._shadow_failed.pop(version_id, None)
            log.info("shadow router version %s loaded (share %g)", version_id, share)
            shadows[version_id] = Shadow(loaded, share)
        for version_id in before.keys() - shadows.keys():
            log.info("shadow router version %s unloaded", version_id)
        self._shadow_failed = {k: v for k, v in self._shadow_failed.items() if k in errors}
        changed = before.keys() != shadows.keys() or any(before[k].loaded is not shadows[k].loaded for k in shadows)
        self._shadows, self.shadow_errors = shadows, errors
        return changed

    def _load_active(self) -> bool:
        with session_scope(self.settings) as session:
            version = active_router_version(session)
            if version is None:
                self._recovered()
                self.last_checked_at = _now()
                return False
            version_id, uri, sha = version.id, version.checkpoint_uri, version.checkpoint_sha256
            order = tuple(str(name) for name in version.expert_order)
            experts = _expert_infos(session, order, self._warmup_rows())
        self._recovered()
        self.last_checked_at = _now()
        current = self._current
        if current is not None and current.version_id == version_id:
            self._clear_fallback()
            if current.experts != experts:  # attributes or versions changed: cheap refresh, same model
                self._current = dataclasses.replace(current, experts=experts, constraints=_constraints(experts))
            return False
        if (self._failed is not None and self._failed[:2] == (version_id, sha)
                and time.monotonic() - self._failed[2] < _RETRY_FAILED_SECONDS):
            return False
        try:
            loaded = self._load(version_id, uri, sha, order, experts)
        except Exception as exc:
            self._failed = (version_id, sha, time.monotonic())
            message = f"router version {version_id} failed to load from {uri}: {exc}"
            self._record_error(message, count=True)
            fallback = self._load_fallback(version_id) if self._current is None else None
            if fallback is not None:
                self._go_live(fallback)
            if self._current is not None:
                self._mark_fallback(version_id, message)
            return fallback is not None
        self._go_live(loaded)
        self._failed = None
        self._clear_fallback()
        return True

    def _warmup_rows(self) -> int:
        """How far to count each expert's loss rows: the warm-up threshold while exploration is on."""
        policy = self.settings.explore_policy
        return policy.warmup_rows if policy.active and policy.warmup_share > 0 else 0

    def _go_live(self, loaded: LoadedRouter) -> None:
        previous = self._current
        self._current = loaded
        self.swaps += 1
        self.metrics.swaps.inc()
        self.metrics.router_version.set(loaded.version_id)
        log.info("serving router version %s (was %s)", loaded.version_id, previous.version_id if previous else None)

    def _load_fallback(self, failed_id: int) -> LoadedRouter | None:
        """With nothing served, the newest loadable version that was once active (a bounded number of tries)."""
        from store.schema import RouterVersion

        with session_scope(self.settings) as session:
            rows = session.scalars(
                select(RouterVersion)
                .where(RouterVersion.status.in_(_FALLBACK_STATUSES), RouterVersion.id != failed_id)
                .order_by(RouterVersion.id.desc()).limit(_FALLBACK_TRIES)
            ).all()
            options = []
            for row in rows:
                order = tuple(str(name) for name in row.expert_order)
                infos = _expert_infos(session, order, self._warmup_rows())
                options.append((row.id, row.checkpoint_uri, row.checkpoint_sha256, order, infos))
        for option in options:
            try:
                loaded = self._load(*option)
            except Exception as exc:
                log.warning("fallback router version %s cannot be loaded either: %s", option[0], exc)
                continue
            log.warning("active router version %s cannot be loaded; serving version %s instead", failed_id, option[0])
            return loaded
        return None

    def _mark_fallback(self, active_id: int, error: str) -> None:
        """An older version serves because the active one cannot be loaded: say so in status and metrics."""
        self.fallback = Fallback(active_version=active_id, error=error)
        self.metrics.router_fallback.set(1)

    def _clear_fallback(self) -> None:
        self.fallback = None
        self.metrics.router_fallback.set(0)

    def _load(self, version_id: int, uri: str, sha: str, order: tuple[str, ...],
              experts: tuple[ExpertInfo, ...], observe: bool = True) -> LoadedRouter:
        from router.inference import has_export
        from router.serving import inference_of, load_for_serving

        router, constraints = load_for_serving(Path(uri), sha, order, [e.attributes for e in experts],
                                               inference="torch" if self.settings.inference == "torch" else "auto",
                                               threads=inference_threads(self.settings))
        batcher = MicroBatcher(router.predict_stacked,
                               on_batch=self.metrics.route_batch_size.observe if observe else None)
        inference = inference_of(router)
        if inference == "torch":
            if self.settings.inference == "torch":
                inference += " (THALAMUS_INFERENCE=torch)"
            elif has_export(Path(uri)):
                inference += " (fallback: the bundle's ONNX export cannot be served here, see the log)"
            else:
                inference += " (fallback: the bundle has no ONNX export)"
        return LoadedRouter(version_id=version_id, sha256=sha, router=router, expert_names=order,
                            experts=experts, constraints=constraints, loaded_at=_now(), batcher=batcher,
                            loss_scale=loss_scale(router), inference=inference)

    def _recovered(self) -> None:
        """The database answered again: an error that only said it could not be read is over."""
        if self._read_failed:
            self._read_failed = False
            self.last_error = self.last_error_at = None

    def _record_error(self, message: str, count: bool) -> None:
        log.error("%s", message)
        self.last_error, self.last_error_at = message, _now()
        if count:
            self.failures += 1
            self.metrics.swap_failures.inc()

    # -- watching ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the watcher thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="thalamus-router-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _watch(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            if self.settings.is_sqlite:
                self._poll_until_stopped()
                return
            try:
                self._listen()
                backoff = 0.5
            except Exception as exc:
                self.listening = False
                log.warning("LISTEN connection lost (%s); polling, reconnecting in %.1f s", exc, backoff)
                self.load_active()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.settings.swap_poll_seconds, 10.0)

    def _poll_until_stopped(self) -> None:
        while not self._stop.wait(self.settings.swap_poll_seconds):
            self.load_active()

    def _listen(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(_conninfo(self.settings.db_url), autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(ACTIVATION_CHANNEL)))
            self.listening = True
            self.load_active()  # anything NOTIFYed while we were away
            next_poll = time.monotonic() + self.settings.swap_poll_seconds
            while not self._stop.is_set():
                wait = max(0.0, min(0.5, next_poll - time.monotonic()))
                notified = [n.payload for n in conn.notifies(timeout=wait, stop_after=1)]
                if notified or time.monotonic() >= next_poll:
                    if notified:
                        log.info("activation notified: %s", notified)
                    self.load_active()
                    next_poll = time.monotonic() + self.settings.swap_poll_seconds
        self.listening = False


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _conninfo(url: str) -> str:
    """A libpq connection string for psycopg from an SQLAlchemy URL."""
    from sqlalchemy.engine import make_url

    return make_url(normalize_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)


def _expert_infos(session: Session, order: Sequence[str], count_up_to: int = 0) -> tuple[ExpertInfo, ...]:
    """The registered experts of a head, in its order; ``observed`` counts each one's loss rows at its
    current version up to ``count_up_to`` (a bounded query per expert: cheap on every poll)."""
    rows = {e.name: e for e in session.scalars(select(Expert).where(Expert.name.in_(list(order))))}
    infos = []
    for name in order:
        row = rows.get(name)
        if row is None:
            infos.append(ExpertInfo(name, None, None, None, {}, None))
            continue
        observed = 0
        if count_up_to > 0:
            capped = (select(literal(1)).where(ExpertLoss.expert == name, ExpertLoss.expert_version == row.version)
                      .limit(count_up_to).subquery())
            observed = int(session.scalar(select(func.count()).select_from(capped)) or 0)
        infos.append(ExpertInfo(name, row.kind, row.uri, row.version, dict(row.attributes or {}), row.status, observed))
    return tuple(infos)


def inference_threads(settings: Settings) -> int:
    """ONNX Runtime's intra-op threads in this process: the setting, else the cores shared among the workers
    (two workers with two threads each on two cores would fight over them)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return settings.inference_threads or max(1, cores // settings.workers)


def loss_scale(router: Router | OnnxRouter) -> float:
    """The router's loss scale: the mean over experts of its normaliser's std (1 for a cold start)."""
    raw: Any = router.loss_std
    std = np.asarray(raw.detach().cpu().numpy() if hasattr(raw, "detach") else raw, dtype=np.float64)
    value = float(std.mean()) if std.size else 1.0
    return value if np.isfinite(value) and value > 0 else 1.0


def _constraints(experts: Sequence[ExpertInfo]) -> np.ndarray:
    from router.serving import constraints_for

    return constraints_for([e.attributes for e in experts])

