"""Export the demo expert library as a routing dataset that ``thalamus bench quality`` reads.

Every expert of the library scores every ``traffic`` prompt (the router's training rows: no
expert learnt from them) and every ``heldout`` prompt (the test rows) with its deterministic MLM
loss. The files are the generic JSONL shape (``prompt, expert, loss``) plus ``models.json`` with
each expert's parameter count, so the benchmark treats the demo library like any other dataset.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experts.demo import DemoLibrary
from experts.local import LocalExpert

Progress = Callable[[float, str], None]
SPLITS: dict[str, str] = {"train": "traffic", "test": "heldout"}
"""Dataset file stem → demo prompt split."""


def export_demo_dataset(library: DemoLibrary, out_dir: Path, progress: Progress | None = None,
                        batch_size: int = 64) -> dict[str, int]:
    """Write ``train.jsonl``, ``test.jsonl`` and ``models.json`` into ``out_dir``; returns row counts.

    Files are written to temporary names and renamed, so a failed export leaves no half file.
    """
    say = progress or (lambda fraction, message: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    experts = [LocalExpert.load(e["name"], e["kind"], e["uri"]) for e in library.experts]
    prompts = {stem: [r["prompt"] for r in library.prompts(split)] for stem, split in SPLITS.items()}
    total = sum(len(p) for p in prompts.values()) * len(experts) or 1
    done = 0
    counts: dict[str, int] = {}
    for stem, texts in prompts.items():
        rows: list[dict[str, Any]] = []
        for expert in experts:
            for start in range(0, len(texts), batch_size):
                chunk = texts[start:start + batch_size]
                rows += [{"prompt": p, "expert": expert.name, "loss": round(float(x), 6)}
                         for p, x in zip(chunk, expert.losses(chunk), strict=True)]
                done += len(chunk)
                say(done / total, f"{stem}: {expert.name} {start + len(chunk)}/{len(texts)}")
        _write_atomic(out_dir / f"{stem}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        counts[stem] = len(rows)
    models = {e["name"]: {"params": e["attributes"]["params"] / 1e9} for e in library.experts}
    _write_atomic(out_dir / "models.json", json.dumps(models, indent=2))
    return counts


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
