"""Export what inference needs into a router bundle: the encoder and head as an ONNX Runtime model.

At registration the router's encoder (LoRA merged in) and its parametric head are exported to ONNX
with two outputs, the pooled embedding (the neighbour head's and the spread's input) and the head's
normalised predictions; the rest of inference (neighbours, blending, spread) is a few numpy lines
in :mod:`router.inference`. The precision is chosen by measurement at every export: int8 dynamic
quantisation of the weights first (measured 1.7-2× faster than fp32 on this CPU, docs/benchmarks.md),
fp32 when int8 fails the check, and, for a memory large enough to be searched by an approximate
index (router/neighbours.py), fp32 with the exact scan last. The check serves the exported model
exactly as a daemon would (:class:`router.inference.OnnxRouter` on the written files) and compares it with the PyTorch
router on held-out prompts: the largest absolute difference of predicted losses, the share of spreads
within the same tolerance (a neighbour statistic, which may jump where neighbours are nearly tied) and the
share of prompts whose argmin expert is the same. A bundle whose export fails the check at every precision is not
written (:class:`ExportCheckFailed`), so it is never registered.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from router.inference import FILE

if TYPE_CHECKING:
    from router.model import Router

PRECISIONS = ("int8", "fp32")
SEARCHES = ("index", "exact")
"""``index``: the memory's :class:`router.neighbours.NeighbourIndex` (exact up to its threshold, approximate
beyond); ``exact``: always the exact scan, slower on a large memory but the PyTorch head's own answers."""
OPSET = 17
MIN_AGREEMENT = 0.99
"""Share of check prompts whose argmin expert the export must reproduce."""
MAX_DIFF_SCALE = 0.25
"""Largest tolerated |exported − PyTorch| predicted loss, in units of the router's loss scale."""
MIN_SPREADS_WITHIN = 0.99
"""Share of check spreads (prompt × expert) the export must reproduce within the tolerance. A spread is
the dispersion of the nearest memory prompts' losses: where two memory prompts are nearly equidistant a
rounding difference swaps a neighbour and the spread jumps by a whole loss (binary losses: 0 → 0.5), so
requiring every spread within the tolerance failed faithful fp32 exports (``bench loop``: one of 272 check
prompts, a spread of 4.29 against 0.40, every predicted loss within 0.02, and the training job failed)."""
CHECK_PROMPTS = (
    "Write a Python function that returns the n-th Fibonacci number.",
    "What is the capital of Australia?",
    "Summarise the plot of Hamlet in two sentences.",
    "Translate 'good morning' into French and German.",
    "Solve for x: 3x + 7 = 22.",
    "Explain the difference between TCP and UDP.",
    "def parse(line): return [int(x) for x in line.split(',')]",
    "The party of the first part shall indemnify the party of the second part against all claims.",
    "List three causes of the French Revolution.",
    "How do I configure logging in a Flask application?",
    "Q: A train travels 120 km in 1.5 hours. What is its average speed? A:",
    "Is the following sentence sarcastic? 'Oh great, another Monday.'",
    "Compose a haiku about autumn rain.",
    "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 3;",
    "What are the side effects of ibuprofen?",
    "Give me a regular expression that matches an ISO 8601 date.",
)
"""Prompts the check always includes, beside the caller's held-out prompts: varied kinds and lengths."""


class ExportCheckFailed(RuntimeError):
    """The exported model does not reproduce the PyTorch router at any precision."""


@dataclasses.dataclass(frozen=True)
class ExportCheck:
    """How one exported precision compared with the PyTorch router on the check prompts."""

    precision: str
    neighbours: str
    prompts: int
    max_abs_diff: float
    agreement: float
    seconds_per_prompt: float  # the exported path's, measured during the check
    passed: bool
    error: str | None = None  # the step raised instead of answering
    spreads_within: float = 1.0  # share of the spreads within the tolerance (see MIN_SPREADS_WITHIN)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def export_inference(router: Router, directory: Path, check_prompts: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``directory/inference.onnx`` for ``router`` and return what the manifest records of it.

    Tries each (precision, neighbour search) of :func:`_options` in order and keeps the first that passes
    the check; a step that raises (a quantiser or ONNX Runtime error) counts as a failed try. Raises
    :class:`ExportCheckFailed`, leaving no file, when none passes.
    """
    directory = Path(directory)
    prompts = list(dict.fromkeys([*CHECK_PROMPTS, *(str(p) for p in check_prompts)]))
    expected = router.predict_stacked(prompts)  # losses and spreads: the check compares both
    scale = float(router.loss_std.mean()) if router.loss_std.numel() else 1.0
    tolerance = MAX_DIFF_SCALE * (scale if np.isfinite(scale) and scale > 0 else 1.0)
    fp32 = directory / ".inference-fp32.onnx"
    target = directory / FILE
    checks: list[ExportCheck] = []
    try:
        _export_fp32(router, fp32)
        for precision, search in _options(router):
            try:
                if precision == "int8":
                    _quantize_int8(fp32, target)
                else:
                    shutil.copyfile(fp32, target)
                check = _check(directory, router, prompts, expected, precision, search, tolerance)
            except Exception as exc:  # this precision cannot be served here: try the next
                check = ExportCheck(precision, search, len(prompts), float("nan"), 0.0, 0.0, False,
                                    error=f"{type(exc).__name__}: {exc}"[:300])
            checks.append(check)
            if check.passed:
                return {"file": FILE, "format": "onnx", "precision": precision, "neighbours": search,
                        "opset": OPSET, "tolerance": tolerance, "min_agreement": MIN_AGREEMENT,
                        "check": check.as_dict(), "tried": [c.as_dict() for c in checks]}
            target.unlink(missing_ok=True)
    finally:
        fp32.unlink(missing_ok=True)
    summary = "; ".join(f"{c.precision}/{c.neighbours}: " + (c.error or f"agreement {c.agreement:.3f}, "
                                                             f"max |Δ loss| {c.max_abs_diff:.4f}, spreads within "
                                                             f"{c.spreads_within:.3f}") for c in checks)
    raise ExportCheckFailed(f"the exported router does not reproduce the PyTorch router on {len(prompts)} prompts "
                            f"(needs agreement ≥ {MIN_AGREEMENT}, max |Δ loss| ≤ {tolerance:.4f} and "
                            f"{MIN_SPREADS_WITHIN:.0%} of spreads within it): {summary}")


class _Exportable(torch.nn.Module):
    """The graph to export: token ids and mask → (pooled embedding, the head's normalised output)."""

    def __init__(self, router: Router) -> None:
        super().__init__()
        self.router = router

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.router.upper(self.router.lower(input_ids, attention_mask), attention_mask)
        return pooled, self.router.head_normalized(pooled)


def _options(router: Router) -> list[tuple[str, str]]:
    """(precision, neighbour search) to try in order; the exact scan is a separate try only where the
    index would be approximate."""
    from router.neighbours import EXACT_UP_TO

    uses_memory = router.memory_keys.shape[0] > 0 and (router.config.head_neighbors > 0
                                                       or router.config.spread_neighbors > 0)
    options = [(precision, "index") for precision in PRECISIONS]
    if uses_memory and router.memory_keys.shape[0] > EXACT_UP_TO:
        options.append(("fp32", "exact"))
    return options


def _merged_copy(router: Router) -> Router:
    """A copy of ``router`` with every LoRA adapter merged into its base weights (same outputs, fewer ops)."""
    merged = copy.deepcopy(router)
    for module in merged.modules():
        merge: Any = getattr(module, "merge", None)
        if hasattr(module, "lora_A") and callable(merge):
            merge()
    return merged.eval()


def _export_fp32(router: Router, path: Path) -> None:
    import warnings

    model = _Exportable(_merged_copy(router)).eval()
    sample = router.tokenize(["an example prompt for the export", "short"])
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "pooled": {0: "batch"}, "head": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(model, (sample["input_ids"], sample["attention_mask"]), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=["pooled", "head"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)


def _quantize_int8(source: Path, target: Path, **options: Any) -> None:
    """int8 dynamic quantisation of the weights, per channel unless ``options`` say otherwise."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "consider pre-processing" advice is logged on the root logger
    try:
        quantize_dynamic(str(source), str(target), **{"weight_type": QuantType.QInt8, "per_channel": True, **options})
    finally:
        quiet.setLevel(level)


def _check(directory: Path, router: Router, prompts: list[str], expected: np.ndarray, precision: str,
           search: str, tolerance: float) -> ExportCheck:
    from router.inference import OnnxRouter

    exported = OnnxRouter.load(directory, precision=precision, exact_neighbours=search == "exact")
    exported.predict_stacked(prompts[:1])  # the session's first run is slower: not part of the timing
    start = time.perf_counter()
    actual = exported.predict_stacked(prompts)
    seconds = (time.perf_counter() - start) / max(1, len(prompts))
    diff, spreads_within, agreement, passed = compare_outputs(expected, actual, len(router.expert_names), tolerance)
    return ExportCheck(precision, search, len(prompts), round(diff, 6), round(agreement, 4), round(seconds, 5),
                       passed, spreads_within=round(spreads_within, 4))


def compare_outputs(expected: np.ndarray, actual: np.ndarray, n_experts: int,
                    tolerance: float) -> tuple[float, float, float, bool]:
    """(max |Δ| of the predicted losses, share of spreads within ``tolerance``, argmin agreement, passed) of
    two (N, 2E) :meth:`Router.predict_stacked` outputs. Passes when both have NaN in the same places, every
    predicted loss is within ``tolerance``, at least :data:`MIN_SPREADS_WITHIN` of the spreads are, and
    at least :data:`MIN_AGREEMENT` of the argmins agree."""
    expected, actual = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    same_nan = bool(np.array_equal(np.isfinite(expected), np.isfinite(actual)))
    losses, spreads = slice(0, n_experts), slice(n_experts, None)
    gap = np.abs(actual - expected)
    finite = np.isfinite(gap)
    loss_gap = gap[:, losses][finite[:, losses]]
    diff = float(loss_gap.max()) if loss_gap.size else 0.0
    spread_gap = gap[:, spreads][finite[:, spreads]]
    within = float(np.mean(spread_gap <= tolerance)) if spread_gap.size else 1.0
    agreement = float(np.mean(np.argmin(actual[:, losses], axis=1) == np.argmin(expected[:, losses], axis=1))) \
        if expected.shape[0] else 1.0
    passed = same_nan and diff <= tolerance and within >= MIN_SPREADS_WITHIN and agreement >= MIN_AGREEMENT
    return diff, within, agreement, passed
