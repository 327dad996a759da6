"""Serving latency and throughput of ``POST /v1/route`` under open-loop load (``thalamus bench serve``, issue 11).

Set-up, on a throw-away THALAMUS_HOME (SQLite; or a fresh PostgreSQL database with ``database_url``,
dropped afterwards): the dataset's experts registered as ``external`` (``/v1/route`` never calls
them), and a head-only router (``lora_r = 0``) built the way head-only training ends: the frozen
encoder's pooled top-``train_pool_layers`` states of the train prompts, a ridge head
(α = ``train_head_ridge``) and a k = 10 neighbour head over a memory of ``memory_rows`` rows (the train
prompts; beyond them, seeded perturbed copies of their embeddings, unit-normed, with the source row's
losses). Spreads over the 10 nearest rows are on (unit scale), so serving computes what a trained
router's does. It is registered with :func:`jobs.router_store.save_version` (which writes whatever
inference export the product makes) and activated.

Then, per path, a real ``thalamus serve`` (``torch``: ``THALAMUS_INFERENCE=torch``, the PyTorch baseline;
``fast``: ``THALAMUS_INFERENCE=auto``, the bundle's inference export where it has one), warmed up, is
driven at each arrival rate in turn, ascending, with the dataset's test prompts (``explore: false``,
auth off); a path's sweep stops once it is saturated (achieved < 80 % of the rate, or p99 > 5 s). The
inference each daemon really used is read from ``/v1/status`` (``router.inference``; absent = torch).

The load generator is Debian's ``wrk`` 4.1 (``make tools``) with ``serve_open_loop.lua``. The Debian
archive has neither wrk2 nor vegeta nor oha; ``hey`` paces each worker closed-loop and measures from the
actual send, so a stalled daemon would hide its queue (coordinated omission). wrk is C and epoll, so it
costs the 2-core machine little (its CPU seconds are reported), and its LuaJIT scripting lets us keep a
fixed schedule: request j is due at start + j / rate; with one connection per wrk thread each thread
sends its share, waiting in ``delay()`` for the slot, and every latency is measured **from the scheduled
time** (so a request that left late because its connection was still waiting counts that wait, as in
wrk2). It is not a pure open loop: at most ``connections`` requests are in flight (rate / 2, 4 to 200,
so half a second of latency before any request waits client-side: far above the 100 ms p99 that
"sustained" asks for); when the daemon cannot keep up, requests leave late and the achieved rate
falls, which the table shows.

Per rate: achieved throughput (2xx answers / max(offered seconds, time of the last answer)), p50/p95/p99/max
latency from the schedule, errors (non-2xx answers + requests without an answer by the end of the drain
+ answers slower than the 10 s client timeout), the daemon's CPU seconds per answered request (utime +
stime of the daemon and its child processes from /proc, before/after), its RSS (VmRSS summed over its
processes), wrk's own CPU seconds (``wait4`` rusage) and how many requests wrk itself sent > 5 ms late
(``wrk late``: the loader starved of CPU, not the daemon's doing; should be 0). After each path, the
``requests`` table must hold at least one row per 2xx answer (the log writer flushes asynchronously:
waited for up to 15 s).

Hot swap under load (unless ``swap=False``): ``prepare`` registers the same router a second time as a
candidate (a separate bundle, loaded and verified like any other). After its sweep, each path's daemon
is driven at its sustained rate (or ``swap_rate``) for ``seconds``; 40 % into the schedule the second
version is activated as ``thalamus admin activate`` does it, and ``/v1/status`` is polled until it
reports that version. Reported: the run's errors and latency, and those of the answers scheduled in the
swap window (from the activation to 1 s after the daemon first reports the new version). Each path
starts on the first version (re-activated before the daemon starts).

Sustained throughput: the highest offered rate answered with achieved ≥ 95 % of it, p99 ≤ 100 ms and no
error. The report gives fast/torch of it, of the peak achieved rate, and torch/fast of the p50 at the
lowest rate (both paths always run it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.loadgen import poll_until, wait_healthy
from benchmarks.tcpproxy import free_port
from store.settings import Settings

RATES: tuple[float, ...] = (10, 50, 100, 200, 300, 400)
QUICK_RATES: tuple[float, ...] = (5, 20)
SECONDS, QUICK_SECONDS = 10.0, 2.0
QUICK_EMBEDDED = 128
"""Train prompts embedded with ``quick``; the memory is still filled to ``memory_rows`` with perturbed copies."""
PATHS: dict[str, str] = {"fast": "auto", "torch": "torch"}
"""Path name → THALAMUS_INFERENCE."""
HEAD_NEIGHBORS = 10
CLIENT_TIMEOUT_S = 10.0
SATURATED_SHARE, SATURATED_P99_MS = 0.8, 5000.0
SUSTAINED_SHARE, SUSTAINED_P99_MS = 0.95, 100.0
LOG_WAIT_S = 15.0
WARM_UP_RATE, WARM_UP_SECONDS = 5.0, 1.0
"""Load before the sweep, not reported: the first inferences' allocations, wrk's first start (slow to be ready)."""
LUA = Path(__file__).with_name("serve_open_loop.lua")
SWAP_AT = 0.4
"""The hot swap is activated this far into its run's schedule."""
SWAP_WAIT_S, SWAP_TAIL_S = 30.0, 1.0
"""How long the daemon may take to serve the new version; the swap window runs from the activation to
``SWAP_TAIL_S`` after ``/v1/status`` first reports the new version."""

Log = Callable[[str], None]


@dataclass
class RateResult:
    """One arrival rate on one path."""

    rate: float
    seconds: float
    connections: int
    scheduled: int
    answered: int
    ok: int
    non_2xx: int
    unanswered: int
    timeouts: int
    errors: int
    achieved: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    service_p50_ms: float  # from the actual send, for comparison with the schedule-based p50
    daemon_cpu_s: float
    daemon_cpu_ms_per_request: float
    daemon_rss_mb: float  # summed over its processes
    daemon_rss_max_mb: float  # its largest process
    loader_cpu_s: float
    loader_late: int  # requests wrk itself sent > 5 ms late (a starved machine), see serve_open_loop.lua
    wrk_socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def saturated(self) -> bool:
        return self.achieved < SATURATED_SHARE * self.rate or self.p99_ms > SATURATED_P99_MS

    @property
    def sustained(self) -> bool:
        return self.achieved >= SUSTAINED_SHARE * self.rate and self.p99_ms <= SUSTAINED_P99_MS and not self.errors


# ---- the daemon's processes -------------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2:].split()[1])
                tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (uvicorn's worker processes, when there are several)."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += tree.get(current, [])
    return found


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants, plus what their reaped children used."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, ValueError):
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / tick


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS summed over ``pid`` and its descendants, the largest single process's), in MB."""
    sizes = [0]
    for p in process_tree(pid):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]))
    return sum(sizes) / 1024, max(sizes) / 1024


# ---- the load generator ------------------------------------------------------------------------

def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: run `make tools` (apt-get install wrk)")
    return found


def connections_for(rate: float) -> int:
    """wrk connections (= threads) for ``rate``: enough for 0.5 s of latency in flight, 4 to 200."""
    return int(min(200, max(4, math.ceil(rate / 2))))


def drive(base: str, bodies_file: Path, rate: float, seconds: float, daemon_pid: int,
          drain: float = CLIENT_TIMEOUT_S, samples: list[tuple[float, float, int]] | None = None) -> RateResult:
    """``rate`` × ``seconds`` POSTs to ``base``/v1/route on the fixed schedule (see the module docstring).
    ``samples``, when given, receives each answer's (scheduled time as epoch seconds, latency ms, status)."""
    total = max(1, round(rate * seconds))
    threads = min(connections_for(rate), total)
    with tempfile.TemporaryDirectory(prefix="thalamus-wrk-") as done_dir, \
            tempfile.TemporaryFile("w+") as out:
        start = time.time() + 0.5 + 0.005 * threads  # wrk starts its threads and connects first
        duration = math.ceil(start - time.time() + seconds + drain)
        command = [wrk_binary(), "-t", str(threads), "-c", str(threads), "-d", f"{duration}s",
                   "--timeout", f"{CLIENT_TIMEOUT_S:.0f}s", "-s", str(LUA), base, "--", str(bodies_file),
                   repr(float(rate)), f"{start:.6f}", str(total), done_dir, "/v1/route", str(threads)]
        cpu_before = tree_cpu_seconds(daemon_pid)
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = start + seconds + drain + 5
        reaped: tuple[int, int, Any] | None = None  # wait4, not poll(): poll would reap wrk and lose its rusage
        while time.time() < deadline:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                reaped = (pid, status, usage)
                break
            if time.time() > start + seconds and len(os.listdir(done_dir)) >= threads:
                process.send_signal(signal.SIGINT)  # every answer is in: wrk stops, runs done(), prints
                break
            time.sleep(0.05)
        if reaped is None and time.time() >= deadline:
            process.kill()  # wrk overran its own duration: do not wait on it for ever
        _, status, usage = reaped or os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        cpu_after = tree_cpu_seconds(daemon_pid)
        rss = tree_rss_mb(daemon_pid)
        out.seek(0)
        text = out.read()
    if process.returncode != 0 or "@@E" not in text:
        raise RuntimeError(f"wrk failed ({process.returncode}): {text[-2000:]}")
    if samples is not None:
        samples.extend(_samples(text, start))
    return _parse(text, rate, seconds, threads, total, cpu_after - cpu_before, rss,
                  usage.ru_utime + usage.ru_stime)


def _answers(text: str) -> list[tuple[int, float, float, float]]:
    """(status, latency ms from the schedule, ms from the send, finish s from the start) of every answer in
    wrk's output (its ``@@R`` lines, see serve_open_loop.lua)."""
    rows = (line.split() for line in text.splitlines())
    return [(int(p[1]), float(p[2]), float(p[3]), float(p[4])) for p in rows if p and p[0] == "@@R"]


def _samples(text: str, start: float) -> list[tuple[float, float, int]]:
    """(scheduled epoch seconds, latency ms, status) of every answer in wrk's output."""
    return [(start + finish - latency / 1000, latency, status) for status, latency, _, finish in _answers(text)]


def _parse(text: str, rate: float, seconds: float, threads: int, total: int, daemon_cpu: float,
           rss: tuple[float, float], loader_cpu: float) -> RateResult:
    answers = _answers(text)
    statuses = [status for status, _, _, _ in answers]
    latency = [ms for _, ms, _, _ in answers]
    service = [ms for _, _, ms, _ in answers]
    finish = [at for _, _, _, at in answers]
    socket_errors: dict[str, int] = {}
    loader_late = 0
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "@@S":
            loader_late += int(parts[4])
        elif parts[0] == "@@E":
            socket_errors = dict(zip(("connect", "read", "write", "status", "timeout"), map(int, parts[1:]),
                                     strict=True))
    codes = np.asarray(statuses, dtype=int)
    lat = np.asarray(latency)
    ok = int(((codes >= 200) & (codes < 300)).sum())
    timeouts = int((lat > 1000 * CLIENT_TIMEOUT_S).sum())
    non_2xx, unanswered = len(codes) - ok, total - len(codes)

    def q(values: np.ndarray, p: float) -> float:
        return round(float(np.percentile(values, p)), 2) if values.size else float("nan")

    span = max(seconds, max(finish, default=0.0))
    return RateResult(
        rate=rate, seconds=seconds, connections=threads, scheduled=total, answered=len(codes), ok=ok,
        non_2xx=non_2xx, unanswered=unanswered, timeouts=timeouts, errors=non_2xx + unanswered + timeouts,
        achieved=round(ok / span, 2), p50_ms=q(lat, 50), p95_ms=q(lat, 95), p99_ms=q(lat, 99),
        max_ms=round(float(lat.max()), 2) if lat.size else float("nan"), service_p50_ms=q(np.asarray(service), 50),
        daemon_cpu_s=round(daemon_cpu, 2), daemon_cpu_ms_per_request=round(1000 * daemon_cpu / max(ok, 1), 3),
        daemon_rss_mb=round(rss[0], 1), daemon_rss_max_mb=round(rss[1], 1), loader_cpu_s=round(loader_cpu, 3),
        loader_late=loader_late, wrk_socket_errors=socket_errors)


def _window(samples: Sequence[tuple[float, float, int]], begin: float, end: float) -> dict[str, Any]:
    """The answers scheduled in [begin, end]: count, non-2xx, p50/p99/max latency."""
    inside = [(latency, status) for scheduled, latency, status in samples if begin <= scheduled <= end]
    latency = np.asarray([x for x, _ in inside])

    def q(p: float) -> float | None:
        return round(float(np.percentile(latency, p)), 2) if latency.size else None

    return {"requests": len(inside), "non_2xx": sum(1 for _, status in inside if not 200 <= status < 300),
            "p50_ms": q(50), "p99_ms": q(99), "max_ms": round(float(latency.max()), 2) if latency.size else None}


def swap_under_load(settings: Settings, base: str, bodies_file: Path, rate: float, seconds: float, daemon_pid: int,
                    to_version: int) -> dict[str, Any]:
    """Drive ``rate`` for ``seconds``; ``SWAP_AT`` into it, activate ``to_version`` (as ``thalamus admin
    activate`` does) and time until ``/v1/status`` reports it. The whole run's errors and latency, and
    those of the answers scheduled in the swap window."""
    from jobs.promote import activate_version
    from store.db import session_scope

    samples: list[tuple[float, float, int]] = []
    outcome: dict[str, Any] = {}

    def load() -> None:
        try:
            outcome["result"] = drive(base, bodies_file, rate, seconds, daemon_pid, samples=samples)
        except BaseException as exc:  # re-raised below, in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=load, name="bench-serve-swap-load")
    thread.start()
    time.sleep(0.5 + SWAP_AT * seconds)  # drive() starts its schedule about 0.5 s after it is called
    activated = time.time()
    with session_scope(settings) as session:
        activate_version(session, to_version, actor="bench", reason="bench serve: hot swap under load")
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        served = poll_until(lambda: client.get(f"{base}/v1/status").json()["router_version"] == to_version,
                            SWAP_WAIT_S, poll=0.05)
    swapped = time.time() if served is None else served + (time.time() - time.monotonic())  # as epoch seconds
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    result: RateResult = outcome["result"]
    return {"rate": rate, "to_version": to_version, "swapped": served is not None,
            "swap_seconds": round(swapped - activated, 3),
            "run": asdict(result) | {"saturated": result.saturated, "sustained": result.sustained},
            "window": _window(samples, activated, swapped + SWAP_TAIL_S)}


def _activate_if_needed(settings: Settings, version_id: int) -> None:
    from jobs.promote import activate_version
    from store.db import session_scope
    from store.queries import active_router_version

    with session_scope(settings) as session:
        active = active_router_version(session)
        if active is None or active.id != version_id:
            activate_version(session, version_id, actor="bench", reason="bench serve: the sweep's router")


# ---- set-up -------------------------------------------------------------------------------------

@contextlib.contextmanager
def database(database_url: str | None) -> Iterator[str | None]:
    """None (the home's SQLite), or a fresh database on the PostgreSQL server of ``database_url``, dropped after."""
    if database_url is None:
        yield None
        return
    from sqlalchemy import create_engine, make_url, text

    url = make_url(database_url)
    if not url.drivername.startswith("postgresql"):
        raise ValueError(f"--database-url must be a PostgreSQL URL, got {url.drivername}")
    name = f"thalamus_serve_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            from store.db import dispose_engines

            dispose_engines()
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def memory_rows_from(keys: np.ndarray, losses: np.ndarray, rows: int, seed: int = 0,
                     noise: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` memory rows: the real ones first, then seeded copies of random real rows with Gaussian noise
    (``noise`` × the row's norm in total), all unit-normed; a copy keeps its source row's losses."""
    unit = keys / np.linalg.norm(keys, axis=1, keepdims=True).clip(min=1e-12)
    if rows <= len(unit):
        return unit[:rows].astype(np.float32), losses[:rows]
    rng = np.random.RandomState(seed)
    source = rng.randint(0, len(unit), size=rows - len(unit))
    copies = unit[source] + rng.standard_normal((len(source), unit.shape[1])) * (noise / math.sqrt(unit.shape[1]))
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return np.vstack([unit, copies]).astype(np.float32), np.vstack([losses, losses[source]])


def embed_cached(router: Any, prompts: Sequence[str], cache_dir: Path | None) -> np.ndarray:
    """The router's pooled embeddings of ``prompts``; kept in ``cache_dir`` (keyed by the backbone, its
    files' sizes and times, the max length, the pooled layers and the prompts) so later runs skip the encoder."""
    if cache_dir is None:
        return np.asarray(router.embed(list(prompts), batch_size=64), dtype=np.float64)
    import hashlib

    backbone = Path(router.config.backbone)
    stamp = sorted((str(p.relative_to(backbone)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in backbone.rglob("*") if p.is_file()) if backbone.is_dir() else str(backbone)
    key = hashlib.sha256(json.dumps([str(backbone), stamp, router.config.max_length, router.config.pool_layers,
                                     list(prompts)]).encode()).hexdigest()[:24]
    path = cache_dir / f"bench-serve-embeddings-{key}.npy"
    if path.is_file():
        return np.load(path).astype(np.float64)
    features = np.asarray(router.embed(list(prompts), batch_size=64), dtype=np.float32)  # what embed computes
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, features)
    return features.astype(np.float64)


def build_router(settings: Settings, experts: Sequence[str], prompts: Sequence[str], losses: np.ndarray,
                 memory_rows: int, cache_dir: Path | None = None) -> Any:
    """The head-only router described in the module docstring (a :class:`router.model.Router`)."""
    import torch

    from router.model import MEMORY_LIMIT, Router, RouterConfig, renormalize
    from router.selection import normalizer
    from router.training import ridge_solution

    if not 1 <= memory_rows <= MEMORY_LIMIT:
        raise ValueError(f"--memory-rows must be in 1..{MEMORY_LIMIT}, got {memory_rows}")
    config = RouterConfig(backbone=settings.backbone_path, expert_names=list(experts),
                          max_length=settings.train_max_length, lora_r=0, pool_layers=settings.train_pool_layers,
                          head_neighbors=HEAD_NEIGHBORS, spread_neighbors=HEAD_NEIGHBORS)
    router = Router.from_config(config)
    features = embed_cached(router, prompts, cache_dir)
    mean, std = normalizer(losses)
    renormalize(router, mean, std)
    weight, bias = ridge_solution(features, (losses - mean) / std, settings.train_head_ridge)
    keys, values = memory_rows_from(features, losses, memory_rows)
    with torch.no_grad():
        router.head.last.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        router.head.last.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        router.set_memory(torch.as_tensor(keys), torch.as_tensor(values, dtype=torch.float32))
        router.spread_scale = torch.ones(len(experts))
    if router.memory_keys.shape[0] != memory_rows:
        raise RuntimeError(f"the memory holds {router.memory_keys.shape[0]} rows, not {memory_rows} "
                           "(rows without any observed loss are dropped)")
    return router


def prepare(settings: Settings, dataset: Path, memory_rows: int | None, quick: bool, log: Log,
            cache_dir: Path | None = None, swap: bool = False) -> tuple[list[str], dict[str, Any]]:
    """Migrate, register the experts, build, register and activate the router; (test prompts, facts).
    With ``swap``, the same router is registered a second time as a candidate (``swap_version``): the
    version the hot swap activates, a separate bundle the daemon loads and verifies as it would any other."""
    from benchmarks.data import load_dataset
    from experts.registry import register_experts
    from jobs.promote import activate
    from jobs.router_store import save_version
    from store.db import session_scope
    from store.migrate import upgrade
    from store.states import VersionStatus

    train, test, attributes = load_dataset(dataset)
    rows = memory_rows or len(train.prompts)
    embedded = np.flatnonzero(~np.isnan(train.losses).all(axis=1))
    if quick:
        embedded = np.sort(np.random.RandomState(0).permutation(embedded)[:QUICK_EMBEDDED])
    embedded = embedded[:rows]
    upgrade(settings)
    with session_scope(settings) as session:
        register_experts(session, [{"name": n, "kind": "external", "attributes": attributes.get(n, {})}
                                   for n in train.experts])
    log(f"building the router: {len(embedded)} train prompts embedded, {rows} memory rows")
    started = time.perf_counter()
    router = build_router(settings, train.experts, [train.prompts[i] for i in embedded], train.losses[embedded],
                          rows, cache_dir)
    built = time.perf_counter()
    with session_scope(settings) as session:
        version = save_version(session, settings, router, parent_id=None, status=VersionStatus.CANDIDATE,
                               metrics={"bench": "serve", "memory_rows": rows}, training_window={})
        if version.status != VersionStatus.CANDIDATE:
            raise RuntimeError(f"the benchmark's router version was refused: {version.reason}")
        activate(session, version, actor="bench", reason="bench serve")
        version_id = version.id
    swap_version = None
    if swap:
        with session_scope(settings) as session:
            again = save_version(session, settings, router, parent_id=version_id, status=VersionStatus.CANDIDATE,
                                 metrics={"bench": "serve", "memory_rows": rows, "swap_target": True},
                                 training_window={})
            if again.status != VersionStatus.CANDIDATE:
                raise RuntimeError(f"the benchmark's swap version was refused: {again.reason}")
            swap_version = again.id
    registered = time.perf_counter()
    log(f"router version {version_id}: built in {built - started:.0f} s, registered in {registered - built:.0f} s")
    prompts = [p for p in test.prompts if p.strip()]
    return prompts, {"router_version": version_id, "swap_version": swap_version, "memory_rows": rows,
                     "embedded_prompts": len(embedded),
                     "experts": len(train.experts), "test_prompts": len(prompts),
                     "build_seconds": round(built - started, 1), "register_seconds": round(registered - built, 1)}


def logged_requests(settings: Settings) -> int:
    from sqlalchemy import func, select

    from store.db import session_scope
    from store.schema import Request

    with session_scope(settings) as session:
        return int(session.scalar(select(func.count()).select_from(Request)) or 0)


# ---- one path -----------------------------------------------------------------------------------

def inference_of(status: dict[str, Any]) -> str:
    """What ``/v1/status`` says the daemon serves with (``inference``); one that does not say serves with PyTorch."""
    return str(status.get("inference") or "torch")


def run_path(name: str, settings: Settings, bodies_file: Path, bodies: Sequence[dict[str, Any]],
             rates: Sequence[float], seconds: float, workers: int | None, log: Log,
             versions: tuple[int, int | None] = (1, None), swap_rate: float | None = None) -> dict[str, Any]:
    """Start a daemon for path ``name`` on ``versions[0]``, warm it up, sweep the rates, then (when
    ``versions[1]`` is given) hot-swap to ``versions[1]`` under load at ``swap_rate`` (default: the
    path's sustained rate, else the lowest), check the log, stop it."""
    _activate_if_needed(settings, versions[0])
    swap: dict[str, Any] | None = None
    env = {**settings.as_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "THALAMUS_INFERENCE": PATHS[name]}
    if workers is not None:
        env["THALAMUS_WORKERS"] = str(workers)
    logged_before = logged_requests(settings)
    log_path = settings.home / f"daemon-{name}.log"
    base = f"http://127.0.0.1:{settings.port}"
    with open(log_path, "ab") as handle:
        daemon = subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=env, stdout=handle,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.perf_counter()
        wait_healthy(base, daemon, timeout=300, log_tail=lambda: log_path.read_text(errors="replace")[-2000:])
        startup = time.perf_counter() - started
        status = httpx.get(f"{base}/v1/status", timeout=CLIENT_TIMEOUT_S).json()
        warm_up = drive(base, bodies_file, WARM_UP_RATE, WARM_UP_SECONDS, daemon.pid)  # wrk and the daemon
        inference, processes = inference_of(status), len(process_tree(daemon.pid))
        log(f"{name}: daemon up in {startup:.1f} s, serving with {inference}, {processes} process(es); "
            f"warm-up {warm_up.ok} requests, p50 {warm_up.p50_ms:g} ms")
        results: list[RateResult] = []
        for rate in rates:
            result = drive(base, bodies_file, rate, seconds, daemon.pid)
            results.append(result)
            log(f"{name} {rate:g} req/s: achieved {result.achieved:g}, p50 {result.p50_ms:g} ms, "
                f"p99 {result.p99_ms:g} ms, errors {result.errors}, daemon {result.daemon_cpu_ms_per_request:g} "
                f"CPU ms/req, loader {result.loader_cpu_s:g} CPU s")
            if result.saturated:
                log(f"{name}: saturated at {rate:g} req/s; higher rates skipped")
                break
            time.sleep(0.5)
        if versions[1] is not None:
            rate = swap_rate or max((r.rate for r in results if r.sustained), default=rates[0])
            swap = swap_under_load(settings, base, bodies_file, rate, seconds, daemon.pid, versions[1])
            window = swap["window"]
            log(f"{name} hot swap at {rate:g} req/s: served v{versions[1]} {swap['swap_seconds']:g} s after "
                f"the activation; run errors {swap['run']['errors']}, p99 {swap['run']['p99_ms']:g} ms; "
                f"swap window {window['requests']} requests, {window['non_2xx']} non-2xx, p99 {window['p99_ms']} ms")
        answered = warm_up.ok + sum(r.ok for r in results) + (swap["run"]["ok"] if swap else 0)
        deadline = time.monotonic() + LOG_WAIT_S
        while (logged := logged_requests(settings) - logged_before) < answered and time.monotonic() < deadline:
            time.sleep(0.25)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(10)
    sustained = [r for r in results if r.sustained]
    return {"inference": inference, "startup_seconds": round(startup, 1), "workers": workers,
            "processes": processes,
            "rows": [asdict(r) | {"saturated": r.saturated, "sustained": r.sustained} for r in results],
            "swap": swap, "answered_2xx": answered, "logged": logged, "all_logged": logged >= answered,
            "sustained_rate": max((r.rate for r in sustained), default=0.0),
            "peak_achieved": max((r.achieved for r in results), default=0.0)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b and math.isfinite(a) and math.isfinite(b) else None


def run(dataset: Path, *, rates: Sequence[float] | None = None, seconds: float | None = None,
        database_url: str | None = None, memory_rows: int | None = None, paths: Sequence[str] = ("fast", "torch"),
        workers: int | None = None, quick: bool = False, backbone: str | None = None, cache_dir: Path | None = None,
        swap: bool = True, swap_rate: float | None = None, log: Log = print) -> dict[str, Any]:
    """The whole benchmark; a JSON-able report (see :func:`table`). ``cache_dir``: where the train prompts'
    embeddings are kept between runs (None: embedded every run)."""
    unknown = [p for p in paths if p not in PATHS]
    if unknown or not paths:
        raise ValueError(f"--paths must name some of {', '.join(PATHS)}, got {', '.join(paths) or 'none'}")
    rates = sorted(float(r) for r in (rates or (QUICK_RATES if quick else RATES)))
    if any(r <= 0 for r in rates):
        raise ValueError("--rates must be positive")
    seconds = float(seconds or (QUICK_SECONDS if quick else SECONDS))
    wrk_binary()
    began = time.perf_counter()
    home = Path(tempfile.mkdtemp(prefix="thalamus-serve-bench-"))
    try:
        with database(database_url) as url:
            settings = Settings(home=home, database_url=url, port=free_port(), backbone=backbone, auth=False)
            prompts, facts = prepare(settings, Path(dataset), memory_rows, quick, log, cache_dir, swap)
            bodies = [{"prompt": p, "explore": False} for p in prompts]
            bodies_file = home / "bodies.jsonl"
            bodies_file.write_text("".join(json.dumps(b) + "\n" for b in bodies), encoding="utf-8")
            report: dict[str, Any] = {
                "dataset": str(dataset), "database": "postgresql" if url else "sqlite", "quick": quick,
                "rates": rates, "seconds": seconds, "cpus": os.cpu_count(), **facts, "paths": {}}
            for name in paths:
                report["paths"][name] = run_path(name, settings, bodies_file, bodies, rates, seconds, workers, log,
                                                 (facts["router_version"], facts["swap_version"]), swap_rate)
            from store.db import dispose_engines

            dispose_engines()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    fast, torch_ = report["paths"].get("fast"), report["paths"].get("torch")
    if fast and torch_:
        p50 = {n: report["paths"][n]["rows"][0]["p50_ms"] for n in ("fast", "torch")}
        report["comparison"] = {
            "sustained_ratio_fast_over_torch": _ratio(fast["sustained_rate"], torch_["sustained_rate"]),
            "peak_ratio_fast_over_torch": _ratio(fast["peak_achieved"], torch_["peak_achieved"]),
            "p50_rate": rates[0], "p50_ratio_torch_over_fast": _ratio(p50["torch"], p50["fast"])}
    report["wall_seconds"] = round(time.perf_counter() - began, 1)
    return report


# ---- output -------------------------------------------------------------------------------------

def table(report: dict[str, Any]) -> str:
    """The per-rate table of every path, then the sustained rates and the ratios."""
    head = (f"{'path':<6} {'inference':<10} {'rate':>6} {'achieved':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
            f"{'max ms':>8} {'errors':>6} {'CPU ms/req':>10} {'RSS MB':>7} {'wrk CPU s':>9} {'wrk late':>8}")
    lines = [f"bench serve: {report['database']}, {report['memory_rows']} memory rows, "
             f"{report['test_prompts']} test prompts, {report['seconds']:g} s per rate", head, "-" * len(head)]
    for name, path in report["paths"].items():
        for row in path["rows"]:
            lines.append(f"{name:<6} {path['inference']:<10} {row['rate']:>6g} {row['achieved']:>8g} "
                         f"{row['p50_ms']:>8g} {row['p95_ms']:>8g} {row['p99_ms']:>8g} {row['max_ms']:>8g} "
                         f"{row['errors']:>6} {row['daemon_cpu_ms_per_request']:>10g} {row['daemon_rss_mb']:>7g} "
                         f"{row['loader_cpu_s']:>9g} {row['loader_late']:>8}"
                         + ("  saturated" if row["saturated"] else ""))
    for name, path in report["paths"].items():
        lines.append(f"{name}: sustained {path['sustained_rate']:g} req/s (achieved ≥ 95 %, p99 ≤ 100 ms, no "
                     f"error), peak achieved {path['peak_achieved']:g} req/s; logged {path['logged']} of "
                     f"{path['answered_2xx']} answered" + ("" if path["all_logged"] else "  NOT ALL LOGGED"))
    for name, path in report["paths"].items():
        swap = path.get("swap")
        if swap:
            run_, window = swap["run"], swap["window"]
            lines.append(f"{name}: hot swap to v{swap['to_version']} at {swap['rate']:g} req/s: "
                         + (f"served after {swap['swap_seconds']:g} s" if swap["swapped"] else "NOT SERVED")
                         + f"; {run_['scheduled']} requests, {run_['errors']} errors, p99 {run_['p99_ms']:g} ms; "
                           f"swap window {window['requests']} requests, {window['non_2xx']} non-2xx, "
                           f"p50 {window['p50_ms']} ms, p99 {window['p99_ms']} ms, max {window['max_ms']} ms")
    comparison = report.get("comparison")
    if comparison:
        def show(value: float | None) -> str:
            return "n/a" if value is None else f"{value:g}×"

        lines.append(f"fast/torch: sustained {show(comparison['sustained_ratio_fast_over_torch'])}, peak "
                     f"{show(comparison['peak_ratio_fast_over_torch'])}; p50 at {comparison['p50_rate']:g} req/s: "
                     f"torch/fast {show(comparison['p50_ratio_torch_over_fast'])}")
    return "\n".join(lines)


def plot(report: dict[str, Any], out: Path) -> None:
    """Latency p50/p95/p99 against the arrival rate, one line style per path, log y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles, colours = ("-", "--", ":", "-."), {"p50_ms": "tab:blue", "p95_ms": "tab:orange", "p99_ms": "tab:red"}
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for style, (name, path) in zip(styles, report["paths"].items(), strict=False):
        rows = path["rows"]
        for key, colour in colours.items():
            axis.plot([r["rate"] for r in rows], [r[key] for r in rows], style, color=colour, marker="o",
                      label=f"{name} ({path['inference']}) {key.removesuffix('_ms')}")
    axis.set_yscale("log")
    axis.set_xlabel("arrival rate (requests/s)")
    axis.set_ylabel("latency from the scheduled send (ms)")
    axis.set_title(f"POST /v1/route, {report['database']}, {report['memory_rows']} memory rows")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
