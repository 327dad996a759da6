"""Micro-batching: concurrent single-prompt predictions share forward passes and get their own rows."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from daemon.batcher import MicroBatcher
from daemon.holder import RouterHolder
from daemon.metrics import Metrics


def _slow_lengths(texts: list[str]) -> np.ndarray:
    """A stand-in model for the batching mechanics only: each row is its text's length; 30 ms a pass."""
    time.sleep(0.03)
    return np.array([[float(len(t)), 1.0] for t in texts])


def test_concurrent_callers_share_passes_and_get_their_own_rows() -> None:
    batcher = MicroBatcher(_slow_lengths, max_batch=8)
    texts = ["x" * n for n in range(1, 41)]
    with ThreadPoolExecutor(16) as pool:
        rows = list(pool.map(batcher.predict_one, texts))
    assert [row[0] for row in rows] == [float(len(t)) for t in texts]
    assert batcher.items == 40 and batcher.batches < 40, "concurrent requests should have been batched"


def test_an_error_reaches_every_caller_of_its_batch() -> None:
    def broken(texts: list[str]) -> np.ndarray:
        time.sleep(0.02)
        raise RuntimeError("model exploded")

    batcher = MicroBatcher(broken)
    errors: list[str] = []

    def call(text: str) -> None:
        try:
            batcher.predict_one(text)
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=call, args=(str(i),)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == ["model exploded"] * 6


def test_batched_predictions_match_single_ones_on_a_real_router(settings, served: int) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    holder = RouterHolder(settings, metrics=metrics)
    holder.load_active()
    loaded = holder.current
    prompts = [f"prompt number {i} " + "word " * (i % 7) for i in range(24)]
    alone = np.stack([loaded.router.predict([p])[0] for p in prompts])
    with ThreadPoolExecutor(8) as pool:
        together = np.stack([row[0] for row in pool.map(lambda p: loaded.predict([p]), prompts)])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert loaded.batcher.items == 24  # the warm-up ran on the router directly, not through the batcher
    assert "thalamus_route_batch_size_count" in metrics.render().decode()
