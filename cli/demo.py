"""``thalamus demo`` / ``make demo``: drive the whole loop once through the real HTTP API and CLI.

A driver, not a service: it runs the ``thalamus`` verbs as child processes the way a user types
them, which is why it lives with the command line. It starts ``thalamus up`` (daemon + Celery
worker on the SQLite broker + in-process scheduler) on the embedded default with the production
settings (label share, and whatever exploration and promotion gate they configure), sends demo
traffic as an application would (route, use the expert, report its loss with ``POST /v1/feedback``),
refreshes losses, trains a candidate, promotes it (the gate's own verdict when it gives one, else
the admin CLI) while traffic keeps flowing, waits for the hot swap, sends traffic again, fine-tunes
the small expert the router sent the most prompts (the ``finetune_expert`` job on the worker; approved
by the auto-approve policy or the admin CLI) and writes a report: the held-out routed loss of the
first and the promoted router beside the best single expert and the oracle (``benchmarks.heldout``),
the traffic share per expert before and after, what ``[Flag: smallest model]`` costs, and the
fine-tuned expert's loss before and after on its own and on the other experts' held-out routed prompts.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from cli._common import Group, arg, positive_int, verb
from cli.embedded import stop_process
from store.settings import Settings


def demo_settings(settings: Settings) -> Settings:
    """The user's settings with the demo's changes, validated: only the schedule; the label share,
    exploration and the promotion gate stay as configured (the production defaults)."""
    return Settings.model_validate({
        **settings.model_dump(),
        # The demo triggers the jobs itself; the scheduler stays idle so runs don't interleave.
        "refresh_interval_minutes": 0.0,
        "train_interval_minutes": 0.0,
        "swap_poll_seconds": 1.0,
        # The production default: callers need a key, which the demo creates for itself.
        "auth": True,
    })


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _cli(args: Sequence[str], env: dict[str, str], exit_ok: tuple[int, ...] = (0,)) -> str:
    """Run a ``thalamus`` verb as a user would; its progress goes to our stderr, its stdout is returned."""
    command = [sys.executable, "-m", "cli", *args]
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode not in exit_ok:
        raise RuntimeError(f"`thalamus {' '.join(args)}` exited with {done.returncode}")
    return done.stdout


class Traffic:
    """Sends prompts from a few threads; counts failures and keeps latencies."""

    def __init__(self, base: str, prompts: Sequence[str], headers: dict[str, str], threads: int = 4) -> None:
        self.base, self.prompts, self.threads, self.headers = base, list(prompts), threads, headers
        self.latencies_ms: list[float] = []
        self.server_ms: list[float] = []
        self.failures: list[str] = []
        self.served: list[tuple[str, str, str]] = []  # (prompt, request_id, expert) of each answered request
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _send(self, client: httpx.Client, prompt: str) -> None:
        started = time.perf_counter()
        try:
            response = client.post(f"{self.base}/v1/route", json={"prompt": prompt, "app": "demo"})
            ok = response.status_code == 200
            detail = "" if ok else f"HTTP {response.status_code}: {response.text[:200]}"
            body = response.json() if ok else {}
        except httpx.HTTPError as exc:
            ok, detail, body = False, f"{type(exc).__name__}: {exc}", {}
        elapsed = 1000 * (time.perf_counter() - started)
        with self._lock:
            self.sent += 1
            self.latencies_ms.append(elapsed)
            if ok:
                self.server_ms.append(float(body["latency_ms"]))
                self.served.append((prompt, str(body["request_id"]), str(body["expert"])))
            if not ok:
                self.failures.append(detail)

    def run_all(self, progress: bool = True) -> None:
        """Send every prompt once, spread over the threads."""
        from tqdm import tqdm

        bar = tqdm(total=len(self.prompts), desc="requests", unit="req", file=sys.stderr, disable=not progress)

        def worker(chunk: Sequence[str]) -> None:
            with httpx.Client(timeout=30, headers=self.headers) as client:
                for prompt in chunk:
                    self._send(client, prompt)
                    bar.update(1)

        chunks = [self.prompts[i :: self.threads] for i in range(self.threads)]
        pool = [threading.Thread(target=worker, args=(chunk,)) for chunk in chunks]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        bar.close()

    def start_loop(self) -> list[threading.Thread]:
        """Keep sending (cycling through the prompts) until ``stop``: load during the swap."""

        def worker(offset: int) -> None:
            with httpx.Client(timeout=30, headers=self.headers) as client:
                index = offset
                while not self._stop.is_set():
                    self._send(client, self.prompts[index % len(self.prompts)])
                    index += self.threads

        pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(self.threads)]
        for thread in pool:
            thread.start()
        return pool

    def stop(self, pool: Sequence[threading.Thread]) -> None:
        self._stop.set()
        for thread in pool:
            thread.join(30)


def _active_version(base: str, headers: dict[str, str]) -> int | None:
    version = httpx.get(f"{base}/v1/status", timeout=5, headers=headers).json().get("router_version")
    return None if version is None else int(version)


def _fmt(value: Any) -> str:
    return "-" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))


def _metrics_table(metrics: dict[str, Any]) -> str:
    candidate, active = metrics.get("candidate", {}), metrics.get("active", {})
    keys = ("loss_mae", "hit_rate", "routed_loss", "best_single_loss", "oracle_loss", "gap_captured", "mean_params")
    lines = [f"  {'metric':18} {'active':>12} {'candidate':>12}"]
    for key in keys:
        a, c = active.get(key), candidate.get(key)
        lines.append(f"  {key:18} {_fmt(a):>12} {_fmt(c):>12}")
    lines.append(f"  holdout rows: {candidate.get('n_rows', 0)}, training rows: {metrics.get('n_train')} "
                 f"({metrics.get('n_fit')} fitted, {metrics.get('n_val')} for validation)")
    return "\n".join(lines)


def _shares(served: Sequence[tuple[str, str, str]], experts: Sequence[str]) -> dict[str, float]:
    counts = {name: 0 for name in experts}
    for _, _, expert in served:
        counts[expert] = counts.get(expert, 0) + 1
    return {name: round(n / max(len(served), 1), 3) for name, n in counts.items()}


def _interleaved(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Prompts taken round-robin across domains, so any prefix is balanced."""
    by_domain: dict[str, list[str]] = {}
    for row in rows:
        by_domain.setdefault(row["domain"], []).append(row["prompt"])
    columns = [by_domain[d] for d in sorted(by_domain)]
    return [c[i] for i in range(max(map(len, columns), default=0)) for c in columns if i < len(c)]


def send_feedback(base: str, served: Sequence[tuple[str, str, str]], experts: Sequence[dict[str, Any]],
                  headers: dict[str, str], threads: int = 4) -> tuple[int, list[str]]:
    """The application's side of the loop: it used the served expert's answer and reports its loss.

    The demo application measures that loss as the library scores it (the served expert's loss on
    the prompt, ``LocalExpert.losses``), then posts it to ``POST /v1/feedback`` for the served
    expert only (bandit feedback: nothing is learnt about the experts it did not use).
    Returns (feedback accepted, failures).
    """
    from experts.local import LocalExpert

    entries = {e["name"]: e for e in experts}
    losses: dict[str, float] = {}
    for name in sorted({expert for _, _, expert in served}):
        mine = [(prompt, request_id) for prompt, request_id, expert in served if expert == name]
        entry = entries[name]
        model = LocalExpert.load(name, entry["kind"], entry["uri"])
        for start in range(0, len(mine), 64):
            chunk = mine[start:start + 64]
            losses.update(zip((r for _, r in chunk), model.losses([p for p, _ in chunk]), strict=True))
    failures: list[str] = []
    accepted = 0
    lock = threading.Lock()

    def worker(chunk: Sequence[tuple[str, str, str]]) -> None:
        nonlocal accepted
        with httpx.Client(timeout=30, headers=headers) as client:
            for _, request_id, _ in chunk:
                try:
                    response = client.post(f"{base}/v1/feedback", json={
                        "request_id": request_id, "loss": round(float(losses[request_id]), 6), "app": "demo"})
                    ok, detail = response.status_code == 202, f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                with lock:
                    accepted += ok
                    if not ok:
                        failures.append(detail)

    pool = [threading.Thread(target=worker, args=(served[i::threads],)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return accepted, failures


def gate_numbers(settings: Settings, version_id: int, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """HOOK (promotion gate, issue 10): what the gate decided on ``version_id`` and the numbers it used
    (e.g. its off-policy estimate and interval): the newest ``gate_decisions`` row for it, else a
    ``gate``/``off_policy`` entry of the version's metrics. None while no gate writes either."""
    from sqlalchemy import select

    from store.db import session_scope
    from store.schema import GateDecision

    with session_scope(settings) as session:
        row = session.scalars(select(GateDecision).where(GateDecision.router_version_id == version_id)
                              .order_by(GateDecision.id.desc()).limit(1)).first()
        if row is not None:
            return {"decision": row.decision, "basis": row.basis, "actor": row.actor, "reason": row.reason,
                    "numbers": dict(row.numbers or {})}
    found = metrics.get("gate") or metrics.get("off_policy")
    return dict(found) if isinstance(found, dict) else None


def heldout_report(settings: Settings, library: Any, first: int | None, promoted: int | None) -> dict[str, Any]:
    """The first and the promoted router on the library's held-out prompts, beside the best single
    expert and the oracle, and ``[Flag: smallest model]``'s cost on the promoted router."""
    from benchmarks.heldout import baselines, route_heldout, routed_summary, score_heldout
    from router.flags import parse_flags

    heldout = score_heldout([r["prompt"] for r in library.prompts(split="heldout")], library.experts)
    report: dict[str, Any] = {**baselines(heldout), "experts": {
        name: round(float(heldout.losses[:, j].mean()), 4) for j, name in enumerate(heldout.experts)}}
    for label, version in (("first", first), ("promoted", promoted)):
        if version is not None:
            report[label] = {"version": version,
                             **routed_summary(heldout, route_heldout(settings, version, heldout))}
    if promoted is not None:
        _, smallest = parse_flags("[Flag: smallest model] x")
        flagged = routed_summary(heldout, route_heldout(settings, promoted, heldout, smallest))
        report["smallest_model_flag"] = {
            "lambdas": smallest,
            "without": {k: report["promoted"][k] for k in ("routed_loss", "mean_params")},
            "with": {k: flagged[k] for k in ("routed_loss", "mean_params", "share")},
        }
    return report


def _print_heldout(report: dict[str, Any]) -> None:
    print(f"  held-out prompts: {report['n_prompts']} (no expert and no router learnt from them)")
    print(f"  {'':24} {'mean loss':>10} {'mean params':>12}   best single − routed [95 % CI]")
    print(f"  {'best single: ' + report['best_single_expert']:24} {report['best_single_loss']:10.4f} "
          f"{report['best_single_params']:12,}")
    print(f"  {'oracle':24} {report['oracle_loss']:10.4f}")
    for label in ("first", "promoted"):
        row = report.get(label)
        if row:
            low, high = row["gain_ci95"]
            print(f"  {label + ' router (v' + str(row['version']) + ')':24} {row['routed_loss']:10.4f} "
                  f"{row['mean_params']:12,}   {row['gain_over_best_single']:+.4f} [{low:+.4f}, {high:+.4f}]")
    flag = report.get("smallest_model_flag")
    if flag:
        flagged = flag["with"]
        print(f"  {'promoted + smallest flag':24} {flagged['routed_loss']:10.4f} {flagged['mean_params']:12,}")


def finetune_target(served: Sequence[tuple[str, str, str]],
                    experts: Sequence[dict[str, Any]]) -> tuple[str | None, dict[str, int]]:
    """The small local expert (every local one but the largest, as ``bench finetune`` chooses) the
    router sent the most distinct prompts, and each small one's count; None when it sent them none."""
    local = [e for e in experts if e.get("kind", "masked-lm") in ("masked-lm", "causal-lm")]
    if not local:
        return None, {}
    largest = max(local, key=lambda e: float((e.get("attributes") or {}).get("params") or 0))["name"]
    counts = {e["name"]: len({p for p, _, x in served if x == e["name"]}) for e in local if e["name"] != largest}
    best = max(sorted(counts), key=counts.__getitem__, default=None)  # ties: the first name
    return (best if best is not None and counts[best] > 0 else None), counts


def _change(numbers: dict[str, Any] | None) -> dict[str, Any] | None:
    """A version metric (``jobs.finetune_expert._interval``) as the report shows it."""
    if not numbers:
        return None
    return {"n": numbers["n"], "before": round(numbers["before"], 4), "after": round(numbers["after"], 4),
            "after_minus_before": round(numbers["diff"], 4),
            "ci95": [round(numbers["ci_low"], 4), round(numbers["ci_high"], 4)]}


def finetune_report(name: str, outcome: dict[str, Any], wall_seconds: float) -> dict[str, Any]:
    """The report's ``finetune`` section from ``thalamus jobs run finetune_expert``'s JSON outcome."""
    report: dict[str, Any] = {"expert": name, "job_run": outcome.get("run"), "status": outcome.get("status"),
                              "wall_seconds": round(wall_seconds, 2)}
    result = outcome.get("result") or {}
    if outcome.get("status") != "succeeded":
        return {**report, "reason": outcome.get("error") or result.get("message")}
    metrics, training = result["metrics"], result.get("training", {})
    own = _change(metrics.get("own"))
    return {**report, "version": result["version"], "parent_version": result["parent_version"],
            "auto_approved": bool(result.get("auto_approved")),
            "routed_prompts": metrics["n_train"] + (own["n"] if own else 0), "trained_on": metrics["n_train"],
            "method": training.get("method"), "epochs": training.get("epochs"),
            "train_seconds": metrics.get("train_seconds"),
            "own_heldout": own, "other_experts_heldout": _change(metrics.get("other"))}


def _served_expert_version(base: str, headers: dict[str, str], prompt: str, name: str) -> int | None:
    """The expert version that answers ``prompt`` on ``POST /v1/infer`` when the router sends it to ``name``."""
    try:
        response = httpx.post(f"{base}/v1/infer", json={"prompt": prompt, "app": "demo", "max_new_tokens": 1},
                              timeout=30, headers=headers)
    except httpx.HTTPError:
        return None
    body = response.json() if response.status_code == 200 else {}
    version = body.get("expert_version")
    return int(version) if body.get("expert") == name and version is not None else None


def run_finetune(env: dict[str, str], base: str, headers: dict[str, str], name: str, probe: str) -> dict[str, Any]:
    """Fine-tune ``name`` with the production job on the worker, approve it (the auto-approve policy's
    verdict when it gave one, else the admin CLI), then wait until ``POST /v1/infer`` of ``probe``
    (a prompt the router sends to ``name``) is answered by the new version."""
    started = time.perf_counter()
    # exit 1: the run failed; its outcome (with the error) is still the JSON on stdout
    outcome = json.loads(_cli(["jobs", "run", "finetune_expert", "--param", f"expert={name}"], env, exit_ok=(0, 1)))
    report = finetune_report(name, outcome, time.perf_counter() - started)
    if report["status"] != "succeeded":
        return report
    version = report["version"]
    if report["auto_approved"]:
        report["approved_by"] = "policy"
    else:
        _cli(["admin", "expert-approve", name, str(version), "--actor", "demo",
              "--reason", "demo: fine-tuned on its routed prompts"], env)
        report["approved_by"] = "admin expert-approve"
    approved_at = time.perf_counter()
    served = _served_expert_version(base, headers, probe, name)
    while served != version and time.perf_counter() - approved_at < 30:
        time.sleep(0.2)
        served = _served_expert_version(base, headers, probe, name)
    report["served_version"] = served
    report["swap_seconds"] = round(time.perf_counter() - approved_at, 2)
    return report


def _print_finetune(report: dict[str, Any]) -> None:
    if report.get("status") != "succeeded":
        print(f"  {'expert fine-tune':26} {report.get('expert') or '-'}: {report.get('status')} "
              f"({report.get('reason')})")
        return
    print(f"  {'expert fine-tune':26} {report['expert']} v{report['parent_version']} → v{report['version']} "
          f"({report['method']}, {report['epochs']} epochs; approved by {report['approved_by']}, "
          f"served v{report['served_version']} after {report['swap_seconds']} s)")
    print(f"  {'':26} {report['routed_prompts']} distinct routed prompts, {report['trained_on']} trained on; "
          f"{report['wall_seconds']} s wall ({report['train_seconds']} s training)")
    print(f"  {'':26} {'held-out prompts':28} {'n':>4} {'before':>8} {'after':>8}   after − before [95 % CI]")
    for label, key in (("its own routed", "own_heldout"), ("the other experts' routed", "other_experts_heldout")):
        row = report.get(key)
        if row:
            low, high = row["ci95"]
            print(f"  {'':26} {label:28} {row['n']:4} {row['before']:8.4f} {row['after']:8.4f}   "
                  f"{row['after_minus_before']:+.4f} [{low:+.4f}, {high:+.4f}]")


def run_demo(settings: Settings, *, prompts: int = 900, after: int = 300) -> dict[str, Any]:
    """Drive the whole loop once on the embedded default: traffic with feedback, training, promotion
    under load, hot swap, traffic again, and a held-out report.

    Runs with :func:`demo_settings`; the child processes get them as their environment. Returns the
    report also written to ``THALAMUS_HOME/demo-report.json``.
    """
    from benchmarks.loadgen import wait_healthy

    started = time.perf_counter()
    settings = demo_settings(settings)
    env = settings.as_env()
    settings.ensure_home()
    base = f"http://{settings.host}:{settings.port}"

    _say("step 1/9: database schema and demo expert library")
    _cli(["db", "upgrade"], env)
    _cli(["experts", "build-demo"], env)
    # The daemon authenticates its callers (THALAMUS_AUTH=on by default): the demo makes its own key.
    api_key = _cli(["admin", "keys", "create", "--app", "demo", "--scope", "route,feedback,admin",
                    "--rate-limit", "1000/second"], env).strip()
    headers = {"Authorization": f"Bearer {api_key}"}
    from experts.demo import format_matrix, load_demo_library, specialisation_problems

    library = load_demo_library(settings.experts_dir / "demo")
    _say(f"demo library ({library.build_seconds} s to build); mean held-out loss, nats per token:\n"
         f"{format_matrix(library.quality)}")
    for problem in specialisation_problems(library.quality):
        _say(f"warning: {problem}")
    names = [e["name"] for e in library.experts]
    traffic_prompts = _interleaved(library.prompts(split="traffic"))[:prompts]

    _say(f"step 2/9: starting daemon + worker + scheduler (log: {settings.home / 'daemon.log'})")
    with open(settings.home / "daemon.log", "ab") as log:  # the child keeps its own copy of the handle
        daemon = subprocess.Popen([sys.executable, "-m", "cli", "up"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        wait_healthy(base, daemon, timeout=300, poll=0.5)
        first_version = _active_version(base, headers)
        _say(f"daemon healthy, serving router version {first_version}; label share {settings.label_share}")

        _say(f"step 3/9: sending {len(traffic_prompts)} prompts through POST /v1/route; "
             "the application reports each served expert's loss with POST /v1/feedback")
        traffic = Traffic(base, traffic_prompts, headers)
        traffic.run_all()
        before = _shares(traffic.served, names)
        accepted, feedback_failures = send_feedback(base, traffic.served, library.experts, headers)
        p50 = statistics.median(traffic.latencies_ms)
        _say(f"sent {traffic.sent}, failed {len(traffic.failures)}, client latency p50 {p50:.1f} ms; "
             f"feedback accepted {accepted}, failed {len(feedback_failures)}; served share {before}")
        time.sleep(2 * settings.log_flush_seconds + 1)  # let the async writer flush

        _say("step 4/9: refreshing the loss table on the worker (losses of the sampled prompts)")
        refresh = json.loads(_cli(["jobs", "run", "refresh_losses"], env))
        _say(f"loss rows written: {refresh['result']['rows_written']}")

        _say("step 5/9: training a candidate router on the worker (LoRA)")
        train = json.loads(_cli(["jobs", "run", "train_router"], env))
        result = train["result"]
        candidate = result["version_id"]
        _say(f"candidate router version {candidate}; the training job's own holdout:\n"
             f"{_metrics_table(result['metrics'])}")

        loop = traffic.start_loop()
        time.sleep(1.0)
        approved_at = time.perf_counter()
        if result.get("auto_approved"):  # HOOK: the promotion gate (settings) promoted it itself
            _say(f"step 6/9: the promotion gate approved version {candidate}; waiting for the swap under traffic")
        else:
            _say(f"step 6/9: approving version {candidate} with the admin CLI under live traffic")
            _cli(["admin", "approve", str(candidate), "--actor", "demo"], env)
        swapped = None
        while time.perf_counter() - approved_at < 60:
            if _active_version(base, headers) == candidate:
                swapped = time.perf_counter() - approved_at
                break
            time.sleep(0.1)
        time.sleep(1.0)
        traffic.stop(loop)
        promoted = _active_version(base, headers)
        _say(f"daemon now serves version {promoted}; swap took {swapped if swapped is None else round(swapped, 2)} s")

        _say(f"step 7/9: sending {min(after, len(traffic_prompts))} prompts again to the promoted router")
        again = Traffic(base, traffic_prompts[:after], headers)
        again.run_all()
        after_shares = _shares(again.served, names)
        _say(f"served share {after_shares}")

        served = traffic.served + again.served
        target, routed = finetune_target(served, library.experts)
        if target is None:
            _say(f"step 8/9: no small expert received traffic ({routed}); no fine-tune")
            finetune: dict[str, Any] = {"expert": None, "status": "skipped",
                                        "reason": "the router sent no prompt to a small expert"}
        else:
            _say(f"step 8/9: fine-tuning {target} (distinct routed prompts per small expert: {routed}) "
                 "with the finetune_expert job on the worker")
            time.sleep(2 * settings.log_flush_seconds + 1)  # the job reads the request log: let the writer flush
            probe = next(p for p, _, expert in reversed(served) if expert == target)
            finetune = run_finetune(env, base, headers, target, probe)
            _say(f"fine-tune: {finetune['status']}"
                 + (f", {target} now serves version {finetune['served_version']}" if "served_version" in finetune
                    else f" ({finetune.get('reason')})"))

        status = httpx.get(f"{base}/v1/status", timeout=5, headers=headers).json()
        counts = status.get("counts", {})
        failures = traffic.failures + again.failures + feedback_failures
        report = {
            "requests": traffic.sent + again.sent,
            "feedback_accepted": accepted,
            "failed_requests": len(failures),
            "failures_sample": failures[:5],
            "label_share": settings.label_share,
            "loss_rows": counts.get("loss_rows", refresh["result"]["rows_written"]),
            "first_version": first_version,
            "candidate_version": candidate,
            "active_version_after_swap": promoted,
            "promoted_by": "gate" if result.get("auto_approved") else "admin approve",
            "gate": gate_numbers(settings, candidate, result["metrics"]),
            "swap_seconds": None if swapped is None else round(swapped, 3),
            "route_latency_ms_p50": round(p50, 2),
            "router_latency_ms_p50": round(statistics.median(traffic.server_ms), 2) if traffic.server_ms else None,
            "route_latency_ms_p95": round(sorted(traffic.latencies_ms)[int(0.95 * len(traffic.latencies_ms)) - 1], 2),
            "train_seconds": result["metrics"].get("train_seconds"),
            "candidate_metrics": result["metrics"].get("candidate"),
            "active_metrics": result["metrics"].get("active"),
            "traffic_share": {"before": before, "after": after_shares},
            "finetune": finetune,
        }
    finally:
        _say("step 9/9: stopping the daemon; scoring the held-out prompts")
        stop_process(daemon, timeout=30)
    report["heldout"] = heldout_report(settings, library, first_version, promoted)
    report["library_quality"] = library.quality
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    path = Path(settings.home) / "demo-report.json"
    path.write_text(json.dumps(report, indent=2))
    _say(f"report written to {path}")
    for key in ("requests", "feedback_accepted", "failed_requests", "label_share", "loss_rows", "candidate_version",
                "active_version_after_swap", "promoted_by", "swap_seconds", "route_latency_ms_p50",
                "router_latency_ms_p50", "train_seconds", "wall_seconds"):
        print(f"  {key:26} {report[key]}")
    print(f"  {'gate':26} {report['gate'] if report['gate'] is not None else '- (no gate decision recorded)'}")
    print(f"  {'traffic share':26} {'expert':16} {'before':>8} {'after':>8}")
    for name in names:
        print(f"  {'':26} {name:16} {before.get(name, 0):8.3f} {after_shares.get(name, 0):8.3f}")
    _print_heldout(report["heldout"])
    _print_finetune(report["finetune"])
    return report


def _failed(report: dict[str, Any]) -> bool:
    """A request failed, the daemon did not end up serving the approved candidate, the promoted
    router's held-out gain over the best single expert is not above 0 at 95 % confidence, or the
    expert fine-tune failed or its approved version was not served (a skip is reported, not failed)."""
    promoted = report.get("heldout", {}).get("promoted")
    finetune = report.get("finetune") or {}
    finetune_failed = finetune.get("status") not in (None, "succeeded", "skipped") or (
        finetune.get("status") == "succeeded" and finetune.get("served_version") != finetune.get("version"))
    return bool(report["failed_requests"] != 0 or report["active_version_after_swap"] != report["candidate_version"]
                or promoted is None or promoted["gain_ci95"][0] <= 0 or finetune_failed)


GROUP = Group(None, "demo", (
    verb("demo", run_demo,
         arg("--prompts", type=positive_int, default=900, help="distinct traffic prompts to send (with feedback)"),
         arg("--after", type=positive_int, default=300, help="prompts sent again to the promoted router"),
         fails=_failed),
))
