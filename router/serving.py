"""Load a router bundle exactly as a daemon serves it.

One function for the daemon's hot-swap and for the checks at registration and activation, so a
version that passed the check is one that a daemon can load: the bundle verified against its
checksum and expert order, a warm-up prediction that is finite, and the constraint matrix built
from the experts' attributes.

A bundle with an ONNX export (:mod:`router.export`) is served by :class:`router.inference.OnnxRouter`,
which needs no torch; one without it (registered before exports, or with the export turned off) by
the PyTorch :class:`router.model.Router`. ``inference="torch"`` forces the PyTorch path (the
baseline of ``thalamus bench serve``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # torch loads only when a bundle without an export is loaded
    from router.inference import OnnxRouter
    from router.model import Router

log = logging.getLogger(__name__)

Inference = Literal["auto", "torch"]
INFERENCE_CHOICES: tuple[Inference, ...] = ("auto", "torch")

WARMUP_PROMPT = "warm-up: route this prompt once before serving"


def constraints_for(attributes: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The (E, C) constraint matrix of the experts in head order, read-only; ValueError if unusable."""
    from router.constraints import constraint_matrix

    matrix = np.array(constraint_matrix([dict(a) for a in attributes]), dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != len(attributes) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"constraint matrix has shape {matrix.shape} or non-finite values")
    matrix.setflags(write=False)
    return matrix


def load_for_serving(directory: Path, sha256: str, expert_order: Sequence[str],
                     attributes: Sequence[Mapping[str, Any]], inference: Inference = "auto",
                     threads: int = 0) -> tuple[Router | OnnxRouter, np.ndarray]:
    """(router, constraints) of a verified, warmed-up bundle; raises on anything a daemon would refuse.

    ``threads``: intra-op threads of the ONNX path (0 = one per core); the PyTorch path keeps torch's own setting.
    """
    from router.checkpoint import load_bundle, verify_bundle
    from router.inference import OnnxRouter, has_export

    directory = Path(directory)
    order = tuple(str(name) for name in expert_order)
    router: Router | OnnxRouter | None = None
    if inference == "auto" and has_export(directory):
        verify_bundle(directory, expected_sha256=sha256, expected_experts=list(order))
        try:
            router = OnnxRouter.load(directory, threads=threads)
        except Exception as exc:  # e.g. no onnxruntime here, or one too old for the graph: PyTorch still can
            log.warning("bundle %s: its ONNX export cannot be served here (%s); serving it with PyTorch",
                        directory, exc)
    if router is None:
        router = load_bundle(directory, expected_sha256=sha256, expected_experts=list(order))
    names = tuple(str(name) for name in router.expert_names)
    if names != order:
        raise ValueError(f"bundle expert order {list(names)} differs from the version row's {list(order)}")
    warm = np.asarray(router.predict([WARMUP_PROMPT]))
    if warm.shape != (1, len(names)) or not np.all(np.isfinite(warm)):
        raise ValueError(f"warm-up prediction has shape {warm.shape} or non-finite values")
    return router, constraints_for(attributes)


def inference_of(router: Router | OnnxRouter) -> str:
    """How a loaded router computes its predictions, as ``/v1/status`` reports it."""
    return str(getattr(router, "inference", "torch"))
