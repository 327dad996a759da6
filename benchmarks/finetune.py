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

Each arm retrains the router ``router_seeds`` times (K), from the same first router, with the
``train_router`` job's ``seed`` parameter set to 0..K−1 (the same seeds in both arms): the
difference between two router trainings is about as large as the fine-tunes' gain, so one training
per arm measures mostly router-training noise.

Measured on the library's held-out prompts (no expert and no router saw them): the routed loss of
the baseline (base experts, retrained router) and of the loop (fine-tuned experts, router retrained
on their losses), each per prompt averaged over the K seeds, with a 95 % paired bootstrap interval
of (baseline − loop) that resamples the held-out prompts (the K routers stay fixed): above 0 means
the loop wins. Also: the difference per seed, and a wider interval that resamples each arm's K
routers (independently, with replacement) as well as the prompts; each fine-tuned expert's loss on
its own domain and on the others before and after; the traffic shares of the two arms' routers
(mean over seeds); and the wall time of each fine-tune.
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


def _retrain_arm(settings: Settings, parent: int, seeds: Sequence[int], arm: str, held: Sequence[str],
                 traffic: Sequence[str]) -> tuple[list[list[str]], list[list[str]], list[int]]:
    """Retrain the router once per seed, each time from ``parent`` (activated first), through the
    ``train_router`` job's ``seed`` parameter; each candidate's choices on ``held`` and ``traffic``."""
    from jobs.promote import activate_version
    from jobs.train_router import train_router
    from store.db import session_scope

    held_choices, traffic_choices, versions = [], [], []
    for seed in seeds:
        with session_scope(settings) as session:
            if _active_id(session) != parent:
                activate_version(session, parent, actor="bench", reason=f"bench: {arm}, back to the first router")
        train_router(settings, None, {"seed": seed})
        versions.append(_activate_newest(settings, f"bench: {arm}, router seed {seed}"))
        held_choices.append(_route_all(settings, held)[0])
        traffic_choices.append(_route_all(settings, traffic)[0])
    return held_choices, traffic_choices, versions


def _active_id(session: Any) -> int | None:
    from store.queries import active_router_version

    version = active_router_version(session)
    return None if version is None else int(version.id)


def seeds_and_prompts_bootstrap(baseline: np.ndarray, loop: np.ndarray, n: int = 2000,
                                seed: int = 0) -> tuple[float, float, float]:
    """Mean of (baseline − loop) over seeds and prompts, with a 95 % percentile interval that resamples
    the prompts (shared by both arms: paired) and each arm's routers (rows, independently).

    ``baseline`` and ``loop`` are (routers × prompts) routed losses.
    """
    baseline, loop = np.asarray(baseline, dtype=np.float64), np.asarray(loop, dtype=np.float64)
    if baseline.ndim != 2 or loop.ndim != 2 or baseline.shape[1] != loop.shape[1] or baseline.size == 0 \
            or loop.size == 0:
        raise ValueError(f"need two non-empty (routers × prompts) arrays over the same prompts, got "
                         f"{baseline.shape} and {loop.shape}")
    rng = np.random.default_rng(seed)
    prompts = baseline.shape[1]
    means = np.empty(n)
    for b in range(n):
        columns = rng.integers(0, prompts, size=prompts)
        rows_a = rng.integers(0, baseline.shape[0], size=baseline.shape[0])
        rows_b = rng.integers(0, loop.shape[0], size=loop.shape[0])
        means[b] = baseline[np.ix_(rows_a, columns)].mean() - loop[np.ix_(rows_b, columns)].mean()
    low, high = np.percentile(means, [2.5, 97.5])
    return float(baseline.mean() - loop.mean()), float(low), float(high)


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


def _mean_shares(by_seed: Sequence[Sequence[str]], names: Sequence[str]) -> dict[str, float]:
    """Each expert's traffic share, averaged over the arm's routers."""
    shares = [_shares(choices, names) for choices in by_seed]
    return {n: round(sum(s[n] for s in shares) / max(1, len(shares)), 4) for n in names}


def run(settings: Settings, *, traffic: int = 600, heldout: int = 300, epochs: int = 2, router_epochs: int = 1,
        library_steps: int = 120, max_snippets: int = 400, work: Path | None = None, library: Path | None = None,
        experts: str = "small", min_routed_prompts: int = 10, router_seeds: int = 3,
        progress: Progress | None = None) -> dict[str, Any]:
    """Run the benchmark on a throw-away home under ``work`` (default: THALAMUS_HOME/bench-finetune-<id>)."""
    if router_seeds < 1:
        raise ValueError(f"router_seeds must be at least 1, got {router_seeds}")
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
    first_version = _activate_newest(bench, "bench: first router")
    seeds = list(range(router_seeds))

    say(0.25, "routing the traffic")
    choices, predicted, names = _route_all(bench, traffic_prompts)
    with session_scope(bench) as session:
        insert_requests(session, [_request(p, c, dict(zip(names, map(float, row), strict=True)), utcnow())
                                  for p, c, row in zip(traffic_prompts, choices, predicted, strict=True)])
    before_losses = _losses(bench, held_prompts)
    first_choices, _, _ = _route_all(bench, held_prompts)

    say(0.35, f"baseline: retraining the router alone ({router_seeds} seeds)")
    baseline_choices, baseline_traffic, baseline_versions = _retrain_arm(
        bench, first_version, seeds, "retrained alone", held_prompts, traffic_prompts)

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
    say(0.8, f"re-scoring and retraining the router ({router_seeds} seeds)")
    rescored = refresh_losses(bench)
    after_losses = _losses(bench, held_prompts)
    loop_choices, loop_traffic, loop_versions = _retrain_arm(
        bench, first_version, seeds, "retrained after fine-tuning", held_prompts, traffic_prompts)

    first = _routed(first_choices, before_losses)
    baseline_by_seed = np.array([_routed(c, before_losses) for c in baseline_choices])
    loop_by_seed = np.array([_routed(c, after_losses) for c in loop_choices])
    baseline, loop = baseline_by_seed.mean(axis=0), loop_by_seed.mean(axis=0)
    diff, low, high = paired_bootstrap(baseline, loop)  # resamples prompts; the K routers per arm stay fixed
    _, wide_low, wide_high = seeds_and_prompts_bootstrap(baseline_by_seed, loop_by_seed)
    per_seed = []
    for seed, b, lp, bv, lv in zip(seeds, baseline_by_seed, loop_by_seed, baseline_versions, loop_versions,
                                   strict=True):
        d, lo, hi = paired_bootstrap(b, lp)
        per_seed.append({"seed": seed, "router_retrained_alone": float(b.mean()), "loop_with_finetuning":
                         float(lp.mean()), "baseline_minus_loop": d, "ci95": [lo, hi],
                         "versions": {"router_retrained_alone": bv, "loop_with_finetuning": lv}})
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
                                "baseline_minus_loop": diff, "ci95": [low, high],
                                "ci95_resampling_routers_too": [wide_low, wide_high],
                                "router_seeds": seeds, "per_seed": per_seed},
        "experts": experts_table,
        "traffic_shares": {"router_retrained_alone": _mean_shares(baseline_traffic, names),
                           "loop_with_finetuning": _mean_shares(loop_traffic, names)},
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
             f"retrained alone − loop = {r['baseline_minus_loop']:+.4f} (95% paired bootstrap over prompts, "
             f"mean of {len(r.get('router_seeds', [0]))} router seeds per arm: "
             f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]"
             + (f"; resampling the routers too: [{r['ci95_resampling_routers_too'][0]:+.4f}, "
                f"{r['ci95_resampling_routers_too'][1]:+.4f}]" if "ci95_resampling_routers_too" in r else "") + ")"]
    if r.get("per_seed"):
        lines += ["", "| router seed | retrained alone | loop | retrained alone − loop [95% CI, prompts] |",
                  "|---|---|---|---|"]
        for p in r["per_seed"]:
            lines.append(f"| {p['seed']} | {p['router_retrained_alone']:.4f} | {p['loop_with_finetuning']:.4f} | "
                         f"{p['baseline_minus_loop']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] |")
    lines += ["",
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
