"""Encoder features of a frozen backbone, remembered per process (a bounded LRU).

A head-only router (``lora_r == 0``) predicts from pooled states of the unchanged backbone: they
depend on the backbone, the max length, which states are pooled and how, and the prompt, never on
training. A worker that retrains on a growing loss table every cycle would otherwise encode every
prompt again each time, and then again to evaluate the candidate, the active router and the
off-policy direct model: that was ~80 % of a training cycle of ``bench loop`` on dcrouter
(py-spy, docs/benchmarks.md). A LoRA router's upper layers change with training, so its pooled
states are never cached (its lower stage is cached within one training run, router/training.py).

Rows are float32, as computed, so a cached prediction is the uncached one (batch padding aside,
~1e-7). The bound is in bytes (``MAX_BYTES``); the least recently used rows go first.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import numpy as np

MAX_BYTES = 256 * 1024 * 1024
"""About 58k prompts of MiniLM pooled over 3 states (4.6 kB each)."""


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class FeatureCache:
    """``get(space, texts, compute)``: rows of ``compute(missing texts)`` remembered under ``space``."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._rows: OrderedDict[tuple[Hashable, bytes], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, space: Hashable, texts: Sequence[str],
            compute: Callable[[Sequence[str]], np.ndarray]) -> np.ndarray:
        """(N, D) float32 features of ``texts``; only the ones not remembered under ``space`` are computed."""
        keys = [(space, _digest(str(t))) for t in texts]
        found: dict[int, np.ndarray] = {}
        with self._lock:
            for i, key in enumerate(keys):
                row = self._rows.get(key)
                if row is not None:
                    self._rows.move_to_end(key)
                    found[i] = row
        missing = [i for i in range(len(keys)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            first: dict[tuple[Hashable, bytes], int] = {}  # each distinct missing key, at its first position
            for i in missing:
                first.setdefault(keys[i], i)
            computed = np.asarray(compute([str(texts[i]) for i in first.values()]), dtype=np.float32)
            fresh = dict(zip(first, computed, strict=True))
            for i in missing:
                found[i] = fresh[keys[i]]
            self._remember(fresh)
        if not found:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[i] for i in range(len(keys))])

    def _remember(self, rows: dict[tuple[Hashable, bytes], np.ndarray]) -> None:
        with self._lock:
            for key, row in rows.items():
                row = np.array(row, dtype=np.float32)  # a copy: not a view that pins the computed batch
                row.setflags(write=False)
                old = self._rows.pop(key, None)
                if old is not None:
                    self._bytes -= old.nbytes
                self._rows[key] = row
                self._bytes += row.nbytes
            while self._bytes > self.max_bytes and self._rows:
                _, evicted = self._rows.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self._bytes = 0


FEATURES = FeatureCache()
"""The process's cache, shared by every head-only router on the same backbone."""
