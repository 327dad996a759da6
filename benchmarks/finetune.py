"""``thalamus bench finetune``: does fine-tuning the experts on their routed prompts lower the routed loss?

On a throw-away home (SQLite, its own THALAMUS_HOME) over the demo library (or a small one built
here when there is none), the production jobs run in order:

1. the experts' losses on the traffic prompts, a router trained on them and activated;
2. traffic: every traffic prompt routed by the active router and logged as the daemon logs it;
3. **baseline**: the router retrained alone (``train_router`` from the active one), activated;
4. **loop**: every small local expert (all but the largest; ``experts="all"`` or names to choose)
   fine-tuned once on its routed prompts (``finetune_expert``; one the router sent fewer than
   ``min_routed_prompts`` is reported as skipped), each candidate approved, the loss table
   re-scored (``refresh_losses``), the router retrained and activated.

Measured on the library's held-out prompts (no expert and no router saw them): the routed loss of
the baseline (base experts, retrained router) and of the loop (fine-tuned experts, router retrained
on their losses), with a 95 % paired bootstrap interval of (baseline − loop): above 0 means the
loop wins; each fine-tuned expert's loss on its own domain and on the others before and after; the
traffic shares of the two routers; and the wall time of each fine-tune.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from store.settings import Settings

Progress = Callable[[float, str], None]


def _library(settings: Settings, work: Path, steps: int, max_snippets: int, say: Progress,
             path: Path | None = None) -> Any:
    from experts.demo import DemoSpec, build_demo_library, load_demo_library

    if path is not None:
        return load_demo_library(path)
    existing = settings.experts_dir / "demo"
    if (existing / "library.json").is_file():
        say(0.0, f"using the demo library at {existing}")
        return load_demo_library(existing)
    spec = DemoSpec()
    spec = replace(spec, max_snippets=max_snippets,
                   experts=tuple(replace(r, steps=min(r.steps, steps)) for r in spec.experts))
    say(0.0, f"no demo library at {existing}: building a small one ({steps} steps per expert)")
    return build_demo_library(work / "lib", seed=0, spec=spec, verbose=False)


def _route_all(settings: Settings, prompts: Sequence[str]) -> tuple[list[str], np.ndarray, list[str]]:
    """The active router's choice (argmin of predicted loss) for each prompt, its predictions and its experts."""
    from jobs.router_store import load_version
    from store.db import session_scope
    from store.queries import active_router_version

    with session_scope(settings) as session:
        version = active_router_version(session)
        assert version is not None
        router = load_version(version)
    names = [str(n) for n in router.expert_names]
    predicted = np.asarray(router.predict(list(prompts)), dtype=np.float64)
    return [names[i] for i in predicted.argmin(axis=1)], predicted, names


def _activate_newest(settings: Settings, reason: str) -> int:
    from sqlalchemy import select

    from jobs.promote import activate
    from store.db import session_scope
    from store.schema import RouterVersion

    with session_scope(settings) as session:
        newest = session.scalars(select(RouterVersion).order_by(RouterVersion.id.desc())).first()
        assert newest is not None
        activate(session, newest, actor="bench", reason=reason)
        return newest.id


def _losses(settings: Settings, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """Every active local expert's current version's loss on each prompt."""
    from experts.local import LocalExpert
    from store.db import session_scope
    from store.queries import active_experts

    with session_scope(settings) as session:
        experts = [(e.name, e.kind, e.uri or "") for e in active_experts(session) if e.kind in ("masked-lm",
                                                                                                  "causal-lm")]
    return {name: np.array(LocalExpert.load(name, kind, uri).losses(list(prompts))) for name, kind, uri in experts}


def _routed(choices: Sequence[str], losses: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([losses[name][i] for i, name in enumerate(choices)])


def _shares(choices: Sequence[str], names: Sequence[str]) -> dict[str, float]:
    return {n: round(sum(c == n for c in choices) / max(1, len(choices)), 4) for n in names}


def run(settings: Settings, *, traffic: int = 600, heldout: int = 300, epochs: int = 2, router_epochs: int = 1,
        library_steps: int = 120, max_snippets: int = 400, work: Path | None = None, library: Path | None = None,
        experts: str = "small", min_routed_prompts: int = 10, progress: Progress | None = None) -> dict[str, Any]:
    """Run the benchmark on a throw-away home under ``work`` (default: THALAMUS_HOME/bench-finetune-<id>)."""
    from experts.registry import register_experts
    from jobs.errors import JobInputError
    from jobs.expert_versions import approve
    from jobs.finetune_expert import finetune_expert
    from jobs.refresh_losses import refresh_losses
    from jobs.train_router import train_router
    from router.metrics import paired_bootstrap
    from store.db import dispose_engines, session_scope
    from store.migrate import upgrade
    from store.queries import insert_requests
    from store.schema import utcnow

    say = progress or (lambda fraction, message: None)
    started = time.perf_counter()
    work = work or settings.home / f"bench-finetune-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True, exist_ok=True)
    lib = _library(settings, work, library_steps, max_snippets, say, library)
    bench = settings.model_copy(update={"home": work / "home", "database_url": None, "train_epochs": router_epochs,
                                        "label_share": 1.0, "finetune_epochs": epochs,
                                        "finetune_auto_approve": False})
    bench.ensure_home()
    upgrade(bench)
    with session_scope(bench) as session:
        register_experts(session, lib.experts)
    traffic_rows = balanced(lib.prompts(split="traffic"))[:traffic]
    held = balanced(lib.prompts(split="heldout"))[:heldout]
    traffic_prompts, held_prompts = [r["prompt"] for r in traffic_rows], [r["prompt"] for r in held]

    say(0.05, f"scoring {len(traffic_prompts)} traffic prompts and training the first router")
    with session_scope(bench) as session:
        insert_requests(session, [_request(p, "__bench_seed__", {}, utcnow()) for p in traffic_prompts])
    refresh_losses(bench)
    with session_scope(bench) as session:  # the seed rows only carried the prompts to score
        from sqlalchemy import delete

        from store.schema import Request
        session.execute(delete(Request).where(Request.expert == "__bench_seed__"))
    train_router(bench)
    _activate_newest(bench, "bench: first router")

    say(0.25, "routing the traffic")
    choices, predicted, names = _route_all(bench, traffic_prompts)
    with session_scope(bench) as session:
        insert_requests(session, [_request(p, c, dict(zip(names, map(float, row), strict=True)), utcnow())
                                  for p, c, row in zip(traffic_prompts, choices, predicted, strict=True)])
    before_losses = _losses(bench, held_prompts)
    first_choices, _, _ = _route_all(bench, held_prompts)

    say(0.35, "baseline: retraining the router alone")
    train_router(bench)
    _activate_newest(bench, "bench: retrained alone")
    baseline_choices, _, _ = _route_all(bench, held_prompts)
    baseline_traffic, _, _ = _route_all(bench, traffic_prompts)

    local = [e for e in lib.experts if e.get("kind", "masked-lm") in ("masked-lm", "causal-lm")]
    largest = max(local, key=lambda e: float(e["attributes"].get("params") or 0))["name"]
    chosen = _chosen(experts, [e["name"] for e in local], largest)
    finetunes: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for index, name in enumerate(chosen):
        say(0.45 + 0.3 * index / max(1, len(chosen)), f"fine-tuning {name}")
        tick = time.perf_counter()
        try:
            result = finetune_expert(bench, None, {"expert": name, "min_routed_prompts": min_routed_prompts})
        except JobInputError as exc:  # too few routed prompts: the router sends it (almost) nothing
            skipped[name] = str(exc)
            continue
        finetunes[name] = {"wall_seconds": round(time.perf_counter() - tick, 2), "result": result}
        with session_scope(bench) as session:
            approve(session, name, result["version"], actor="bench", reason="bench: loop with fine-tuning")
    say(0.8, "re-scoring and retraining the router")
    rescored = refresh_losses(bench)
    train_router(bench)
    _activate_newest(bench, "bench: retrained after fine-tuning")
    after_losses = _losses(bench, held_prompts)
    loop_choices, _, _ = _route_all(bench, held_prompts)
    loop_traffic, _, _ = _route_all(bench, traffic_prompts)

    first = _routed(first_choices, before_losses)
    baseline = _routed(baseline_choices, before_losses)
    loop = _routed(loop_choices, after_losses)
    diff, low, high = paired_bootstrap(baseline, loop)
    domains = [r["domain"] for r in held]
    experts_table = {}
    for entry in local:
        name = entry["name"]
        own_domain = str(entry["attributes"].get("domain", "general"))
        own = np.array([d in own_domain.split("+") or own_domain == "general" for d in domains])
        experts_table[name] = {
            "domain": own_domain, "fine_tuned": name in finetunes,
            "own_before": _mean(before_losses[name][own]), "own_after": _mean(after_losses[name][own]),
            "other_before": _mean(before_losses[name][~own]), "other_after": _mean(after_losses[name][~own]),
        }
    dispose_engines()
    return {
        "library": str(lib.root), "traffic_prompts": len(traffic_prompts), "heldout_prompts": len(held_prompts),
        "routed_heldout_loss": {"first_router": float(first.mean()), "router_retrained_alone": float(baseline.mean()),
                                "loop_with_finetuning": float(loop.mean()),
                                "baseline_minus_loop": diff, "ci95": [low, high]},
        "experts": experts_table,
        "traffic_shares": {"router_retrained_alone": _shares(baseline_traffic, names),
                           "loop_with_finetuning": _shares(loop_traffic, names)},
        "finetunes": {n: {"wall_seconds": f["wall_seconds"], "train_seconds": f["result"]["metrics"]["train_seconds"],
                          "n_train": f["result"]["metrics"]["n_train"], "own": f["result"]["metrics"]["own"],
                          "other": f["result"]["metrics"]["other"]} for n, f in finetunes.items()},
        "skipped": skipped, "rescored_rows": rescored["rows_written"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "work": str(work),
    }


def balanced(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows taken round-robin across domains, so any prefix is balanced (the library lists its
    prompts domain by domain: a plain prefix of 600 traffic prompts held no legal prompt at all)."""
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_domain.setdefault(str(row["domain"]), []).append(row)
    columns = [by_domain[d] for d in sorted(by_domain)]
    return [c[i] for i in range(max(map(len, columns), default=0)) for c in columns if i < len(c)]


def _chosen(which: str, local: Sequence[str], largest: str) -> list[str]:
    """``small``: every local expert but the largest; ``all``; or comma-separated names."""
    if which == "small":
        return [n for n in local if n != largest]
    if which == "all":
        return list(local)
    names = [n.strip() for n in which.split(",") if n.strip()]
    unknown = sorted(set(names) - set(local))
    if unknown:
        raise ValueError(f"not local experts of the library: {', '.join(unknown)}")
    return names


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def _request(prompt: str, expert: str, predicted: dict[str, float], at: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "created_at": at, "prompt": prompt, "lambdas": {}, "router_version_id": None,
            "expert": expert, "predicted_losses": predicted, "propensity": 1.0, "sampled": True, "latency_ms": 0.0,
            "app": "bench"}


def format_report(report: dict[str, Any]) -> str:
    """The report as the tables docs/benchmarks.md shows."""
    r = report["routed_heldout_loss"]
    lines = [f"held-out prompts: {report['heldout_prompts']}, traffic prompts: {report['traffic_prompts']}, "
             f"wall {report['wall_seconds']} s",
             f"routed held-out loss: first router {r['first_router']:.4f}; router retrained alone "
             f"{r['router_retrained_alone']:.4f}; loop with fine-tuning {r['loop_with_finetuning']:.4f}",
             f"retrained alone − loop = {r['baseline_minus_loop']:+.4f} (95% paired bootstrap "
             f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}])", "",
             "| expert | domain | fine-tuned | own before | own after | other before | other after |",
             "|---|---|---|---|---|---|---|"]
    for name, e in report["experts"].items():
        cells = [_fmt(e[k]) for k in ("own_before", "own_after", "other_before", "other_after")]
        lines.append(f"| {name} | {e['domain']} | {'yes' if e['fine_tuned'] else 'no'} | {' | '.join(cells)} |")
    shares = report["traffic_shares"]
    lines += ["", "| expert | share, router retrained alone | share, loop |", "|---|---|---|"]
    for name in shares["router_retrained_alone"]:
        lines.append(f"| {name} | {shares['router_retrained_alone'][name]:.3f} | "
                     f"{shares['loop_with_finetuning'][name]:.3f} |")
    lines += ["", "| fine-tune | routed prompts trained on | train s | wall s | own Δ [95% CI] | other Δ [95% CI] |",
              "|---|---|---|---|---|---|"]
    for name, f in report["finetunes"].items():
        lines.append(f"| {name} | {f['n_train']} | {f['train_seconds']} | {f['wall_seconds']} | "
                     f"{_ci(f['own'])} | {_ci(f['other'])} |")
    for name, why in report.get("skipped", {}).items():
        lines.append(f"| {name} | skipped: {why} | | | | |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ci(numbers: dict[str, Any] | None) -> str:
    if not numbers:
        return "-"
    return f"{numbers['diff']:+.3f} [{numbers['ci_low']:+.3f}, {numbers['ci_high']:+.3f}]"
