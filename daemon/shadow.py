"""Shadow routing off the response path: a bounded queue and one low-priority background thread.

``offer`` is the only call on the response path: with no shadow loaded it returns at once; otherwise
it draws the request's fraction (``stable_fraction(request id, Salt.SHADOW)``, so a replay samples
the same requests and shadows with nested shares see nested samples), and puts one item on the
queue for the shadows whose share is above it. A full queue drops the item and counts it: the
response never waits for a shadow.

The thread takes up to ``shadow_batch_size`` items at a time, routes them through each shadow that
sampled them (one forward pass per shadow), and writes the decisions to ``shadow_decisions`` in one
insert (idempotent on (request id, version)). It gives way to serving twice: before each forward
pass it waits while the served router computes or has requests waiting (when serving does not pause
for 1 s, the daemon is saturated and the batch is dropped and counted), and it runs at
a lower scheduling priority (``THALAMUS_SHADOW_NICE``, +10 by default; Linux schedules threads
separately, and the torch worker threads it starts inherit it). Both were measured
(``benchmarks/shadow_latency.py``): without them a share of 1.0 slowed a busy daemon's responses.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

from daemon.holder import RouterHolder
from daemon.metrics import Metrics, default_metrics
from router.hashing import Salt, stable_fraction
from store.db import session_scope
from store.queries import insert_shadow_decisions
from store.schema import utcnow
from store.settings import Settings

log = logging.getLogger(__name__)

_IDLE_WAIT = 0.2
_YIELD_POLL = 0.002
_MAX_YIELD = 1.0  # a shadow pass waits this long at most for the served router to pause, else it is dropped


@dataclasses.dataclass(frozen=True)
class _Item:
    request_id: str
    prompt: str
    lambdas: Mapping[str, float]
    served_expert: str
    versions: tuple[int, ...]


@dataclasses.dataclass
class ShadowCounts:
    """Per shadow version: decisions written, requests dropped (queue full, or serving saturated), failures."""

    routed: int = 0
    dropped: int = 0
    failed: int = 0


class ShadowRunner:
    """Routes the sampled share of live requests with the holder's shadow routers and logs their choices."""

    def __init__(self, settings: Settings, holder: RouterHolder, metrics: Metrics | None = None,
                 max_queue: int | None = None, batch_size: int | None = None) -> None:
        self.settings, self.holder = settings, holder
        self.metrics = metrics or default_metrics()
        self.batch_size = batch_size or settings.shadow_batch_size
        self._queue: queue.Queue[_Item] = queue.Queue(max_queue or settings.shadow_queue_size)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._unfinished = 0  # items offered and not yet routed, written or given up
        self._counts: dict[int, ShadowCounts] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    # -- the response path -----------------------------------------------------------------------

    def offer(self, request_id: str, prompt: str, lambdas: Mapping[str, float], served_expert: str) -> int:
        """Queue a routed request for the shadows that sample it; never blocks. Returns how many shadows queued it."""
        shadows = self.holder.shadows
        if not shadows:
            return 0
        fraction = stable_fraction(request_id, salt=Salt.SHADOW)
        versions = tuple(v for v, shadow in shadows.items() if fraction < shadow.share)
        if not versions:
            return 0
        with self._lock:
            try:
                self._queue.put_nowait(_Item(request_id, prompt, dict(lambdas), served_expert, versions))
            except queue.Full:
                for version in versions:
                    self._count(version).dropped += 1
                self.metrics.shadow_decisions.labels("dropped").inc(len(versions))
                return 0
            self._unfinished += 1
        return len(versions)

    # -- what status shows -------------------------------------------------------------------------

    def counts(self) -> dict[int, ShadowCounts]:
        with self._lock:
            return {v: dataclasses.replace(c) for v, c in self._counts.items()}

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def capacity(self) -> int:
        return self._queue.maxsize

    def status(self) -> list[dict[str, Any]]:
        """One entry per shadow loaded or failing to load: share, load state and counts."""
        shadows, errors, counts = self.holder.shadows, self.holder.shadow_errors, self.counts()
        listed = []
        for version in sorted(shadows.keys() | errors.keys()):
            shadow = shadows.get(version)
            count = counts.get(version, ShadowCounts())
            listed.append({
                "version": version, "share": shadow.share if shadow else None, "loaded": shadow is not None,
                "sha256": shadow.loaded.sha256 if shadow else None,
                "loaded_at": shadow.loaded.loaded_at.isoformat() if shadow else None,
                "load_error": errors.get(version), **dataclasses.asdict(count),
            })
        return listed

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="thalamus-shadow-router", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread; items still queued are not routed (shadow decisions are best effort)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every item offered so far is routed and written (or given up). False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unfinished == 0, timeout)

    # -- the background thread --------------------------------------------------------------------

    def _run(self) -> None:
        _lower_priority(self.settings.shadow_nice)
        while not self._stop.is_set():
            batch = self._gather()
            if not batch:
                continue
            try:
                self._process(batch)
            except Exception as exc:  # never let the thread die: count and carry on
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("shadow routing of %d requests failed", len(batch))
                with self._lock:
                    for item in batch:
                        for version in item.versions:
                            self._count(version).failed += 1
            finally:
                with self._idle:
                    self._unfinished -= len(batch)
                    self._idle.notify_all()
            time.sleep(0)  # let a waiting request thread take the GIL before the next batch

    def _gather(self) -> list[_Item]:
        try:
            batch = [self._queue.get(timeout=_IDLE_WAIT)]
        except queue.Empty:
            return []
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _process(self, batch: list[_Item]) -> None:
        """Route the batch with every shadow that sampled part of it, then write the decisions at once."""
        shadows = self.holder.shadows
        rows: list[dict[str, Any]] = []
        failed: dict[int, int] = {}
        dropped: dict[int, int] = {}
        for version in sorted({v for item in batch for v in item.versions}):
            items = [item for item in batch if version in item.versions]
            shadow = shadows.get(version)
            if shadow is None:  # stopped (or unloaded) since the request was sampled
                continue
            if not self._yield_to_serving():  # serving never paused: shed this work rather than compete
                dropped[version] = dropped.get(version, 0) + len(items)
                continue
            try:
                predicted = shadow.loaded.predict([item.prompt for item in items])
                for item, row in zip(items, predicted, strict=True):
                    decision = shadow.loaded.decide(row, item.lambdas)
                    rows.append({"request_id": item.request_id, "router_version_id": version,
                                 "expert": decision.expert, "served_expert": item.served_expert,
                                 "predicted_losses": decision.predicted, "created_at": utcnow()})
            except Exception as exc:
                self.last_error = f"shadow router version {version}: {type(exc).__name__}: {exc}"
                log.warning("%s", self.last_error)
                failed[version] = failed.get(version, 0) + len(items)
        written: dict[int, int] = {}
        if rows:
            try:
                with session_scope(self.settings) as session:
                    insert_shadow_decisions(session, rows)
                for row in rows:
                    written[row["router_version_id"]] = written.get(row["router_version_id"], 0) + 1
            except Exception as exc:  # the database may be down: these decisions are lost, and counted
                self.last_error = f"writing shadow decisions: {type(exc).__name__}: {exc}"
                log.warning("%s", self.last_error)
                for row in rows:
                    failed[row["router_version_id"]] = failed.get(row["router_version_id"], 0) + 1
        with self._lock:
            for version, n in written.items():
                self._count(version).routed += n
            for version, n in failed.items():
                self._count(version).failed += n
            for version, n in dropped.items():
                self._count(version).dropped += n
        self.metrics.shadow_decisions.labels("dropped").inc(sum(dropped.values()))
        self.metrics.shadow_decisions.labels("routed").inc(sum(written.values()))
        self.metrics.shadow_decisions.labels("failed").inc(sum(failed.values()))

    def _yield_to_serving(self) -> bool:
        """Wait (at most ``_MAX_YIELD`` s) while the served router computes or a request waits for it.

        False when it never paused: the daemon is saturated, and the caller drops the shadow work."""
        deadline = time.monotonic() + _MAX_YIELD
        while True:
            current = self.holder.current
            if current is None or not current.batcher.busy:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_YIELD_POLL)

    def _count(self, version: int) -> ShadowCounts:
        """The counts of ``version``; call with ``self._lock`` held."""
        return self._counts.setdefault(version, ShadowCounts())


def _lower_priority(nice: int) -> None:
    """Raise this thread's nice value by ``nice`` (Linux schedules threads separately); a no-op where impossible."""
    if nice <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
    except (AttributeError, OSError) as exc:
        log.info("the shadow thread keeps the process priority: %s", exc)
