"""Benchmarks: routing quality, the demo library as a dataset, faults under load, off-policy intervals."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cli._common import CliError, Group, arg, percent_bar, positive_int, print_json, say, unit_share, verb
from store.settings import Settings

RecipeChoice = Literal["bench", "product"]


@dataclass(frozen=True)
class DatasetWritten:
    path: Path
    train_rows: int
    test_rows: int
    quality: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # the library's held-out matrix
    problems: list[str] = dataclasses.field(default_factory=list)  # where it fails the specialisation premise


def _write_json(path: Path | None, data: Any, default: Any = None) -> None:
    """Write a benchmark's report as JSON where ``--json`` asked for it (nothing without a path)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, default=default), encoding="utf-8")


def quality(settings: Settings, *, dataset: Path | None = None, datasets: list[Path] | None = None,
            json_out: Path | None = None, plot_out: Path | None = None, quick: bool = False, seeds: int = 3,
            recipe: RecipeChoice = "bench", progress: bool = False) -> dict[str, Any]:
    """Routing quality against baselines and the λ_size Pareto front on a loss/score dataset."""
    from benchmarks.quality import bench_recipe, run, run_many
    from benchmarks.report import plot
    from jobs.recipe import TrainRecipe

    if (dataset is None) == (not datasets):
        raise CliError("give either --dataset or --datasets")
    for path in [dataset] if dataset is not None else list(datasets or []):
        if not Path(path).exists():
            raise CliError(f"dataset {path} does not exist")
    if datasets and plot_out is not None:
        raise CliError("--plot draws one dataset's Pareto front; use it with --dataset")
    train_recipe = TrainRecipe.from_settings(settings)
    if recipe == "bench":
        train_recipe = bench_recipe(train_recipe, quick=quick)
    say_ = say if progress else None
    if datasets:
        report = run_many([Path(d) for d in datasets], train_recipe, seeds=seeds, quick=quick, progress=say_)
    else:
        assert dataset is not None
        report = run(Path(dataset), train_recipe, seeds=seeds, quick=quick, progress=say_)
    _write_json(json_out, report, default=str)
    if plot_out is not None:
        plot(report, plot_out)
    return report


def demo_dataset(settings: Settings, *, out: Path, seed: int = 0, progress: bool = False) -> DatasetWritten:
    """Score the demo library's prompts with every demo expert and write them as a bench quality dataset."""
    from benchmarks.demo_dataset import export_demo_dataset
    from experts.demo import build_demo_library, specialisation_problems

    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a directory")
    with percent_bar("demo dataset", enabled=progress) as bar:
        library = build_demo_library(settings.experts_dir / "demo", seed=seed, verbose=False,
                                     progress=lambda f, m: bar(0.5 * f, m))
        counts = export_demo_dataset(library, out, progress=lambda f, m: bar(0.5 + 0.5 * f, m))
    return DatasetWritten(out, counts["train"], counts["test"], library.quality,
                          specialisation_problems(library.quality))


def faults(settings: Settings, *, scenarios: str = "swap,outage,worker-kill,daemon-kill", rate: float = 10.0,
           quick: bool = False, backbone: str = "tiny", admin_url: str | None = None, broker_url: str | None = None,
           json_out: Path | None = None) -> list[Any]:
    """Fault scenarios under load (swaps, database outage, worker SIGKILL, daemon kill -9): rows lost, failures."""
    import dataclasses

    from benchmarks.faults import ADMIN_URL, parse_request, run

    try:
        names, plan = parse_request(scenarios, rate, quick=quick)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    rows = run(names, plan, backbone=backbone, admin_url=admin_url or ADMIN_URL, broker_url=broker_url, log=say)
    _write_json(json_out, {"plan": dataclasses.asdict(plan), "backbone": backbone, "rows": [r.as_dict() for r in rows]})
    return rows


def bandit_training(settings: Settings, *, dataset: Path, quick: bool = False, seeds: int = 3,
                    policies: str = "off,epsilon:0.05,epsilon:0.2,softmax:0.1", margin: float = 0.25,
                    seed_prompts: int = 200, json_out: Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Training from bandit feedback: a head trained with and without 1/propensity weights on simulated logs."""
    from benchmarks.bandit_training import run
    from router.exploration import ExploreError, parse_policy

    dataset = Path(dataset)
    if not dataset.exists():
        raise CliError(f"dataset {dataset} does not exist")
    names = [p.strip() for p in policies.split(",") if p.strip()]
    if not names:
        raise CliError("--policies names no policy; give e.g. off,epsilon:0.05")
    try:
        for name in names:
            parse_policy(name, margin)
    except ExploreError as exc:
        raise CliError(str(exc).replace("THALAMUS_EXPLORE_MARGIN", "--margin").replace("THALAMUS_EXPLORE", "--policies")
                       ) from None
    report = run(dataset, settings.backbone_path, quick=quick, seeds=seeds, seed_prompts=seed_prompts,
                 policies=names, margin=margin, progress=say if progress else None)
    _write_json(json_out, report)
    return report


def shadow(settings: Settings, *, rate: float = 10.0, seconds: float = 30.0, rounds: int = 2,
           shares: list[float] | None = None, nice: list[int] | None = None, backbone: str = "minilm",
           admin_url: str | None = None, json_out: Path | None = None) -> dict[str, Any]:
    """Added response latency of shadow mode: the same open-loop load with no shadow and with one at each share."""
    from benchmarks.shadow_latency import ADMIN_URL, run

    if rate <= 0 or seconds <= 0:
        raise CliError("--rate and --seconds must be positive")
    if nice is not None and any(not 0 <= n <= 19 for n in nice):
        raise CliError("--nice values must be in 0..19")
    report = run(rate, seconds, rounds, shares or [0.2, 1.0], backbone, admin_url or ADMIN_URL, nice, log=say)
    _write_json(json_out, report)
    return report


def _show_bandit(report: dict[str, Any]) -> None:
    from benchmarks.bandit_training import format_report

    print(format_report(report))


def ope(settings: Settings, *, sizes: str = "1000,5000", epsilons: str = "0.05,0.1,0.2", repetitions: int = 40,
        seed: int = 0) -> list[Any]:
    """Off-policy interval widths and coverage on a seeded synthetic bandit, by logged rows and exploration ε."""
    from benchmarks.offpolicy import run

    try:
        n_rows = [int(x) for x in sizes.split(",")]
        eps = [float(x) for x in epsilons.split(",")]
    except ValueError:
        raise CliError(f"--sizes {sizes!r} and --epsilons {epsilons!r} must be comma-separated numbers") from None
    if any(n < 20 for n in n_rows) or any(not 0 < e <= 1 for e in eps):
        raise CliError("--sizes must be at least 20 rows each and --epsilons in (0, 1]")
    return run(n_rows, eps, repetitions=repetitions, seed=seed, log=say)


def _show_ope(rows: list[Any]) -> None:
    from benchmarks.offpolicy import table

    print(table(rows))


def _show_shadow(report: dict[str, Any]) -> None:
    from benchmarks.shadow_latency import table

    print(table(report))


def loop(settings: Settings, *, dataset: Path, scenario: str = "cold", feedback: str = "bandit",
         requests: int | None = None, cycle: int = 500, window: int = 250, seed: int = 0,
         explore: str | None = None, offline: bool = True, quick: bool = False, lora: bool = False,
         json_out: Path | None = None, plot_out: Path | None = None, keep_home: Path | None = None,
         progress: bool = False) -> dict[str, Any]:
    """Replay a dataset as a stream through the daemon and the production jobs: does the loop learn?"""
    from benchmarks import loop_report
    from benchmarks.head_truth import PLAN_FILE
    from benchmarks.loop import LoopPlan, plan_dict, run

    dataset = Path(dataset)
    if not dataset.exists():
        raise CliError(f"dataset {dataset} does not exist")
    try:
        plan = LoopPlan(scenario=scenario, feedback=feedback, requests=requests, cycle=cycle, window=window,
                        seed=seed, quick=quick, explore=explore, offline=offline, frozen_encoder=not lora)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if keep_home is not None:
        if keep_home.exists() and (not keep_home.is_dir() or any(keep_home.iterdir())):
            raise CliError(f"--keep-home {keep_home} must be a new or empty directory")
        keep_home.mkdir(parents=True, exist_ok=True)
        (keep_home / PLAN_FILE).write_text(json.dumps({"dataset": str(dataset.resolve()), "plan": plan_dict(plan)}))
    report = loop_report.build(run(dataset, plan, settings, say=say if progress else None, home=keep_home))
    _write_json(json_out, report, default=str)
    if plot_out is not None:
        loop_report.plot(report, plot_out)
    return report


def _show_loop(report: dict[str, Any]) -> None:
    from benchmarks.loop_report import format_report

    print(format_report(report))


def finetune(settings: Settings, *, traffic: int = 600, heldout: int = 300, epochs: int = 2, router_epochs: int = 1,
             library_steps: int = 120, library: Path | None = None, work: Path | None = None,
             experts: str = "small", min_routed_prompts: int = 10, router_seeds: int = 3,
             json_out: Path | None = None, progress: bool = False) -> dict[str, Any]:
    """The loop with expert fine-tuning against router retraining alone: routed held-out loss, forgetting, shares."""
    from benchmarks.finetune import run

    report = run(settings, traffic=traffic, heldout=heldout, epochs=epochs, router_epochs=router_epochs,
                 library_steps=library_steps, library=library, work=work, experts=experts,
                 min_routed_prompts=min_routed_prompts, router_seeds=router_seeds,
                 progress=(lambda f, m: say(m)) if progress else None)
    _write_json(json_out, report)
    return report


def _show_finetune(report: dict[str, Any]) -> None:
    from benchmarks.finetune import format_report

    print(format_report(report))


def gateway(settings: Settings, *, rate: float = 20.0, seconds: float = 15.0, rounds: int = 2,
            backbone: str | None = None, json_out: Path | None = None) -> dict[str, Any]:
    """The latency the OpenAI-compatible gateway adds over a direct upstream call (p50/p95, open-loop load)."""
    from benchmarks.gateway_latency import run as run_gateway

    report = run_gateway(rate=rate, seconds=seconds, rounds=rounds, backbone=backbone, log=say)
    _write_json(json_out, report)
    return report


def serve(settings: Settings, *, dataset: Path = Path("../shared/data/dcrouter"), rates: str | None = None,
          seconds: float | None = None, database_url: str | None = None, memory_rows: int | None = None,
          paths: str = "fast,torch", workers: int | None = None, json_out: Path | None = None,
          plot_out: Path | None = None, quick: bool = False, swap: bool = True,
          swap_rate: float | None = None) -> dict[str, Any]:
    """Latency and throughput of POST /v1/route under open-loop load (wrk), the fast inference path against
    the PyTorch one: per arrival rate, achieved throughput, p50/p95/p99/max, errors, daemon CPU and RSS;
    then a hot swap to another router version under load."""
    from benchmarks.serve import plot, run

    if not Path(dataset).exists():
        raise CliError(f"dataset {dataset} does not exist")
    try:
        rate_list = [float(r) for r in rates.split(",") if r.strip()] if rates else None
    except ValueError:
        raise CliError(f"--rates {rates!r} must be comma-separated numbers") from None
    if seconds is not None and seconds <= 0:
        raise CliError("--seconds must be positive")
    if swap_rate is not None and swap_rate <= 0:
        raise CliError("--swap-rate must be positive")
    try:
        report = run(Path(dataset), rates=rate_list, seconds=seconds, database_url=database_url,
                     memory_rows=memory_rows, paths=[p.strip() for p in paths.split(",") if p.strip()],
                     workers=workers, quick=quick, backbone=settings.backbone, cache_dir=settings.home / "cache",
                     swap=swap, swap_rate=swap_rate, log=say)
    except RuntimeError as exc:
        if "wrk is not installed" in str(exc):
            raise CliError(str(exc)) from None
        raise
    _write_json(json_out, report)
    if plot_out is not None:
        plot(report, plot_out)
    return report


def _serve_failed(report: dict[str, Any]) -> bool:
    """Exit 1 when an answer was not logged, or a hot swap failed a request or never served the new version."""
    paths = report["paths"].values()
    swaps = [p["swap"] for p in paths if p.get("swap")]
    return (not all(p["all_logged"] for p in paths)
            or any(not s["swapped"] or s["run"]["errors"] or s["window"]["non_2xx"] for s in swaps))


def _show_serve(report: dict[str, Any]) -> None:
    from benchmarks.serve import table

    print(table(report))


def _show_faults(rows: list[Any]) -> None:
    from benchmarks.faults import table

    print(table(rows))


def _show_report(report: dict[str, Any]) -> None:
    from benchmarks.report import format_many, format_report

    print(format_many(report) if "runs" in report else format_report(report))


def _show_written(written: DatasetWritten) -> None:
    from experts.demo import format_matrix

    print("demo library, mean held-out loss in nats per token (lower is better):")
    print(format_matrix(written.quality))
    for problem in written.problems:
        print(f"specialisation premise not met: {problem}")
    print(f"wrote {written.train_rows} train and {written.test_rows} test rows to {written.path}; "
          f"next: thalamus bench quality --dataset {written.path}")


GROUP = Group("bench", "benchmarks (routing quality, the demo dataset, faults under load, bandit training, "
                       "off-policy intervals, shadow latency, the learning loop, expert fine-tuning, "
                       "gateway latency, serving latency and throughput)", (
    verb("quality", quality,
         arg("--dataset", type=Path, help="directory with train.*/test.* [+ models.json], or one file"),
         arg("--datasets", type=Path, nargs="+", help="several datasets in one command, with one summary table"),
         arg("--json", dest="json_out", type=Path, help="write the full report here"),
         arg("--plot", dest="plot_out", type=Path, help="write the λ_size Pareto plot (PNG) here"),
         arg("--quick", action="store_true", help="fixed-seed 1,500/300 slice, 1 seed (< 5 min)"),
         arg("--seeds", type=positive_int, default=3),
         arg("--recipe", choices=("bench", "product"), default="bench",
             help="bench: the frozen-encoder recipe of docs/benchmarks.md (default); "
                  "product: the daemon's own recipe from the THALAMUS_TRAIN_* settings"),
         show=_show_report, cli={"progress": True}),
    verb("demo-dataset", demo_dataset,
         arg("--out", type=Path, required=True, help="output directory (train.jsonl, test.jsonl, models.json)"),
         arg("--seed", type=int, default=0, help="demo library seed"),
         show=_show_written, fails=lambda written: bool(written.problems), cli={"progress": True}),
    verb("bandit-training", bandit_training,
         arg("--dataset", type=Path, required=True, help="directory with train.*/test.* holding every expert's loss"),
         arg("--quick", action="store_true", help="fixed-seed 1,500/300 slice, max length 128 (a few minutes)"),
         arg("--seeds", type=positive_int, default=3, help="logging draws per policy (default 3)"),
         arg("--policies", default="off,epsilon:0.05,epsilon:0.2,softmax:0.1",
             help="comma-separated logging policies in THALAMUS_EXPLORE syntax"),
         arg("--margin", type=float, default=0.25, help="exploration margin in loss-scale units (default 0.25)"),
         arg("--seed-prompts", type=positive_int, default=200, help="fully labelled prompts of the weak router"),
         arg("--json", dest="json_out", type=Path, help="write the full report here"),
         show=_show_bandit, cli={"progress": True}),
    verb("faults", faults,
         arg("--scenarios", default="swap,outage,worker-kill,daemon-kill", help="comma-separated, run in order"),
         arg("--rate", type=float, default=10.0, help="/v1/route requests per second (default 10)"),
         arg("--quick", action="store_true", help="3 swap cycles, a 4 s outage, one kill per mode (~2.5 min)"),
         arg("--backbone", default="tiny", help="tiny (default), minilm, or a model directory"),
         arg("--admin-url", help="PostgreSQL to create the scenarios' databases from "
                                 "(default postgresql+psycopg://postgres@127.0.0.1:5432/postgres)"),
         arg("--broker-url", help="Redis database worker-kill uses and FLUSHES "
                                  "(default THALAMUS_TEST_REDIS_URL or redis://127.0.0.1:6379/0)"),
         arg("--json", dest="json_out", type=Path, help="also write the rows here"),
         show=_show_faults, fails=lambda rows: not rows or any(not r.passed for r in rows)),
    verb("ope", ope,
         arg("--sizes", default="1000,5000", help="logged rows per set, comma-separated"),
         arg("--epsilons", default="0.05,0.1,0.2", help="exploration shares of the logging policy"),
         arg("--repetitions", type=positive_int, default=40),
         arg("--seed", type=int, default=0),
         show=_show_ope),
    verb("shadow", shadow,
         arg("--rate", type=float, default=10.0, help="/v1/route requests per second (default 10)"),
         arg("--seconds", type=float, default=30.0, help="seconds of load per mode and round (default 30)"),
         arg("--rounds", type=positive_int, default=2, help="rounds; the order of the modes rotates (default 2)"),
         arg("--shares", type=unit_share, nargs="+", help="shadow shares to measure (default 0.2 1.0)"),
         arg("--nice", type=int, nargs="+", help="THALAMUS_SHADOW_NICE values, one daemon each (default 10)"),
         arg("--backbone", default="minilm", help="minilm (default, the product's), tiny, or a model directory"),
         arg("--admin-url", help="PostgreSQL to create the benchmark's database from "
                                 "(default postgresql+psycopg://postgres@127.0.0.1:5432/postgres)"),
         arg("--json", dest="json_out", type=Path, help="also write the report here"),
         show=_show_shadow),
    verb("loop", loop,
         arg("--dataset", type=Path, required=True, help="directory with train.*/test.* [+ models.json], or one file"),
         arg("--scenario", choices=("cold", "drift", "new-expert", "degraded"), default="cold"),
         arg("--feedback", choices=("bandit", "labelled", "full"), default="bandit",
             help="bandit: the served expert's loss only (default); labelled: and every expert's on the requests "
                  "the daemon samples for labels (THALAMUS_LABEL_SHARE); full: every expert's on every request"),
         arg("--requests", type=positive_int, help="stream length (default: one pass over the pool)"),
         arg("--cycle", type=positive_int, default=500, help="requests between runs of the jobs (default 500)"),
         arg("--window", type=positive_int, default=250, help="requests per reported window (default 250)"),
         arg("--seed", type=int, default=0),
         arg("--explore", help="THALAMUS_EXPLORE for this run (default: the settings', i.e. the product's)"),
         arg("--no-offline", dest="offline", action="store_false",
             help="skip the offline full-information router baseline"),
         arg("--quick", action="store_true",
             help="900 rows, 600 requests, jobs every 150, encoder frozen (about 2 min)"),
         arg("--lora", action="store_true",
             help="train the router with the settings' own recipe (LoRA by default) instead of the frozen encoder "
                  "(THALAMUS_TRAIN_LORA_R=0, 1 epoch, the head still selected); ~10x slower per cycle on a CPU"),
         arg("--json", dest="json_out", type=Path, help="write the full report here"),
         arg("--plot", dest="plot_out", type=Path, help="write the score-over-stream plot (PNG) here"),
         arg("--keep-home", type=Path, help="run in this new directory and keep it (its database and router "
                                            "versions), for python -m benchmarks.head_truth"),
         show=_show_loop, fails=lambda report: bool(report["failures"]), cli={"progress": True}),
    verb("finetune", finetune,
         arg("--traffic", type=positive_int, default=600, help="traffic prompts routed (default 600)"),
         arg("--heldout", type=positive_int, default=300, help="held-out prompts measured (default 300)"),
         arg("--epochs", type=positive_int, default=2, help="fine-tuning epochs per expert (default 2)"),
         arg("--router-epochs", type=positive_int, default=1, help="router LoRA epochs per training (default 1)"),
         arg("--library-steps", type=positive_int, default=120,
             help="training steps per expert when no demo library exists and a small one is built (default 120)"),
         arg("--library", type=Path, help="a demo library directory (default THALAMUS_HOME/experts/demo, else built)"),
         arg("--work", type=Path, help="throw-away directory (default THALAMUS_HOME/bench-finetune-<id>)"),
         arg("--experts", default="small", help="small (every local expert but the largest, default), all, or names"),
         arg("--min-routed-prompts", type=positive_int, default=10,
             help="an expert the router sent fewer prompts is reported as skipped (default 10)"),
         arg("--router-seeds", type=positive_int, default=3,
             help="router trainings per arm, train_router seeds 0..K-1, the same in both arms (default 3)"),
         arg("--json", dest="json_out", type=Path, help="also write the report here"),
         show=_show_finetune, cli={"progress": True}),
    verb("gateway", gateway,
         arg("--rate", type=float, default=20.0, help="requests per second on each path (default 20)"),
         arg("--seconds", type=float, default=15.0, help="seconds per path and round (default 15)"),
         arg("--rounds", type=positive_int, default=2),
         arg("--backbone", default=None, help="the router's encoder directory (default: MiniLM)"),
         arg("--json", dest="json_out", type=Path, help="also write the report here"),
         show=print_json, fails=lambda report: any(report[p]["failed"] for p in ("direct", "passthrough", "routed"))),
    verb("serve", serve,
         arg("--dataset", type=Path, default=Path("../shared/data/dcrouter"),
             help="dataset directory: its experts, its train prompts (the memory), its test prompts (the load); "
                  "default ../shared/data/dcrouter"),
         arg("--rates", help="arrival rates in requests/s, comma-separated (default 10,50,100,200,300,400; "
                             "--quick: 5,20)"),
         arg("--seconds", type=float, help="seconds of load per rate (default 10; --quick: 2)"),
         arg("--database-url", help="log to a fresh database on this PostgreSQL server (dropped afterwards) "
                                    "instead of the throw-away home's SQLite"),
         arg("--memory-rows", type=positive_int,
             help="neighbour memory rows (default: the train prompts; more: perturbed copies of them)"),
         arg("--paths", default="fast,torch", help="fast (THALAMUS_INFERENCE=auto) and/or torch (default both)"),
         arg("--workers", type=positive_int, help="THALAMUS_WORKERS for the daemons"),
         arg("--json", dest="json_out", type=Path, help="also write the report here"),
         arg("--plot", dest="plot_out", type=Path, help="write latency p50/p95/p99 against the rate (PNG) here"),
         arg("--quick", action="store_true", help="rates 5,20, 2 s each, 128 embedded train prompts (about a minute)"),
         arg("--no-swap", dest="swap", action="store_false",
             help="skip the hot swap under load after each path's sweep"),
         arg("--swap-rate", type=float, help="arrival rate during the hot swap (default: the path's sustained rate)"),
         show=_show_serve, fails=_serve_failed),
))
