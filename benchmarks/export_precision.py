"""Which precision can the ONNX export serve at? ``python -m benchmarks.export_precision --home H``.

For the active router version of a THALAMUS_HOME (any trained home), re-exports the version's fp32
graph, quantises it in several ways (onnxruntime.quantization.quantize_dynamic) and reports, on a
dataset's test prompts, each variant's decision agreement and largest |Δ predicted loss| against
the PyTorch router, and its CPU milliseconds per prompt (batches of 32). ``router/export.py`` makes
the same comparison (int8, then fp32) at every registration; this shows the alternatives it skips.
It also prints the prompts' token counts under the router's tokenizer (what the encoder's cost follows).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from router.model import Router


def _active_bundle(home: Path) -> tuple[Path, str, list[str]]:
    """The active router version's bundle directory, sha256 and expert order in ``home``."""
    from store.db import session_scope
    from store.queries import active_router_version
    from store.settings import Settings

    with session_scope(Settings(home=home)) as session:
        version = active_router_version(session)
        if version is None:
            raise SystemExit(f"no active router version in {home}")
        return Path(version.checkpoint_uri), version.checkpoint_sha256, list(version.expert_order)


def run(home: Path, dataset: Path, prompts_limit: int = 300) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """One row per variant (PyTorch last), and the prompts' :func:`token_counts`."""
    from benchmarks.data import load_dataset
    from router.export import _export_fp32, _quantize_int8
    from router.inference import FILE, OnnxRouter
    from router.model import Router
    from router.serving import load_for_serving

    uri, sha, order = _active_bundle(home)
    _, test, _ = load_dataset(dataset)
    prompts = [p for p in test.prompts if p.strip()][:prompts_limit]
    torch_router, _ = load_for_serving(uri, sha, order, [{}] * len(order), inference="torch")
    assert isinstance(torch_router, Router)  # inference="torch"
    expected = torch_router.predict(prompts)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="thalamus-precision-") as tmp:
        work = Path(tmp) / "bundle"
        shutil.copytree(uri, work)
        fp32 = Path(tmp) / "fp32.onnx"
        _export_fp32(torch_router, fp32)
        variants: dict[str, dict[str, Any] | None] = {
            "fp32": None,
            "int8 per-channel (the export's int8)": {"per_channel": True},
            "int8 per-tensor": {"per_channel": False},
            "int8 per-channel, MatMul only": {"per_channel": True, "op_types_to_quantize": ["MatMul"]},
        }
        for name, options in variants.items():
            if options is None:
                shutil.copyfile(fp32, work / FILE)
            else:
                _quantize_int8(fp32, work / FILE, **options)
            served = OnnxRouter.load(work, precision=name, exact_neighbours=True)
            served.predict(prompts[:8])
            started = time.process_time()
            got = served.predict(prompts)
            cpu = time.process_time() - started
            rows.append({"variant": name, "prompts": len(prompts),
                         "agreement": round(float(np.mean(got.argmin(1) == expected.argmin(1))), 4),
                         "max_abs_diff": round(float(np.nanmax(np.abs(got - expected))), 4),
                         "cpu_ms_per_prompt": round(1000 * cpu / len(prompts), 2)})
    started = time.process_time()
    torch_router.predict(prompts)
    rows.append({"variant": "PyTorch (reference)", "prompts": len(prompts), "agreement": 1.0, "max_abs_diff": 0.0,
                 "cpu_ms_per_prompt": round(1000 * (time.process_time() - started) / len(prompts), 2)})
    return rows, token_counts(torch_router, prompts)


def token_counts(router: Router, prompts: list[str]) -> dict[str, float]:
    """Median, p90 and the share cut at the router's max length, of the prompts' token counts (untruncated)."""
    counts = np.asarray([len(ids) for ids in router.tokenizer(prompts)["input_ids"]])
    limit = router.config.max_length
    return {"median": float(np.median(counts)), "p90": float(np.percentile(counts, 90)), "max_length": limit,
            "share_cut": round(float(np.mean(counts >= limit)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--dataset", type=Path, default=Path("../shared/data/dcrouter"))
    parser.add_argument("--prompts", type=int, default=300)
    args = parser.parse_args()
    print("| variant | prompts | decision agreement | max abs diff | CPU ms / prompt |\n|---|---|---|---|---|")
    rows, counts = run(args.home, args.dataset, args.prompts)
    for row in rows:
        print(f"| {row['variant']} | {row['prompts']} | {row['agreement']} | {row['max_abs_diff']} | "
              f"{row['cpu_ms_per_prompt']} |")
    print(f"prompt tokens: median {counts['median']:g}, p90 {counts['p90']:g}; {counts['share_cut']:.1%} reach "
          f"the max length {counts['max_length']}")


if __name__ == "__main__":
    main()
