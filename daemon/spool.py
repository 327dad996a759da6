"""A local append-only spool that makes answered requests durable before the response is sent.

Each daemon process owns ``<home>/spool/<owner>.lock`` (an exclusive ``flock`` held for its
lifetime) and appends its request rows, one JSON line each, to segments ``<owner>-<seq>.log``.
``append`` returns once its line is on disk: a committer thread writes and ``fdatasync``s whatever
concurrent requests appended meanwhile in one go (group commit), so N requests that arrive
together pay for one sync. The log writer ``release``s rows once they are in the database; a
sealed segment whose rows are all released is deleted. At start-up, every segment whose owner's
lock can be taken belongs to a dead process: ``recover`` returns its rows for the log writer to
write again (``insert_requests`` is idempotent on the request id) and deletes it once they are
written. An incomplete or unreadable line (a write torn by the crash) is skipped and counted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from router.checkpoint import fsync_dir

log = logging.getLogger(__name__)

SEGMENT_BYTES = 4 * 1024 * 1024


class SpoolError(RuntimeError):
    """The spool cannot make a row durable (disk full, closed, I/O error)."""


@dataclass
class _Segment:
    path: Path
    ids: set[str] = field(default_factory=set)
    sealed: bool = False


@dataclass
class Recovered:
    """Rows of segments left by dead processes, and how many torn or unreadable lines were skipped."""

    rows: list[dict[str, Any]]
    segments: int
    skipped: int


def encode(row: Mapping[str, Any]) -> bytes:
    """One JSON line (ASCII: lone surrogates survive as escapes); datetimes as ISO strings."""
    return (json.dumps(row, default=_default, separators=(",", ":")) + "\n").encode("ascii")


def decode(line: bytes) -> dict[str, Any]:
    """The row back from ``encode``; raises ValueError on a torn or corrupt line."""
    if not line.endswith(b"\n"):
        raise ValueError("incomplete last line")
    row = json.loads(line)
    if not isinstance(row, dict) or "id" not in row or "prompt" not in row:
        raise ValueError("not a request row")
    if isinstance(row.get("created_at"), str):
        row["created_at"] = dt.datetime.fromisoformat(row["created_at"])
    return row


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"cannot spool a {type(value).__name__}")


class Spool:
    """Durable local log of answered requests; see the module docstring."""

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES,
                 on_commit: Callable[[float, int], None] | None = None,
                 on_wait: Callable[[float], None] | None = None) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.owner = uuid.uuid4().hex
        self._on_commit = on_commit  # called with (seconds, rows) after each group commit
        self._on_wait = on_wait  # called with the seconds each append waited
        self._cond = threading.Condition()
        self._buffer: list[tuple[str, bytes]] = []
        self._appended = 0
        self._processed = 0  # tickets up to here are committed or failed
        self._failed: list[tuple[int, int, str]] = []  # ticket ranges whose commit failed
        self._closing = False
        self._lock_file: IO[bytes] | None = None
        self._file: IO[bytes] | None = None
        self._size = 0
        self._seq = 0
        self._segments: list[_Segment] = []
        self._where: dict[str, _Segment] = {}
        self._adopted: dict[Path, IO[bytes]] = {}  # dead owners' lock files we hold while replaying
        self._thread: threading.Thread | None = None
        self.commits = 0
        self.skipped = 0

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._lock_file is not None

    def open(self) -> None:
        """Take this process's lock, open the first segment and start the committer."""
        self._closing = False
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = open(self.directory / f"{self.owner}.lock", "wb")  # noqa: SIM115 - held (locked) for the spool's life
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(str(os.getpid()).encode())
        lock.flush()
        self._lock_file = lock
        self._roll()
        self._thread = threading.Thread(target=self._commit_loop, name="thalamus-spool", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Commit what is buffered, stop; delete every segment whose rows are all in the database."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        with self._cond:
            if self._file is not None:
                self._file.close()
                self._file = None
            for segment in self._segments:
                segment.sealed = True
            self._collect()
            left = sum(len(s.ids) for s in self._segments)
            if left:
                log.warning("%d request rows are not in the database yet; they stay in %s for the next start",
                            left, self.directory)
            for lock_path, handle in list(self._adopted.items()):
                self._release_adopted(lock_path, handle)
            if self._lock_file is not None:
                if not self._segments:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._lock_file.name)
                self._lock_file.close()  # drops the flock: a later start adopts what is left
                self._lock_file = None

    # -- producer side -------------------------------------------------------------------------

    def append(self, row: Mapping[str, Any]) -> None:
        """Return once ``row`` is on disk (group-committed with concurrent appends). Raises SpoolError."""
        line = encode(row)
        started = time.perf_counter()
        with self._cond:
            if self._closing or self._thread is None:
                raise SpoolError("the request spool is closed")
            self._buffer.append((str(row["id"]), line))
            self._appended += 1
            ticket = self._appended
            self._cond.notify_all()
            while self._processed < ticket:
                self._cond.wait()
            for first, last, error in self._failed:
                if first <= ticket <= last:
                    raise SpoolError(f"the request spool cannot write to {self.directory}: {error}")
        if self._on_wait is not None:
            self._on_wait(time.perf_counter() - started)

    def release(self, ids: Iterable[str]) -> None:
        """These rows are in the database (or can never be): forget them, delete drained sealed segments."""
        with self._cond:
            for key in ids:
                segment = self._where.pop(str(key), None)
                if segment is not None:
                    segment.ids.discard(str(key))
            self._collect()

    @property
    def depth(self) -> int:
        """Spooled rows not yet released."""
        with self._cond:
            return len(self._where)

    # -- recovery ------------------------------------------------------------------------------

    def recover(self) -> Recovered:
        """Rows of every segment whose owner is dead (its lock is free); they stay until released."""
        rows: list[dict[str, Any]] = []
        segments = skipped = 0
        for lock_path in sorted(self.directory.glob("*.lock")):
            owner = lock_path.stem
            if owner == self.owner:
                continue
            try:
                handle = open(lock_path, "rb+")  # noqa: SIM115 - locked across the replay below, closed in its finally
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live daemon holds it
                handle.close()
                continue
            if not lock_path.exists():  # its last owner deleted it after our open: nothing left
                handle.close()
                continue
            for path in sorted(self.directory.glob(f"{owner}-*.log")):
                segment = _Segment(path, sealed=True)
                read = list(self._read(path))
                skipped += sum(row is None for row in read)
                with self._cond:
                    for row in read:
                        if row is None or str(row["id"]) in self._where:
                            continue
                        segment.ids.add(str(row["id"]))
                        self._where[str(row["id"])] = segment
                        rows.append(row)
                    self._segments.insert(0, segment)
                segments += 1
            with self._cond:
                self._adopted[lock_path] = handle
        with self._cond:
            self.skipped += skipped
            self._collect()
        if segments:
            log.warning("replaying %d request rows from %d spool segment(s) of stopped daemons (%d torn lines skipped)",
                        len(rows), segments, skipped)
        return Recovered(rows, segments, skipped)

    @staticmethod
    def _read(path: Path) -> Iterable[dict[str, Any] | None]:
        with open(path, "rb") as handle:
            for line in handle:
                try:
                    yield decode(line)
                except ValueError as exc:  # json.JSONDecodeError is a ValueError
                    log.warning("skipping a torn or unreadable line in %s: %s", path, exc)
                    yield None

    # -- committer -----------------------------------------------------------------------------

    def _commit_loop(self) -> None:
        while True:
            with self._cond:
                while not self._buffer and not self._closing:
                    self._cond.wait()
                if not self._buffer and self._closing:
                    return
                batch, self._buffer = self._buffer, []
                first, ticket = self._processed + 1, self._appended
            started = time.perf_counter()
            data = b"".join(line for _, line in batch)
            try:
                if self._file is None:  # a previous failure left no open segment
                    with self._cond:
                        self._roll()
                assert self._file is not None
                self._file.write(data)
                self._file.flush()
                os.fdatasync(self._file.fileno())
            except Exception as exc:  # fail these requests; start a fresh segment for the next ones
                log.error("request spool write failed: %s", exc)
                with self._cond:
                    self._failed.append((first, ticket, f"{type(exc).__name__}: {exc}"))
                    self._processed = ticket
                    with contextlib.suppress(Exception):
                        self._roll()  # the old segment may end in a torn line; replay skips it
                    self._cond.notify_all()
                continue
            seconds = time.perf_counter() - started
            with self._cond:
                segment = self._segments[-1]
                for key, _ in batch:
                    segment.ids.add(key)
                    self._where[key] = segment
                self._processed = ticket
                self.commits += 1
                self._size += len(data)
                if self._size >= self.segment_bytes:
                    with contextlib.suppress(Exception):
                        self._roll()
                self._cond.notify_all()
            if self._on_commit is not None:
                self._on_commit(seconds, len(batch))

    def _roll(self) -> None:
        """Seal the current segment and start the next (called with the condition held, or at open)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._segments[-1].sealed = True
        self._seq += 1
        path = self.directory / f"{self.owner}-{self._seq:06d}.log"
        self._file = open(path, "ab")  # noqa: SIM115 - the open segment, closed when it rotates or the spool closes
        self._size = 0
        self._segments.append(_Segment(path))
        fsync_dir(self.directory)
        self._collect()

    def _collect(self) -> None:
        """Delete sealed segments with no unreleased rows; give back dead owners' locks when done."""
        keep = []
        for segment in self._segments:
            if segment.sealed and not segment.ids:
                with contextlib.suppress(FileNotFoundError):
                    segment.path.unlink()
            else:
                keep.append(segment)
        self._segments = keep
        for lock_path, handle in list(self._adopted.items()):
            owner = lock_path.stem
            if not any(s.path.name.startswith(f"{owner}-") for s in self._segments):
                with contextlib.suppress(FileNotFoundError):
                    lock_path.unlink()
                self._release_adopted(lock_path, handle)

    def _release_adopted(self, lock_path: Path, handle: IO[bytes]) -> None:
        handle.close()
        self._adopted.pop(lock_path, None)

