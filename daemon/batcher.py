"""Micro-batching of concurrent routing requests, without a thread of its own.

Each caller queues its prompt and takes the model lock; whoever holds the lock runs one forward
pass for everything queued so far (up to ``max_batch``) and hands each caller its row. Under no
load a request is a batch of one; under load, requests that arrive during a forward pass share
the next one instead of waiting for one pass each.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence

import numpy as np


class _Slot:
    __slots__ = ("done", "error", "result", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False


class MicroBatcher:
    """Coalesces concurrent single-prompt predictions into batched calls of ``predict``."""

    def __init__(self, predict: Callable[[list[str]], np.ndarray], max_batch: int = 32,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._predict, self._max, self._on_batch = predict, max_batch, on_batch
        self._model_lock = threading.Lock()  # one forward pass at a time: tokenizers are not re-entrant
        self._queue_lock = threading.Lock()
        self._waiting: collections.deque[_Slot] = collections.deque()
        self.batches = 0
        self.items = 0

    @property
    def busy(self) -> bool:
        """A forward pass is running or a request waits for one (the shadow thread yields to it)."""
        return self._model_lock.locked() or bool(self._waiting)

    def predict_many(self, texts: Sequence[str]) -> np.ndarray:
        """One serialised call for a caller that already has a batch."""
        with self._model_lock:
            return np.asarray(self._predict(list(texts)))

    def predict_one(self, text: str) -> np.ndarray:
        """The prediction row for ``text``, computed alone or together with concurrent callers."""
        slot = _Slot(text)
        with self._queue_lock:
            self._waiting.append(slot)
        while not slot.done:
            with self._model_lock:
                if not slot.done:
                    self._run_batch()
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    def _run_batch(self) -> None:
        with self._queue_lock:
            batch = [self._waiting.popleft() for _ in range(min(self._max, len(self._waiting)))]
        if not batch:
            return
        try:
            out = np.asarray(self._predict([slot.text for slot in batch]))
            if out.shape[0] != len(batch):
                raise RuntimeError(f"predict returned {out.shape[0]} rows for {len(batch)} prompts")
            for slot, row in zip(batch, out, strict=True):
                slot.result = row
        except BaseException as exc:
            for slot in batch:
                slot.error = exc
        finally:
            for slot in batch:
                slot.done = True
            self.batches += 1
            self.items += len(batch)
            if self._on_batch is not None:
                self._on_batch(len(batch))
