"""The ``thalamus`` command line: one function per verb, as in alembic.

Bad input ends with a sentence on stderr and exit code 2, and changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from store.settings import Settings, get_settings

EXIT_BAD_INPUT = 2


class CliError(Exception):
    """A user mistake: printed as one sentence, exit code 2."""


def _settings(args: argparse.Namespace) -> Settings:
    return get_settings()


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, sort_keys=False))


def _parse_pairs(pairs: Sequence[str], what: str) -> dict[str, Any]:
    """``k=v`` pairs; numbers become floats (or ints), the rest stay strings."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"{what} {pair!r} is not of the form KEY=VALUE")
        value: Any = raw
        try:
            number = float(raw)
        except ValueError:
            pass
        else:
            if not math.isfinite(number):
                raise CliError(f"{what} {key}={raw} is not a finite number")
            value = int(number) if number.is_integer() and "." not in raw and "e" not in raw.lower() else number
        result[key.strip()] = value
    return result


# --- services ------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> None:
    from daemon.server import run_server

    run_server(_settings(args))


def cmd_up(args: argparse.Namespace) -> None:
    from daemon.embedded import run_all

    settings = _settings(args)
    _upgrade(settings)
    run_all(settings, pool=args.pool)


def cmd_worker(args: argparse.Namespace) -> None:
    from jobs.registry import queues as job_queues
    from workers.app import app

    queues = args.queues or ",".join(job_queues())
    argv = ["worker", "-Q", queues, "--concurrency", str(args.concurrency), "--pool", args.pool,
            "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
    app.worker_main(argv)


def cmd_scheduler(args: argparse.Namespace) -> None:
    from workers.scheduler import run_forever

    run_forever(_settings(args))


# --- database ------------------------------------------------------------------------------

def _upgrade(settings: Settings) -> None:
    from store.migrate import upgrade

    upgrade(settings)


def cmd_db_upgrade(args: argparse.Namespace) -> None:
    settings = _settings(args)
    _upgrade(settings)
    from store.migrate import current_revision

    print(f"database at revision {current_revision(settings)}")


# --- experts -------------------------------------------------------------------------------

@contextlib.contextmanager
def _percent_bar(desc: str) -> Iterator[Callable[[float, str], None]]:
    """A 0–100 % progress bar on stderr; yields the ``progress(fraction, message)`` callback jobs take."""
    from tqdm import tqdm

    with tqdm(total=100, desc=desc, unit="%", file=sys.stderr) as bar:
        def progress(fraction: float, message: str) -> None:
            bar.n = round(100 * fraction)
            bar.set_postfix_str(message[:60])
            bar.refresh()

        yield progress


def cmd_experts_build_demo(args: argparse.Namespace) -> None:
    from experts.demo import build_demo_library
    from experts.registry import register_experts
    from store.db import session_scope

    settings = _settings(args)
    _upgrade(settings)
    with _percent_bar("demo experts") as progress:
        library = build_demo_library(settings.experts_dir / "demo", seed=args.seed, progress=progress)
    with session_scope(settings) as session:
        experts = register_experts(session, library.experts)
        names = [f"{e.name} (v{e.version})" for e in experts]
    print(f"demo library ready: {', '.join(names)}")


def cmd_experts_add(args: argparse.Namespace) -> None:
    from experts.registry import register_experts
    from store.db import session_scope

    settings = _settings(args)
    spec = {"name": args.name, "kind": args.kind, "uri": args.uri, "attributes": _parse_pairs(args.attr, "--attr")}
    with session_scope(settings) as session:
        (expert,) = register_experts(session, [spec])
        print(f"expert {expert.name} registered: kind {expert.kind}, version {expert.version}")


def cmd_experts_list(args: argparse.Namespace) -> None:
    from store.db import session_scope
    from store.queries import active_experts

    with session_scope(_settings(args)) as session:
        for e in active_experts(session):
            print(f"{e.name:32} {e.kind:10} v{e.version:<3} {json.dumps(e.attributes, default=str)}")


# --- ingestion -----------------------------------------------------------------------------

def cmd_ingest_losses(args: argparse.Namespace) -> None:
    from jobs.ingest import ingest_file

    result = ingest_file(_settings(args), Path(args.file))
    print(f"ingested {result['records']} loss records for {result['prompts']} prompts "
          f"and {len(result['experts'])} experts")


# --- jobs ----------------------------------------------------------------------------------

def _progress_bar(run_id: int) -> tuple[Callable[[Any], None], Callable[[Any, Any], None]]:
    """``wait``'s callbacks: a progress bar, and a line when the run is lost and followed to its re-run."""
    from tqdm import tqdm

    from jobs.runs import JobStatus

    bar = tqdm(total=100, desc=f"job {run_id}", unit="%", file=sys.stderr)

    def show(run: Any) -> None:
        bar.set_description(f"job {run.id}")
        bar.n = round(100 * (run.progress or 0.0))
        bar.set_postfix_str(f"{run.status}: {(run.message or '')[:60]}")
        bar.refresh()
        if run.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):  # a lost run goes on as its re-run
            bar.close()

    def requeued(lost: Any, retry: Any) -> None:
        bar.write(f"job run {lost.id} was lost ({lost.message}); following its re-run {retry.id}", file=sys.stderr)
        bar.reset()

    return show, requeued


def cmd_jobs_run(args: argparse.Namespace) -> None:
    from jobs.registry import get_job
    from workers.dispatch import submit, wait

    settings = _settings(args)
    get_job(args.name)  # an unknown name: one sentence naming the known jobs, exit 2
    params = _parse_pairs(args.param, "--param")
    if args.inline:
        from jobs.runs import create_run
        from workers.tasks import execute

        run_id = create_run(settings, args.name, params, trigger="cli-inline")
        execute(settings, run_id)
    else:
        run_id = submit(settings, args.name, params, trigger="cli")
        print(f"job run {run_id} queued ({args.name})", file=sys.stderr)
        if not args.wait:
            print(run_id)
            return
    show, requeued = _progress_bar(run_id)
    lost: list[int] = []
    run = wait(settings, run_id, timeout=args.timeout, on_progress=show,
               on_requeue=lambda old, new: (lost.append(old.id), requeued(old, new)))
    _print_json({"run": run.id, "kind": run.kind, "status": run.status, "attempt": run.attempt, "lost_runs": lost,
                 "result": run.result, "error": (run.message if run.status != "succeeded" else None)})
    if run.status != "succeeded":
        sys.exit(1)


def _age(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    return f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"


def cmd_jobs_list(args: argparse.Namespace) -> None:
    """One line per run; a run's state is told as it is: a silent worker, a lost run and its re-run."""
    from sqlalchemy import select

    from jobs.runs import JobStatus, as_utc
    from store.db import session_scope
    from store.schema import JobRun, utcnow

    settings = _settings(args)
    with session_scope(settings) as session:
        runs = list(session.scalars(select(JobRun).order_by(JobRun.id.desc()).limit(args.limit)))
        ids = [run.id for run in runs]
        retries = dict(session.execute(select(JobRun.retry_of, JobRun.id).where(JobRun.retry_of.in_(ids))).all())
    now = utcnow()
    print(f"{'id':>5} {'kind':16} {'trigger':12} {'status':18} {'progress':>8}  {'try':>3} {'worker':24} "
          f"{'heartbeat':>9}  {'created':19}  message")
    for run in runs:
        status = run.status
        beat = "-" if run.heartbeat_at is None or status not in (JobStatus.RUNNING, JobStatus.LOST) else \
            _age((now - as_utc(run.heartbeat_at)).total_seconds())
        if status == JobStatus.LOST and run.id in retries:
            status = f"lost → run {retries[run.id]}"
        elif status == JobStatus.RUNNING and run.heartbeat_at is not None and \
                (now - as_utc(run.heartbeat_at)).total_seconds() > settings.job_lost_after_seconds:
            status = "running, silent"  # the next sweep marks it lost
        print(f"{run.id:5} {run.kind:16} {run.trigger:12} {status:18} {100 * run.progress:7.1f}%  {run.attempt:3} "
              f"{(run.worker or '-')[:24]:24} {beat:>9}  {run.created_at:%Y-%m-%d %H:%M:%S}  "
              f"{(run.message or '')[:120]}")


# --- admin ---------------------------------------------------------------------------------

def _version_summary(version: Any) -> dict[str, Any]:
    candidate = (version.metrics or {}).get("candidate", {})
    return {"id": version.id, "status": version.status, "parent": version.parent_id,
            "created_at": version.created_at, "routed_loss": candidate.get("routed_loss"),
            "hit_rate": candidate.get("hit_rate")}


def cmd_admin_versions(args: argparse.Namespace) -> None:
    from sqlalchemy import select

    from store.db import session_scope
    from store.schema import RouterVersion

    with session_scope(_settings(args)) as session:
        versions = list(session.scalars(select(RouterVersion).order_by(RouterVersion.id)))
        print(f"{'id':>4}  {'status':10} {'parent':>6}  {'created':19}  {'routed loss':>11}  {'hit rate':>8}")
        for v in versions:
            s = _version_summary(v)
            loss = "-" if s["routed_loss"] is None else f"{s['routed_loss']:.4f}"
            hit = "-" if s["hit_rate"] is None else f"{s['hit_rate']:.3f}"
            print(f"{v.id:>4}  {v.status:10} {str(v.parent_id or '-'):>6}  {v.created_at:%Y-%m-%d %H:%M:%S}  "
                  f"{loss:>11}  {hit:>8}")


def cmd_admin_show(args: argparse.Namespace) -> None:
    from store.db import session_scope
    from store.schema import RouterVersion

    with session_scope(_settings(args)) as session:
        version = session.get(RouterVersion, args.id)
        if version is None:
            raise CliError(f"router version {args.id} does not exist")
        _print_json({
            "id": version.id, "status": version.status, "parent": version.parent_id,
            "checkpoint": version.checkpoint_uri, "sha256": version.checkpoint_sha256,
            "experts": version.expert_order, "training_window": version.training_window,
            "metrics": version.metrics, "decided_by": version.decided_by, "decided_at": version.decided_at,
            "reason": version.reason, "created_at": version.created_at,
        })


def cmd_admin_approve(args: argparse.Namespace) -> None:
    from jobs.promote import approve
    from store.db import session_scope

    with session_scope(_settings(args)) as session:
        version = approve(session, args.id, actor=args.actor, reason=args.reason or "approved by admin")
        print(f"router version {version.id} approved and active")


def cmd_admin_activate(args: argparse.Namespace) -> None:
    from jobs.promote import activate_version
    from store.db import session_scope

    with session_scope(_settings(args)) as session:
        version = activate_version(session, args.id, actor=args.actor, reason=args.reason)
        print(f"router version {version.id} is active: {args.reason}")


def cmd_admin_reject(args: argparse.Namespace) -> None:
    from jobs.promote import reject
    from store.db import session_scope

    with session_scope(_settings(args)) as session:
        version = reject(session, args.id, actor=args.actor, reason=args.reason)
        print(f"router version {version.id} rejected: {version.reason}")


def cmd_admin_rollback(args: argparse.Namespace) -> None:
    from jobs.promote import rollback
    from store.db import session_scope

    with session_scope(_settings(args)) as session:
        version = rollback(session, actor=args.actor, reason=args.reason or "rollback by admin")
        print(f"rolled back: router version {version.id} is active again")


# --- demo and benchmarks -------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> None:
    from daemon.demo import run_demo

    report = run_demo(_settings(args), prompts=args.prompts)
    if report["failed_requests"] != 0 or report["active_version_after_swap"] != report["candidate_version"]:
        sys.exit(1)


# --- benchmarks ----------------------------------------------------------------------------

def cmd_bench_quality(args: argparse.Namespace) -> None:
    from benchmarks.quality import bench_recipe, run
    from benchmarks.report import format_report, plot
    from jobs.recipe import TrainRecipe

    dataset = Path(args.dataset)
    if not dataset.exists():
        raise CliError(f"dataset {dataset} does not exist")
    recipe = TrainRecipe.from_settings(_settings(args))
    if args.recipe == "bench":
        recipe = bench_recipe(recipe, quick=args.quick)
    report = run(dataset, recipe, seeds=args.seeds, quick=args.quick,
                 progress=lambda message: print(message, file=sys.stderr, flush=True))
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    if args.plot:
        plot(report, Path(args.plot))


def cmd_bench_demo_dataset(args: argparse.Namespace) -> None:
    from benchmarks.demo_dataset import export_demo_dataset
    from experts.demo import build_demo_library

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a directory")
    settings = _settings(args)
    with _percent_bar("demo dataset") as progress:
        library = build_demo_library(settings.experts_dir / "demo", seed=args.seed, verbose=False,
                                     progress=lambda f, m: progress(0.5 * f, m))
        counts = export_demo_dataset(library, out, progress=lambda f, m: progress(0.5 + 0.5 * f, m))
    print(f"wrote {counts['train']} train and {counts['test']} test rows to {args.out}; "
          f"next: thalamus bench quality --dataset {args.out}")


# --- parser --------------------------------------------------------------------------------

def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be a positive integer")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end like every other bad input: one sentence on stderr, exit code 2 (``-h`` shows usage).

    Subparsers are made with the parent's class, so every verb gets this too.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from jobs.registry import JOBS
    from jobs.registry import queues as job_queues

    parser = _Parser(prog="thalamus", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    verbs.add_parser("serve", help="run the HTTP daemon").set_defaults(func=cmd_serve)
    up = verbs.add_parser("up", help="run daemon + worker + scheduler together (embedded mode)")
    up.add_argument("--pool", default="solo", choices=["solo", "prefork", "threads"])
    up.set_defaults(func=cmd_up)
    worker = verbs.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--queues", help=f"comma-separated queues (default: {','.join(job_queues())})")
    worker.add_argument("--concurrency", type=_positive_int, default=1)
    worker.add_argument("--pool", default="prefork", choices=["solo", "prefork", "threads"])
    worker.set_defaults(func=cmd_worker)
    verbs.add_parser("scheduler", help="run the job scheduler").set_defaults(func=cmd_scheduler)

    db = verbs.add_parser("db", help="database schema").add_subparsers(dest="db_verb", required=True)
    db.add_parser("upgrade", help="apply Alembic migrations").set_defaults(func=cmd_db_upgrade)

    experts = verbs.add_parser("experts", help="the expert library").add_subparsers(dest="e_verb", required=True)
    build = experts.add_parser("build-demo", help="build the demo masked-LM experts from local text")
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(func=cmd_experts_build_demo)
    add = experts.add_parser("add", help="register an expert")
    add.add_argument("name")
    add.add_argument("--kind", required=True, choices=["masked-lm", "causal-lm", "external"])
    add.add_argument("--uri", help="local Hugging Face model directory (masked-lm / causal-lm)")
    add.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE",
                     help="attribute such as params=51e9 or cost=0.9 (repeatable)")
    add.set_defaults(func=cmd_experts_add)
    experts.add_parser("list", help="list active experts").set_defaults(func=cmd_experts_list)

    ingest = verbs.add_parser("ingest", help="bulk feedback").add_subparsers(dest="i_verb", required=True)
    losses = ingest.add_parser("losses", help="load reported losses from JSON/JSONL/CSV")
    losses.add_argument("file")
    losses.set_defaults(func=cmd_ingest_losses)

    jobs = verbs.add_parser("jobs", help="background jobs").add_subparsers(dest="j_verb", required=True)
    run = jobs.add_parser("run", help=f"trigger a job ({', '.join(JOBS)})",
                          epilog="jobs:\n" + "\n".join(f"  {s.name:16} {s.description}" for s in JOBS.values()),
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("name", help="the job to run (listed below)")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--no-wait", dest="wait", action="store_false", help="print the run id and return")
    run.add_argument("--inline", action="store_true", help="run in this process instead of on a worker")
    run.add_argument("--timeout", type=float, default=None)
    run.set_defaults(func=cmd_jobs_run)
    jobs_list = jobs.add_parser("list", help="recent job runs")
    jobs_list.add_argument("--limit", type=_positive_int, default=20)
    jobs_list.set_defaults(func=cmd_jobs_list)

    admin = verbs.add_parser("admin", help="router versions").add_subparsers(dest="a_verb", required=True)
    admin.add_parser("versions", help="list router versions").set_defaults(func=cmd_admin_versions)
    for name, func, help_text in (("show", cmd_admin_show, "show one version"),
                                  ("approve", cmd_admin_approve, "approve and activate a candidate"),
                                  ("activate", cmd_admin_activate,
                                   "activate any version that was not rejected (e.g. go back to a retired one)"),
                                  ("reject", cmd_admin_reject, "reject a candidate")):
        verb = admin.add_parser(name, help=help_text)
        verb.add_argument("id", type=_positive_int)
        if name != "show":
            verb.add_argument("--actor", default="admin")
            verb.add_argument("--reason", required=name in ("reject", "activate"), default=None)
        verb.set_defaults(func=func)
    back = admin.add_parser("rollback", help="re-activate the previously active version")
    back.add_argument("--actor", default="admin")
    back.add_argument("--reason", default=None)
    back.set_defaults(func=cmd_admin_rollback)

    demo = verbs.add_parser("demo", help="drive the whole loop once on the embedded default")
    demo.add_argument("--prompts", type=_positive_int, default=300)
    demo.set_defaults(func=cmd_demo)

    bench = verbs.add_parser("bench", help="benchmarks").add_subparsers(dest="b_verb", required=True)
    quality = bench.add_parser("quality", help="routing quality vs baselines on a loss/score dataset")
    quality.add_argument("--dataset", required=True, help="directory with train.*/test.* [+ models.json], or one file")
    quality.add_argument("--json", help="write the full report here")
    quality.add_argument("--plot", help="write the λ_size Pareto plot (PNG) here")
    quality.add_argument("--quick", action="store_true", help="fixed-seed 1,500/300 slice, 1 seed (< 5 min)")
    quality.add_argument("--seeds", type=_positive_int, default=3)
    quality.add_argument("--recipe", choices=["bench", "product"], default="bench",
                         help="bench: the frozen-encoder recipe of docs/benchmarks.md (default); "
                              "product: the daemon's own recipe from the THALAMUS_TRAIN_* settings")
    quality.set_defaults(func=cmd_bench_quality)
    demo_data = bench.add_parser("demo-dataset", help="score the demo library's traffic/held-out prompts with every "
                                                      "demo expert and write them as a bench quality dataset")
    demo_data.add_argument("--out", required=True, help="output directory (train.jsonl, test.jsonl, models.json)")
    demo_data.add_argument("--seed", type=int, default=0, help="demo library seed")
    demo_data.set_defaults(func=cmd_bench_demo_dataset)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    from jobs.errors import JobInputError, JobLocked

    try:
        args.func(args)
    except (CliError, JobInputError, JobLocked, ValueError, LookupError) as exc:
        print(f"thalamus: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
