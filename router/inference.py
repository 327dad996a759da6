"""The daemon's inference path: a bundle's ONNX export served by ONNX Runtime, without torch.

:mod:`router.export` writes ``inference.onnx`` (token ids → pooled embedding and the parametric
head's normalised output) when a version is registered; this module serves it. The rest of the
router's forward pass is reproduced in numpy: the neighbour head over the bundle's memory, the
blend with the parametric head, the normalisation, and the calibrated spread
(:class:`router.model.Router` is the reference; the export's check compares the two).

Prompts are tokenized by the bundle's own fast tokenizer (``tokenizers``, the library
``transformers`` wraps) and run in length-sorted chunks, so a micro-batch pads little.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router.checkpoint import WEIGHTS
from router.neighbours import (
    EXACT_UP_TO,
    NeighbourIndex,
    neighbour_mean,
    neighbour_mean_std,
    neighbour_sums,
    shrunk_mean,
)

FILE = "inference.onnx"
"""The export's file in a bundle (written by router/export.py)."""
_BUFFERS = ("loss_mean", "loss_std", "memory_keys", "memory_losses", "spread_scale", "spread_floor")


def has_export(directory: Path) -> bool:
    """True when the bundle at ``directory`` carries an ONNX export (bundles registered before it do not)."""
    return (Path(directory) / FILE).is_file()


class OnnxRouter:
    """Predicts every expert's loss (and its spread) for prompts, as :class:`router.model.Router` does."""

    def __init__(self, config: dict[str, Any], buffers: dict[str, np.ndarray], tokenizer: Any, session: Any, *,
                 precision: str, pad_id: int = 0, batch_size: int = 32, exact_neighbours: bool = False) -> None:
        self.config = config
        self.expert_names: list[str] = [str(name) for name in config["expert_names"]]
        self.loss_mean = np.asarray(buffers["loss_mean"], dtype=np.float32)
        self.loss_std = np.asarray(buffers["loss_std"], dtype=np.float32)
        keys = np.asarray(buffers.get("memory_keys", np.zeros((0, 0), dtype=np.float16)))
        self.memory_losses = np.asarray(buffers.get("memory_losses", np.zeros((0, len(self.expert_names)))),
                                        dtype=np.float32)
        self.spread_scale = np.asarray(buffers.get("spread_scale", np.full(len(self.expert_names), np.nan)),
                                       dtype=np.float32)
        self.spread_floor = np.asarray(buffers.get("spread_floor", np.zeros(len(self.expert_names))),
                                       dtype=np.float32)
        self._k_head = int(config.get("head_neighbors", 0) or 0)
        self._k_spread = int(config.get("spread_neighbors", 0) or 0)
        self._blend = float(config.get("head_blend", 0.0) or 0.0)
        self._shrink = float(config.get("head_shrink", 0.0) or 0.0)
        self.index = None
        if keys.shape[0] > 0 and (self._k_head or self._k_spread):
            self.index = NeighbourIndex.build(keys, exact_up_to=keys.shape[0] if exact_neighbours else EXACT_UP_TO)
        self._tokenizer = tokenizer
        self._session = session
        self._pad_id = pad_id
        self.precision = precision
        # int8 quantises activations with one scale per batch, so a prompt's prediction would move with
        # its micro-batch neighbours (by up to 2e-4 here): a decision, and an exploration draw replayed from
        # (prompt, request id), must not depend on concurrent traffic. One prompt per run at int8 (which
        # cost no more per prompt than batches of 32 on this CPU: 13.5 vs 16.2 ms); fp32 batches.
        self.batch_size = 1 if precision == "int8" else batch_size

    @classmethod
    def load(cls, directory: Path, threads: int = 0, batch_size: int = 32, precision: str | None = None,
             exact_neighbours: bool | None = None) -> OnnxRouter:
        """The bundle's export, ready to serve. Does not verify checksums: :mod:`router.serving` does that first.

        ``threads``: ONNX Runtime's intra-op threads (0 = one per core). Its threads do not spin
        while idle, since on a small machine they would take the CPU from the HTTP workers.
        """
        import onnxruntime
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        directory = Path(directory)
        config = json.loads((directory / "config.json").read_text())
        if precision is None or exact_neighbours is None:  # as the export's check chose them
            record = json.loads((directory / "manifest.json").read_text()).get("inference") or {}
            precision = precision or str(record.get("precision", "unknown"))
            exact_neighbours = bool(exact_neighbours) if exact_neighbours is not None \
                else record.get("neighbours") == "exact"
        buffers = {k: v for k, v in load_file(str(directory / WEIGHTS)).items() if k in _BUFFERS}
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer" / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=int(config.get("max_length", 128)))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(0, int(threads))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = onnxruntime.InferenceSession(str(directory / FILE), options, providers=_providers(onnxruntime))
        return cls(config, buffers, tokenizer, session, precision=precision, pad_id=_pad_id(directory, tokenizer),
                   batch_size=batch_size, exact_neighbours=exact_neighbours)

    @property
    def inference(self) -> str:
        """What serves the predictions, for ``/v1/status``: e.g. ``onnx-int8``, ``onnx-fp32 (faiss-ivf)``."""
        search = self.index.kind if self.index is not None else None
        return f"onnx-{self.precision}" + (f" ({search})" if search and search != "exact" else "")

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Predicted losses (N, E), float32."""
        return self.predict_stacked(texts)[:, :len(self.expert_names)]

    def predict_stacked(self, texts: Sequence[str]) -> np.ndarray:
        """Predicted losses and their spreads side by side, (N, 2E), as Router.predict_stacked."""
        n = len(self.expert_names)
        if not texts:
            return np.zeros((0, 2 * n), dtype=np.float32)
        pooled, head = self._encode([str(t) for t in texts])
        # one search for both: the spread's neighbours are a prefix of the head's (or the reverse)
        k = max(self._k_head, self._k_spread)
        nearest = None
        if self.index is not None and k > 0:
            with _BLAS_LOCK, _one_blas_thread():  # the limit is process-wide: one search sets it at a time
                nearest = self.index.search(pooled, k)
        return np.concatenate([self._losses(head, nearest), self._spread(nearest, len(texts))],
                              axis=1).astype(np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Pooled embeddings (N, D): the neighbour head's input."""
        return self._encode([str(t) for t in texts])[0]

    # -- the stages --------------------------------------------------------------------------------

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        pooled: list[np.ndarray] = []
        heads: list[np.ndarray] = []
        for start in range(0, len(order), self.batch_size):
            chunk = [encodings[i].ids for i in order[start:start + self.batch_size]]
            width = max(len(ids) for ids in chunk)
            ids = np.full((len(chunk), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, tokens in enumerate(chunk):
                ids[row, :len(tokens)] = tokens
                mask[row, :len(tokens)] = 1
            out = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
            pooled.append(np.asarray(out[0], dtype=np.float32))
            heads.append(np.asarray(out[1], dtype=np.float32))
        restore = np.empty(len(order), dtype=np.int64)
        restore[np.asarray(order)] = np.arange(len(order))
        return np.concatenate(pooled)[restore], np.concatenate(heads)[restore]

    def _losses(self, head: np.ndarray, nearest: np.ndarray | None) -> np.ndarray:
        out = head
        if self._k_head > 0 and nearest is not None and self._shrink > 0:
            total, count = neighbour_sums(self.memory_losses, nearest[:, :self._k_head])
            total = (total - count * self.loss_mean) / self.loss_std  # normalised units, as Router.normalized
            out = shrunk_mean(total, count, head, self._shrink)
        elif self._k_head > 0 and nearest is not None:
            near = neighbour_mean(self.memory_losses, nearest[:, :self._k_head])
            near = (near - self.loss_mean) / self.loss_std
            if self._blend > 0:
                near = (1.0 - self._blend) * near + self._blend * head
            out = np.where(np.isnan(near), head, near)
        return out * self.loss_std + self.loss_mean

    def _spread(self, nearest: np.ndarray | None, rows: int) -> np.ndarray:
        n = len(self.expert_names)
        if self._k_spread <= 0 or nearest is None:
            return np.full((rows, n), np.nan, dtype=np.float32)
        _, dispersion = neighbour_mean_std(self.memory_losses, nearest, [self._k_spread])[0]
        return self.spread_scale * np.maximum(dispersion, self.spread_floor)


_BLAS_LOCK = threading.Lock()


@functools.cache
def _blas() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_blas_thread() -> Any:
    """The exact scan on one BLAS thread. It is one matrix-vector product per prompt, bound by memory:
    a second OpenBLAS thread gained nothing and its spinning doubled the CPU per request (measured on
    the bench serve router, 5,489 × 1,152 memory: 39 → 20 CPU ms per single prompt, encoder 18)."""
    return _blas().limit(limits=1, user_api="blas")


def _providers(onnxruntime: Any) -> list[str]:
    """CUDA where this ONNX Runtime build has it (onnxruntime-gpu, not a dependency), else the CPU. The
    export's check ran where the training job ran; a daemon on another kind of machine serves the same
    graph on its own provider without checking it again."""
    available = onnxruntime.get_available_providers()
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available \
        else ["CPUExecutionProvider"]


def _pad_id(directory: Path, tokenizer: Any) -> int:
    """The pad token's id, from the tokenizer's config (the fast tokenizer file may not name it)."""
    path = directory / "tokenizer" / "tokenizer_config.json"
    token = json.loads(path.read_text()).get("pad_token") if path.is_file() else None
    if isinstance(token, dict):
        token = token.get("content")
    found = tokenizer.token_to_id(str(token)) if token else None
    return int(found) if found is not None else 0
