"""Faults under steady load: router swaps, PostgreSQL restart and outage, worker SIGKILL, daemon kill -9.

    HF_HUB_OFFLINE=1 python -m benchmarks.faults [--scenarios swap,outage,worker-kill,daemon-kill]
        [--rate 10] [--quick] [--json OUT] [--backbone tiny|minilm|PATH] [--broker-url redis://…/N]

Each scenario gets a fresh PostgreSQL database and THALAMUS_HOME (``benchmarks/stack.py``), real
``thalamus serve`` / ``thalamus worker`` processes, and open-loop load on /v1/route (one request in
five also posts /v1/feedback). It counts, per fault:

- sent / answered: /v1/route requests sent, and answered 200;
- failed: /v1/route answered with anything but 200 or not answered at all, plus /v1/feedback answered
  with anything but 202 — except a feedback 503 between the database fault and the recovery (the
  documented answer during an outage) and, in daemon-kill only, connection errors between the kill
  and the restarted daemon's first healthy answer (counted as ``refused``: no daemon was running);
- written / lost: answered request ids with a row in ``requests`` (read directly from PostgreSQL)
  once the daemon has recovered, and answered ids without one;
- recovery: swap, the slowest swap from the activation's commit until /v1/status serves it; outage,
  from the database's return until /healthz is ok and the writer queue is empty; worker-kill, from
  the SIGKILL until the re-run succeeded; daemon-kill, from the kill until the restarted daemon is
  healthy and every row it answered before the kill is written (spool on) or until healthy (off).

PostgreSQL is never restarted: the daemon reaches it through ``benchmarks/tcpproxy.py``, whose
process is killed (every connection drops at once, as in a restart or crash) and started again.
The worker-kill scenario flushes the Redis database given by ``--broker-url`` (use one of its own).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from benchmarks.loadgen import Sent, SteadyLoad, poll_until
from benchmarks.stack import ADMIN_URL, Stack, build_tiny_backbone, kill, route_bodies
from benchmarks.tcpproxy import ProxyProcess

SCENARIOS = ("swap", "outage", "worker-kill", "daemon-kill")
FEEDBACK_EVERY = 5
SLOW_TRAINING = {"epochs": 30, "patience": 30}  # long enough to be caught mid-training on the tiny backbone


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long and how often: the full run, or ``Plan.quick()``."""

    rate: float = 10.0
    steady_s: float = 5.0  # load before and after each fault
    swap_cycles: int = 20  # one cycle: approve/activate version 2, roll back to version 1
    swap_interval_s: float = 2.0
    restart_gap_s: float = 1.0
    outage_s: float = 15.0
    kills: int = 3  # daemon kills per spool mode

    @classmethod
    def quick(cls, rate: float = 10.0) -> Plan:
        return cls(rate=rate, steady_s=2.0, swap_cycles=3, swap_interval_s=1.0, outage_s=4.0, kills=1)


@dataclasses.dataclass(frozen=True)
class Setup:
    """Where the scenarios run: the router's encoder (None: MiniLM), PostgreSQL's admin URL, the Redis broker."""

    backbone: str | None
    admin_url: str = ADMIN_URL
    broker_url: str = "redis://127.0.0.1:6379/0"
    log: Callable[[str], None] = print


@dataclasses.dataclass
class FaultRow:
    """One line of the results table."""

    scenario: str
    fault: str
    sent: int = 0
    answered: int = 0
    failed: int = 0
    refused: int = 0
    written: int = 0
    lost: int = 0
    feedback_accepted: int = 0
    feedback_503: int = 0
    recovery_s: float | None = None
    detail: str = ""
    loss_expected: bool = False  # the spool-off row: losing rows on kill -9 is the documented trade-off
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.failed == 0 and not self.problems and (self.lost == 0 or self.loss_expected)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "passed": self.passed}


def _within(moment: float | None, window: tuple[float, float] | None) -> bool:
    return moment is not None and window is not None and window[0] <= moment <= window[1]


def tally(row: FaultRow, sent: Sequence[Sent], down: tuple[float, float] | None = None,
          db_down: tuple[float, float] | None = None) -> list[str]:
    """Add ``sent`` to the row's counts (see the module docstring); returns the answered request ids."""
    answered = []
    for s in sent:
        row.sent += 1
        if s.status == 200 and s.request_id:
            row.answered += 1
            answered.append(s.request_id)
        elif s.status is None and _within(s.finished, down):
            row.refused += 1
        else:
            row.failed += 1
        if s.feedback_status == 202:
            row.feedback_accepted += 1
        elif s.feedback_status == 503 and _within(s.feedback_at, db_down):
            row.feedback_503 += 1
        elif s.feedback_error and _within(s.feedback_at, down):
            row.refused += 1
        elif s.feedback_status is not None or s.feedback_error:
            row.failed += 1
    return answered


def settle(stack: Stack, row: FaultRow, ids: Sequence[str], timeout: float) -> float:
    """Wait (up to ``timeout``) until every id has its row; count written and lost. Returns when it ended."""
    missing, deadline = set(ids), time.monotonic() + timeout
    while True:
        missing -= stack.written(missing)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    row.written += len(ids) - len(missing)
    row.lost += len(missing)
    return time.monotonic()


def _serving(stack: Stack, version: int) -> bool:
    return bool(stack.status()["router_version"] == version)


# --- scenarios ---------------------------------------------------------------------------------

def swap(plan: Plan, setup: Setup) -> list[FaultRow]:
    """Alternate version 2 and version 1 ``swap_cycles`` times at a steady rate under load."""
    from jobs.promote import activate_version, approve, rollback
    from store.db import session_scope

    row = FaultRow("swap", f"{plan.swap_cycles} approve/rollback cycles, one swap every {plan.swap_interval_s:g} s")
    with Stack("swap", setup.backbone, setup.admin_url) as stack:
        stack.serve()
        first, second = stack.versions
        swaps_before = stack.status()["swaps"]
        load = SteadyLoad(stack.base, route_bodies(), plan.rate, FEEDBACK_EVERY, headers=stack.headers).start()
        time.sleep(plan.steady_s)
        latencies = []
        for k in range(2 * plan.swap_cycles):
            started = time.monotonic()
            target = second if k % 2 == 0 else first
            with session_scope(stack.settings) as session:
                if k == 0:
                    approve(session, second, actor="bench-faults", reason="bench faults: swap")
                elif target == first:
                    rollback(session, actor="bench-faults", reason="bench faults: swap back")
                else:
                    activate_version(session, second, actor="bench-faults", reason="bench faults: swap")
            committed = time.monotonic()
            served = poll_until(functools.partial(_serving, stack, target), 30, poll=0.05)
            if served is None:
                row.problems.append(f"swap {k + 1} to version {target} not served after 30 s")
            else:
                latencies.append(served - committed)
            time.sleep(max(0.0, started + plan.swap_interval_s - time.monotonic()))
        time.sleep(plan.steady_s)
        answered = tally(row, load.stop())
        settle(stack, row, answered, timeout=30)
        status = stack.status()
        swaps = status["swaps"] - swaps_before
        if swaps != 2 * plan.swap_cycles:
            row.problems.append(f"the daemon counted {swaps} swaps, expected {2 * plan.swap_cycles}")
        if status["swap_failures"]:
            row.problems.append(f"{status['swap_failures']} failed swaps")
    if latencies:
        ordered = sorted(latencies)
        row.recovery_s = ordered[-1]
        row.detail = (f"{len(latencies)} swaps served (daemon counted {swaps}); activation → served "
                      f"median {ordered[len(ordered) // 2]:.2f} s, max {ordered[-1]:.2f} s")
    setup.log(f"swap: {row.detail}")
    return [row]


def _database_fault(stack: Stack, proxy: ProxyProcess, plan: Plan, name: str, fault: str, gap: float,
                    log: Callable[[str], None]) -> FaultRow:
    row = FaultRow(name, fault)
    load = SteadyLoad(stack.base, route_bodies(), plan.rate, FEEDBACK_EVERY, headers=stack.headers).start()
    time.sleep(plan.steady_s)
    down_at = time.monotonic()
    proxy.kill()
    degraded = poll_until(lambda: httpx.get(f"{stack.base}/healthz", timeout=2).json()["status"] == "degraded",
                          gap, 0.2)
    time.sleep(max(0.0, down_at + gap - time.monotonic()))
    proxy.start()
    back_at = time.monotonic()
    recovered = poll_until(lambda: httpx.get(f"{stack.base}/healthz", timeout=5).json()["status"] == "ok"
                       and stack.status()["writer"]["queue_depth"] == 0, 120)
    if recovered is None:
        row.problems.append("/healthz not ok with an empty writer queue 120 s after the database came back")
        recovered = time.monotonic()
    time.sleep(plan.steady_s)
    answered = tally(row, load.stop(), db_down=(down_at, recovered))
    settle(stack, row, answered, timeout=30)
    row.recovery_s = recovered - back_at
    row.detail = (f"database away {back_at - down_at:.1f} s; /healthz degraded "
                  + (f"after {degraded - down_at:.1f} s" if degraded else "not seen") + "; /v1/feedback 503 meanwhile")
    log(f"{name}: {row.detail}")
    return row


def outage(plan: Plan, setup: Setup) -> list[FaultRow]:
    """The daemon reaches PostgreSQL through a proxy: killed and restarted at once, then killed for ``outage_s``."""
    with Stack("outage", setup.backbone, setup.admin_url) as stack:
        direct = make_url(stack.settings.db_url)
        proxy = ProxyProcess(target=(direct.host or "127.0.0.1", direct.port or 5432))
        proxy.start()
        try:
            stack.serve(database_url=direct.set(host=proxy.host, port=proxy.port).render_as_string(False))
            return [
                _database_fault(stack, proxy, plan, "pg-restart",
                                f"all connections dropped, back after {plan.restart_gap_s:g} s",
                                plan.restart_gap_s, setup.log),
                _database_fault(stack, proxy, plan, "pg-outage", f"database unreachable for {plan.outage_s:g} s",
                                plan.outage_s, setup.log),
            ]
        finally:
            proxy.kill()


def worker_kill(plan: Plan, setup: Setup) -> list[FaultRow]:
    """SIGKILL a worker's whole process group mid-training; a second worker finds the run lost and re-runs it."""
    import redis

    from jobs.runs import get_run
    from store.schema import JobRun
    from workers.dispatch import submit, wait

    def current(run_id: int) -> JobRun:
        run = get_run(settings, run_id)
        assert run is not None, f"job run {run_id} disappeared"
        return run

    row = FaultRow("worker-kill", "worker process group SIGKILLed mid-train_router (heartbeat 1 s, lost after 4 s)")
    broker_url = setup.broker_url
    redis.Redis.from_url(broker_url).flushdb()
    try:
        with Stack("worker-kill", setup.backbone, setup.admin_url, broker_url=broker_url, job_heartbeat_seconds=1,
                   job_lost_after_seconds=4) as stack:
            settings = stack.settings
            stack.serve()
            load = SteadyLoad(stack.base, route_bodies(), plan.rate, FEEDBACK_EVERY, headers=stack.headers).start()
            worker_args = ["worker", "--pool", "prefork", "--concurrency", "1"]
            first = stack.spawn(worker_args, "worker-a.log", stack.env())
            if poll_until(lambda: "ready" in stack.log_tail("worker-a.log", 100_000), 180, 0.2) is None:
                raise RuntimeError(f"worker not ready: {stack.log_tail('worker-a.log')}")
            run_id = submit(settings, "train_router", SLOW_TRAINING, trigger="bench-faults")

            def training() -> bool:
                run = current(run_id)
                if run.status not in ("queued", "running"):
                    raise RuntimeError(f"run {run_id} finished before it could be killed: {run.status}")
                return run.status == "running" and run.heartbeat_at is not None and run.progress > 0.1

            if poll_until(training, 180) is None:
                raise RuntimeError(f"run {run_id} never started training")
            killed_at = time.monotonic()
            kill(first)
            stack.spawn(worker_args, "worker-b.log", stack.env())
            lost_at = poll_until(lambda: current(run_id).status == "lost", 120, 0.2)
            final = wait(settings, run_id, timeout=300)
            done_at = time.monotonic()
            if lost_at is None:
                row.problems.append("the killed worker's run was never marked lost")
            if final.status != "succeeded" or final.retry_of != run_id:
                row.problems.append(f"re-run {final.id} of run {run_id}: {final.status} {final.message or ''}"[:300])
            time.sleep(plan.steady_s)
            answered = tally(row, load.stop())
            settle(stack, row, answered, timeout=30)
            row.recovery_s = done_at - killed_at
            row.detail = (f"run {run_id} marked lost after {lost_at - killed_at:.1f} s" if lost_at else "never lost")
            row.detail += f"; re-run {final.id} {final.status} {done_at - killed_at:.1f} s after the kill"
    finally:
        redis.Redis.from_url(broker_url).flushdb()  # the dead worker's task is still unacked there
    setup.log(f"worker-kill: {row.detail}")
    return [row]


def daemon_kill(plan: Plan, setup: Setup) -> list[FaultRow]:
    """kill -9 the daemon under load and restart it, ``kills`` times with the spool on (the default), then off."""
    rows = []
    with Stack("daemon-kill", setup.backbone, setup.admin_url) as stack:
        for spool in (True, False):
            mode = "on (default)" if spool else "off"
            row = FaultRow(f"daemon-kill, spool {mode}", f"kill -9 under load and restart, {plan.kills}×",
                           loss_expected=not spool)
            daemon = stack.serve(spool=spool)
            recoveries = []
            for _ in range(plan.kills):
                load = SteadyLoad(stack.base, route_bodies(), plan.rate, FEEDBACK_EVERY, headers=stack.headers).start()
                time.sleep(plan.steady_s)
                killed_at = time.monotonic()
                kill(daemon)
                daemon = stack.spawn(["serve"], "daemon.log", stack.env(spool=spool))
                stack.wait_healthy(daemon)
                healthy_at = time.monotonic()
                before_kill = [s.request_id for s in load.sent if s.request_id and s.finished < killed_at]
                lost_before = row.lost
                written_at = settle(stack, row, before_kill, timeout=30 if spool else 5)
                recoveries.append((written_at if row.lost == lost_before else healthy_at) - killed_at)
                time.sleep(plan.steady_s)
                sent = load.stop()
                answered = tally(row, sent, down=(killed_at, healthy_at))
                counted = set(before_kill)
                settle(stack, row, [i for i in answered if i not in counted], timeout=30)
            daemon.terminate()  # a clean stop (the writer drains) before the next mode
            daemon.wait(30)
            row.recovery_s = max(recoveries)
            row.detail = f"restart to healthy and rows written: {', '.join(f'{r:.1f}' for r in recoveries)} s"
            setup.log(f"daemon-kill spool {mode}: lost {row.lost} of {row.answered}; {row.detail}")
            rows.append(row)
    return rows


# --- run and report ----------------------------------------------------------------------------

def run(scenarios: Sequence[str] = SCENARIOS, plan: Plan | None = None, backbone: str = "tiny",
        admin_url: str = ADMIN_URL, broker_url: str | None = None,
        log: Callable[[str], None] = print) -> list[FaultRow]:
    """Run the scenarios in order; returns the table's rows.

    ``backbone``: ``tiny`` (a 2-layer random BERT with MiniLM's tokenizer, built in a temp dir: fast),
    ``minilm`` (the product default), or a model directory. ``admin_url``: a PostgreSQL database to
    create and drop the scenarios' databases from. ``broker_url``: the Redis database worker-kill uses
    and flushes (default ``THALAMUS_TEST_REDIS_URL``, else redis://127.0.0.1:6379/0).
    """
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    plan = plan or Plan()
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the load checks of every swap would draw one each
    broker_url = broker_url or os.environ.get("THALAMUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    scenario = {"swap": swap, "outage": outage, "worker-kill": worker_kill, "daemon-kill": daemon_kill}
    with tempfile.TemporaryDirectory(prefix="thalamus-faults-backbone-") as scratch:
        path = {"tiny": None, "minilm": None}.get(backbone, backbone)
        if backbone == "tiny":
            path = build_tiny_backbone(Path(scratch) / "tiny")
        setup = Setup(path, admin_url, broker_url, log)
        rows: list[FaultRow] = []
        for name in scenarios:
            log(f"scenario {name} …")
            started = time.monotonic()
            rows += scenario[name](plan, setup)
            log(f"scenario {name} done in {time.monotonic() - started:.0f} s")
    return rows


def table(rows: Sequence[FaultRow]) -> str:
    """The results as a Markdown table."""
    header = ("| scenario | fault | sent | answered 200 | failed | refused (daemon down) | rows written | rows lost "
              "| feedback 202 / 503 | recovery s | detail |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        recovery = f"{r.recovery_s:.2f}" if r.recovery_s is not None else "—"
        lost = f"{r.lost}" + (" (expected)" if r.lost and r.loss_expected else "")
        detail = "; ".join([r.detail, *r.problems])
        lines.append(f"| {r.scenario} | {r.fault} | {r.sent} | {r.answered} | {r.failed} | {r.refused} | {r.written} "
                     f"| {lost} | {r.feedback_accepted} / {r.feedback_503} | {recovery} | {detail} |")
    return "\n".join(lines)


def parse_request(scenarios: str, rate: float, *, quick: bool = False) -> tuple[list[str], Plan]:
    """The scenarios named in a comma-separated list and the plan; ValueError (one sentence) on bad input."""
    names = [s.strip() for s in scenarios.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown or not names:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(SCENARIOS)}.")
    if not rate > 0:
        raise ValueError("--rate must be a positive number of requests per second.")
    return names, (Plan.quick(rate) if quick else Plan(rate=rate))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, in order (default {','.join(SCENARIOS)})")
    parser.add_argument("--rate", type=float, default=10.0, help="/v1/route requests per second (default 10)")
    parser.add_argument("--quick", action="store_true", help="3 swap cycles, a 4 s outage, one kill per mode")
    parser.add_argument("--backbone", default="tiny", help="tiny (default), minilm, or a model directory")
    parser.add_argument("--admin-url", default=ADMIN_URL, help=f"PostgreSQL to create the databases from ({ADMIN_URL})")
    parser.add_argument("--broker-url", help="Redis database for worker-kill, flushed (default "
                                             "THALAMUS_TEST_REDIS_URL or redis://127.0.0.1:6379/0)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    try:
        scenarios, plan = parse_request(args.scenarios, args.rate, quick=args.quick)
    except ValueError as exc:
        parser.exit(2, f"{exc}\n")
    rows = run(scenarios, plan, backbone=args.backbone, admin_url=args.admin_url, broker_url=args.broker_url,
               log=lambda line: print(line, file=sys.stderr, flush=True))
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"plan": dataclasses.asdict(plan), "backbone": args.backbone,
                                         "rows": [r.as_dict() for r in rows]}, indent=2))
    failed = [r.scenario for r in rows if not r.passed]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
