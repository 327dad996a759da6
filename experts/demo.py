"""The demo expert library, built offline and deterministically from text every Python install has.

Three domains (see ``experts.corpus``) give three small domain experts and one three times larger
generalist, all GPT-2 causal-LMs, plus the smallest expert, a tiny ``BertForMaskedLM`` generalist
(what ``[Flag: smallest model]`` picks), so both expert kinds go through scoring and inference.
All share one WordPiece vocabulary trained here. Prompts are split by hash into ``train`` (the
experts learn from it), ``traffic`` (for demo requests; no expert saw it) and ``heldout``
(evaluation only: neither the experts nor the router ever learn from it). The library is written
to a temp dir and renamed into place; a build with the same spec (seed, sizes, steps) and build
version returns the existing one.

Why the earlier library's experts (build 4: four masked-LMs) differed by only ~0.04 nats: every one
sat on the masked-LM's unigram plateau (held-out loss ≈ 5.6 nats, the token-frequency entropy).
A masked position carries no token, so until attention learns to read the neighbours a masked-LM
can only predict token frequencies, and a few hundred steps from scratch never got past that;
token frequencies of the three domains, over one shared vocabulary, differ too little for a
specialist to gain much. Measured here (vocabulary 2,000): a 64-wide masked-LM code specialist
after 400 steps scores 5.51 nats on code, a 128-wide masked-LM generalist after 300 steps 5.46.
A causal-LM learns bigram statistics from its first steps (the position before the target holds
the previous token): a 64-wide GPT-2 trained 300 steps on code reaches 4.16 on code, on licences
3.09 on licences. Causal specialists beat a masked-LM generalist off their domain too (code
specialist on docs: 4.89 against 5.35), so the generalist is a causal-LM as well, and
``SPECIALIST_MARGIN`` is checked on the held-out matrix. Build 5 (vocabulary 2,000, 64×2
specialists and a 128×4 generalist, 300 steps each) met it for legal only (legal −0.50 nats, docs
−0.07, code +0.10 against the generalist) and took ≈ 270 CPU s.

Build 6 (docs/benchmarks.md, "Demo library build 6"). At these budgets no model is near converged
and held-out loss depends on the number of steps far more than on size or on which domain the
steps came from: after 200 steps on the mix (vocabulary 1,000) a 96×2 and a 128×4 generalist score
alike on code (3.97 and 3.97 nats); after 300 (vocabulary 2,000) a 96×2 generalist scores 4.13 on
code, better than a 64×2 specialist after 300 steps of code alone (4.16). Code and docs share much
(the docs topics are full of code), so a generalist given as many steps as a specialist loses
little on their domains for seeing a third of each. The premise holds under the budget story a
demo can defend: every expert gets about the same training compute. The generalist has three times
the parameters (128×2), so a step costs it about twice a specialist's (0.27 s against 0.13 s, one
thread); 150 steps on the mix take a little less CPU than a specialist's 400, i.e. 50 steps' worth
per domain against 400. More steps help the specialists (code, vocabulary 1,000: 3.91 after 250
steps, 3.66 after 400; a rate of 6e-3 instead of 3e-3 is worse, 3.78). Vocabulary 1,500: a 64×2
step costs 0.10 s with 1,000, 0.13 with 1,500, 0.14 with 2,000; 1,000 cuts the per-token margins
by a quarter (code 0.39 instead of 0.52: more, easier tokens per prompt), 2,000 widens them a little
(code 0.55, docs 0.61) for a 10 % slower build. Measured (both full builds identical): code −0.52,
docs −0.57, legal −1.24 nats against the generalist, which wins every other domain (by ≥ 0.35
nats) and the mix; the whole build takes 141-151 s wall (4.3-4.6 CPU min on two threads) on the
two-core machine.

Losses of the two kinds are both nats per token of the same tokenization of the same prompt: the
masked-LM's on the prompt-seeded 15 % mask (bidirectional context), the causal-LMs' on every token
(left context). They are not the same quantity; the router predicts and minimises exactly the
loss the loss table holds (what ``experts.scoring`` computes, or what an application reports), so
in the demo "the best expert for a prompt" means "the lowest loss as the library scores it" (the
masked-LM, at its plateau, is the worst on every domain: it is there for its size), and the
held-out matrix printed at the end of the build is that ground truth.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experts.corpus import DOMAINS, collect_prompts
from experts.local import LocalExpert, quiet_hf_progress
from experts.training import (
    ExpertRecipe,
    causal_tokenizer,
    measure_latency_ms,
    train_causal_lm,
    train_masked_lm,
    train_tokenizer,
)

if TYPE_CHECKING:  # torch and transformers load only when a library is built
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

BUILD_VERSION = 6
SPECIALIST_MARGIN = 0.3
"""Nats by which each ``<domain>-small`` expert must beat ``general-large`` on its own domain (held out)."""
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class DemoSpec:
    """Everything a build depends on; tests shrink it to build a miniature library fast."""

    seed: int = 0
    vocab_size: int = 1500
    max_length: int = 128
    batch_size: int = 32
    max_snippets: int = 1500  # per domain
    experts: tuple[ExpertRecipe, ...] = (
        ExpertRecipe("code-small", ("code",), 64, 2, 400, lr=3e-3, release_date="2025-06-01", kind="causal-lm"),
        ExpertRecipe("docs-small", ("docs",), 64, 2, 400, lr=3e-3, release_date="2025-09-01", kind="causal-lm"),
        ExpertRecipe("legal-small", ("legal",), 64, 2, 400, lr=3e-3, release_date="2026-01-15", kind="causal-lm"),
        # three times the parameters, about one specialist's training time, spread over the three domains
        ExpertRecipe("general-large", DOMAINS, 128, 2, 150, lr=2e-3, release_date="2025-03-01", kind="causal-lm"),
        # the masked-LM kind: the smallest and cheapest expert, what [Flag: smallest model] picks
        ExpertRecipe("general-tiny", DOMAINS, 32, 1, 150, lr=3e-3, release_date="2024-11-01"),
    )


@dataclass
class DemoLibrary:
    root: Path
    experts: list[dict[str, Any]]
    quality: dict[str, Any] = field(default_factory=dict)
    build_seconds: float | None = None

    def prompts(self, split: str | None = None, domain: str | None = None) -> list[dict[str, Any]]:
        """Rows of prompts.jsonl (prompt, domain, split), optionally filtered."""
        with (self.root / "prompts.jsonl").open(encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        return [r for r in rows if (split is None or r["split"] == split) and (domain is None or r["domain"] == domain)]


def _fingerprint(spec: DemoSpec) -> dict[str, Any]:
    return json.loads(json.dumps({"build_version": BUILD_VERSION, "seed": spec.seed, "spec": asdict(spec)}))


@contextlib.contextmanager
def _build_lock(out_dir: Path) -> Iterator[None]:
    """One build per output directory at a time (across processes)."""
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cached(out_dir: Path, fingerprint: dict[str, Any]) -> bool:
    try:
        manifest = json.loads((out_dir / "library.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("fingerprint") == fingerprint


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished build over ``out_dir``; the old one is moved aside first, then deleted."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def quality_matrix(experts: Sequence[LocalExpert], rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean held-out loss of each expert on each domain, and on the whole mix ("all"), scored as the
    product scores them (:meth:`LocalExpert.losses`)."""
    heldout = [r for r in rows if r["split"] == "heldout"]
    matrix: dict[str, dict[str, float]] = {}
    for expert in experts:
        losses = expert.losses([r["prompt"] for r in heldout])
        by_domain = {d: [x for x, r in zip(losses, heldout, strict=True) if r["domain"] == d] for d in DOMAINS}
        matrix[expert.name] = {d: round(sum(v) / len(v), 4) for d, v in by_domain.items() if v}
        matrix[expert.name]["all"] = round(sum(losses) / max(len(losses), 1), 4)
    return matrix


def specialisation_problems(quality: dict[str, dict[str, float]], margin: float = SPECIALIST_MARGIN,
                            generalist: str = "general-large") -> list[str]:
    """Where the held-out matrix fails the demo's premise: each ``<domain>-small`` expert beats the
    generalist on its own domain by at least ``margin`` nats and loses to it on every other domain."""
    problems = []
    general = quality.get(generalist)
    for domain in DOMAINS:
        own = quality.get(f"{domain}-small")
        if own is None or general is None:
            continue
        if general[domain] - own[domain] < margin:
            problems.append(f"{domain}-small beats {generalist} on {domain} by "
                            f"{general[domain] - own[domain]:.3f} nats, less than {margin}")
        problems += [f"{domain}-small does not lose to {generalist} on {other}"
                     for other in DOMAINS if other != domain and own[other] <= general[other]]
    return problems


def format_matrix(matrix: dict[str, dict[str, float]]) -> str:
    columns = [*DOMAINS, "all"]
    lines = ["expert".ljust(16) + "".join(c.rjust(9) for c in columns)]
    for name, row in matrix.items():
        lines.append(name.ljust(16) + "".join(f"{row.get(c, float('nan')):9.3f}" for c in columns))
    return "\n".join(lines)


def _expert_entry(recipe: ExpertRecipe, final: Path, model: PreTrainedModel,
                  tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    params = sum(p.numel() for p in model.parameters())
    return {
        "name": recipe.name, "kind": recipe.kind, "uri": str(final.resolve()),
        "attributes": {
            "params": params,
            "cost": round(params / 1e6, 6),  # notional price per 1k tokens: 1 unit per million parameters
            "latency_ms": measure_latency_ms(model, tokenizer),  # measured: one forward of 8 short prompts
            "release_date": recipe.release_date,
            "domain": "+".join(recipe.domains) if len(recipe.domains) < len(DOMAINS) else "general",
            "layers": recipe.layers, "hidden": recipe.hidden, "license": "PSF-2.0 (demo)",
        },
    }


def build_demo_library(out_dir: Path, seed: int = 0, progress: Progress | None = None,
                       spec: DemoSpec | None = None, verbose: bool = True) -> DemoLibrary:
    """Build (or return the cached) demo library in ``out_dir``. ``spec`` overrides sizes and steps."""
    spec = replace(spec, seed=seed) if spec is not None else DemoSpec(seed=seed)
    report = progress or (lambda fraction, message: None)
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(spec)
    with _build_lock(out_dir):
        if _cached(out_dir, fingerprint):
            report(1.0, "demo library cached")
            return load_demo_library(out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            seconds, quality = _build_into(tmp, out_dir, spec, fingerprint, report)
            _swap_into_place(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if verbose:
        print(f"demo library built in {seconds:.1f} s; mean held-out loss in nats per token (lower is better):")
        print(format_matrix(quality))
        for problem in specialisation_problems(quality):
            print(f"warning: {problem}")
    report(1.0, "demo library built")
    return load_demo_library(out_dir)


def _build_into(tmp: Path, out_dir: Path, spec: DemoSpec, fingerprint: dict[str, Any],
                report: Progress) -> tuple[float, dict[str, dict[str, float]]]:
    import torch

    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        report(0.01, "collecting text")
        rows = collect_prompts(spec.max_snippets)
        with (tmp / "prompts.jsonl").open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        train = {d: [r["prompt"] for r in rows if r["domain"] == d and r["split"] == "train"] for d in DOMAINS}
        report(0.03, "training the tokenizer")
        tokenizer = train_tokenizer([p for d in DOMAINS for p in train[d]], spec.vocab_size, tmp / "_tokenizer")
        tokenizers = {"masked-lm": tokenizer, "causal-lm": causal_tokenizer(tmp / "_tokenizer")}
        shutil.rmtree(tmp / "_tokenizer")
        total = sum(r.steps for r in spec.experts) or 1
        done, experts = 0, []
        loaded: list[LocalExpert] = []
        for recipe in spec.experts:
            def tick(fraction: float, before: int = done, recipe: ExpertRecipe = recipe) -> None:
                report(0.05 + 0.85 * (before + fraction * recipe.steps) / total, f"training {recipe.name}")

            texts = [p for d in recipe.domains for p in train[d]]
            own = tokenizers[recipe.kind]
            trainer = train_causal_lm if recipe.kind == "causal-lm" else train_masked_lm
            model = trainer(recipe, texts, own, spec.seed, spec.max_length, spec.batch_size, tick)
            done += recipe.steps
            with quiet_hf_progress():
                model.save_pretrained(tmp / recipe.name)
                own.save_pretrained(tmp / recipe.name)
            experts.append(_expert_entry(recipe, out_dir / recipe.name, model, own))
            loaded.append(LocalExpert(recipe.name, recipe.kind, model, own))
        report(0.92, "measuring held-out losses")
        quality = quality_matrix(loaded, rows)
        seconds = round(time.perf_counter() - started, 1)
        counts = {f"{d}/{s}": sum(1 for r in rows if r["domain"] == d and r["split"] == s)
                  for d in DOMAINS for s in ("train", "traffic", "heldout")}
        manifest = {"fingerprint": fingerprint, "experts": experts, "quality": quality,
                    "quality_note": "mean held-out loss, nats per token: masked-LMs on the prompt-seeded 15 % "
                                    "mask, causal-LMs on every token (experts.scoring)",
                    "prompt_counts": counts, "build_seconds": seconds}
        (tmp / "library.json").write_text(json.dumps(manifest, indent=2))
        return seconds, quality
    finally:
        torch.set_num_threads(threads)


def load_demo_library(out_dir: Path) -> DemoLibrary:
    path = Path(out_dir) / "library.json"
    if not path.is_file():
        raise FileNotFoundError(f"no demo library at {out_dir}: run `thalamus experts build-demo` first")
    manifest = json.loads(path.read_text())
    root = Path(out_dir).resolve()
    experts = [{**e, "uri": str(root / e["name"])} for e in manifest["experts"]]  # valid if the library moved
    return DemoLibrary(root, experts, manifest.get("quality", {}), manifest.get("build_seconds"))
