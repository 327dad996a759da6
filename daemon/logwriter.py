"""Asynchronous, batched request logging: the response never waits for the database.

Rows go into a bounded queue; one thread writes them in batches (``log_batch_size`` rows or every
``log_flush_seconds``). A batch that fails on a transient error (connection lost, database locked)
is retried until it is written; one that fails on bad data is split so only the bad rows are lost.

With a ``Spool`` (``THALAMUS_SPOOL=on``), ``submit`` first makes the row durable
on local disk, so a killed process loses no answered request: the next start replays the rows its
spool still holds, and this writer releases each row from the spool once it is in the database.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import exc as sa_exc

from daemon.metrics import Metrics, default_metrics
from daemon.spool import Spool
from store.db import session_scope
from store.queries import insert_requests
from store.settings import Settings

log = logging.getLogger(__name__)

_IDLE_WAIT = 0.1
_WAKE: dict[str, Any] = {}
"""Put on the queue by :meth:`RequestLogWriter.flush` and ``close``: a writer blocked on the queue's
timeout (up to ``_IDLE_WAIT``) wakes at once and sees the hurry, so a feedback post that waits for its
request's row waits for one insert, not for the idle timeout (was ~100 ms per post)."""
_MAX_BACKOFF = 5.0


class RequestLogWriter:
    """A background writer of ``requests`` rows (each row a dict with the prompt text under ``prompt``)."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None, max_queue: int = 10_000,
                 spool: Spool | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or default_metrics()
        self.spool = spool
        self._replay: list[dict[str, Any]] = []  # rows recovered from dead daemons' spools, written first
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(max_queue)
        self._pending: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._urgent = threading.Event()
        self._stop = threading.Event()
        self._close_deadline: float | None = None
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.failed_batches = 0
        self.last_error: str | None = None

    # -- producer side -------------------------------------------------------------------------

    def submit(self, row: Mapping[str, Any]) -> bool:
        """Queue one row; False (and a counted drop) when the queue is full or closed.

        Without a spool this never blocks. With one it returns once the row is on local disk and
        raises ``SpoolError`` when it cannot be made durable (the caller must not answer 200).
        """
        row = dict(row)
        key = str(row["id"])
        if self._stop.is_set():
            return self._drop(1, "the log writer is closed")
        if self.spool is not None:
            self.spool.append(row)
        with self._cond:
            self._pending[key] = row
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                del self._pending[key]
                kept = " (kept in the spool for the next start)" if self.spool is not None else ""
                return self._drop(1, f"the log queue is full ({self._queue.maxsize} rows){kept}")
            self.metrics.queue_depth.set(len(self._pending))
        return True

    def pending(self, request_id: str) -> dict[str, Any] | None:
        """A submitted row not yet written, or None."""
        with self._cond:
            row = self._pending.get(request_id)
            return dict(row) if row is not None else None

    @property
    def depth(self) -> int:
        """Rows submitted and not yet written."""
        with self._cond:
            return len(self._pending)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row submitted so far is written (or dropped). False on timeout."""
        with self._cond:
            waiting = set(self._pending)
            if not waiting:
                return True
            if self._thread is None or not self._thread.is_alive():
                self._cond.release()
                try:
                    self._drain_inline()
                finally:
                    self._cond.acquire()
            self._urgent.set()
            self._wake()
            return self._cond.wait_for(lambda: waiting.isdisjoint(self._pending), timeout)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Open the spool and take over dead daemons' spooled rows, then start the writer thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        if self.spool is not None and not self.spool.is_open:
            self.spool.open()
            recovered = self.spool.recover().rows
            with self._cond:
                for row in recovered:
                    self._pending[str(row["id"])] = row
                self._replay.extend(recovered)
                self.metrics.queue_depth.set(len(self._pending))
        self._stop.clear()
        self._close_deadline = None
        self._thread = threading.Thread(target=self._run, name="thalamus-log-writer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting rows and write everything queued; rows still unwritable after ``timeout`` are dropped."""
        with self._cond:
            self._stop.set()
            self._close_deadline = time.monotonic() + timeout
        self._urgent.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout + 5)
            self._thread = None
        else:
            self._drain_inline()
        if self.spool is not None:
            self.spool.close()

    def _wake(self) -> None:
        with contextlib.suppress(queue.Full):  # a full queue never blocks the writer
            self._queue.put_nowait(_WAKE)

    # -- writer side ---------------------------------------------------------------------------

    def _run(self) -> None:
        while self._replay:
            batch = self._replay[: self.settings.log_batch_size]
            del self._replay[: len(batch)]
            self._write(batch)
        while True:
            batch = self._gather()
            if batch:
                self._write(batch)
            elif self._stop.is_set() and self._queue.empty():
                return

    def _drain_inline(self) -> None:
        while True:
            batch = self._gather(block=False)
            if not batch:
                return
            self._write(batch)

    def _gather(self, block: bool = True) -> list[dict[str, Any]]:
        size, batch = self.settings.log_batch_size, list[dict[str, Any]]()
        deadline: float | None = None
        while len(batch) < size:
            hurry = self._urgent.is_set() or self._stop.is_set() or not block
            try:
                if hurry:
                    item = self._queue.get_nowait()
                else:
                    wait = _IDLE_WAIT if deadline is None else deadline - time.monotonic()
                    if wait <= 0:
                        break
                    item = self._queue.get(timeout=min(wait, _IDLE_WAIT))
            except queue.Empty:
                if hurry or (deadline is not None and time.monotonic() >= deadline):
                    break
                if deadline is None:
                    return batch
                continue
            if item is _WAKE:
                continue
            batch.append(item)
            if deadline is None:
                deadline = time.monotonic() + self.settings.log_flush_seconds
        if self._queue.empty():
            self._urgent.clear()
        return batch

    def _write(self, batch: list[dict[str, Any]]) -> None:
        backoff = 0.1
        while True:
            try:
                self._insert(batch)
                self._done(batch, written=True)
                return
            except Exception as exc:
                self.failed_batches += 1
                self.metrics.log_failures.inc()
                self.last_error = f"{type(exc).__name__}: {exc}"
                if not _transient(exc):
                    log.error("request log batch of %d rows failed (%s); writing rows one by one", len(batch), exc)
                    self._write_singly(batch)
                    return
                if self._close_deadline is not None and time.monotonic() > self._close_deadline:
                    log.error("closing: %d request log rows could not be written: %s", len(batch), exc)
                    self._done(batch, written=False, retry_later=True)
                    return
                log.warning("request log batch of %d rows failed (%s); retrying in %.1f s", len(batch), exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    def _write_singly(self, batch: list[dict[str, Any]]) -> None:
        for row in batch:
            try:
                self._insert([row])
                self._done([row], written=True)
            except Exception as exc:
                log.error("request log row %s dropped: %s", row.get("id"), exc)
                self._done([row], written=False)

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with session_scope(self.settings) as session:
            insert_requests(session, rows)

    def _done(self, rows: list[dict[str, Any]], written: bool, retry_later: bool = False) -> None:
        """Rows leave the queue: written, refused for their data, or (``retry_later``) left to the spool."""
        if self.spool is not None and not retry_later:
            self.spool.release(str(row["id"]) for row in rows)
            self.metrics.spool_depth.set(self.spool.depth)
        with self._cond:
            for row in rows:
                self._pending.pop(str(row["id"]), None)
            if written:
                self.written += len(rows)
                self.metrics.log_written.inc(len(rows))
            elif retry_later and self.spool is not None:
                self._drop(len(rows), "the database is unreachable; they stay in the spool for the next start")
            else:
                self._drop(len(rows), "the database refused them")
            self.metrics.queue_depth.set(len(self._pending))
            self._cond.notify_all()

    def _drop(self, count: int, why: str) -> bool:
        self.dropped += count
        self.metrics.log_dropped.inc(count)
        log.warning("dropped %d request log row(s): %s", count, why)
        return False


def _transient(exc: BaseException) -> bool:
    """Errors worth retrying as they are: the connection, not the data."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError,
                            sa_exc.DisconnectionError, ConnectionError, TimeoutError))
