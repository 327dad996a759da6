"""The expert library: build the demo experts, register an expert, list them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from cli._common import Group, KeyValues, arg, percent_bar, verb
from store.schema import Expert
from store.settings import Settings

ExpertKind = Literal["masked-lm", "causal-lm", "external"]
KINDS: tuple[ExpertKind, ...] = ("masked-lm", "causal-lm", "external")


@dataclass(frozen=True)
class ExpertInfo:
    name: str
    kind: str
    version: int
    uri: str | None
    attributes: dict[str, Any]

    @classmethod
    def of(cls, expert: Expert) -> ExpertInfo:
        return cls(expert.name, expert.kind, expert.version, expert.uri, dict(expert.attributes))


def build_demo(settings: Settings, *, seed: int = 0, progress: bool = False) -> list[ExpertInfo]:
    """Build the demo experts (masked-LMs and a causal-LM) from local text and register them."""
    from experts.demo import build_demo_library
    from experts.registry import register_experts
    from store.db import session_scope
    from store.migrate import upgrade

    upgrade(settings)
    with percent_bar("demo experts", enabled=progress) as bar:
        library = build_demo_library(settings.experts_dir / "demo", seed=seed, progress=bar, verbose=progress)
    with session_scope(settings) as session:
        return [ExpertInfo.of(e) for e in register_experts(session, library.experts)]


def add(settings: Settings, name: str, *, kind: ExpertKind, uri: str | None = None,
        attributes: dict[str, Any] | None = None) -> ExpertInfo:
    """Register an expert (or a new version of it)."""
    from experts.registry import register_experts
    from store.db import session_scope

    spec = {"name": name, "kind": kind, "uri": uri, "attributes": attributes or {}}
    with session_scope(settings) as session:
        (expert,) = register_experts(session, [spec])
        return ExpertInfo.of(expert)


def list_experts(settings: Settings) -> list[ExpertInfo]:
    """List active experts."""
    from store.db import session_scope
    from store.queries import active_experts

    with session_scope(settings) as session:
        return [ExpertInfo.of(e) for e in active_experts(session)]


@dataclass(frozen=True)
class ExpertUsage:
    """What the gateway observed of one expert: answers, median upstream latency, mean token counts."""

    name: str
    answers: int
    latency_ms_p50: float | None
    prompt_tokens_mean: float | None
    completion_tokens_mean: float | None
    applied: bool


def usage(settings: Settings, *, hours: float = 24.0, apply: bool = False, min_answers: int = 5) -> list[ExpertUsage]:
    """Gateway usage per expert over the last HOURS; --apply makes the median latency its latency_ms attribute.

    The constraint ``latency`` reads ``latency_ms``, so applied values steer the next router that loads.
    """
    import datetime as dt
    import statistics

    from sqlalchemy import select

    from experts.attributes import validate_attributes
    from store.db import session_scope
    from store.queries import expert_by_name
    from store.schema import Request, utcnow

    if hours <= 0:
        raise ValueError(f"--hours must be > 0, not {hours:g}")
    since = utcnow() - dt.timedelta(hours=hours)
    seen: dict[str, list[tuple[float | None, int | None, int | None]]] = {}
    with session_scope(settings) as session:
        rows = session.execute(select(Request.served_by, Request.upstream_ms, Request.prompt_tokens,
                                      Request.completion_tokens)
                               .where(Request.served_by.is_not(None), Request.created_at >= since))
        for name, ms, prompt, completion in rows:
            seen.setdefault(str(name), []).append((ms, prompt, completion))
        result = []
        for name, values in sorted(seen.items()):
            latencies = [v[0] for v in values if v[0] is not None and v[0] > 0]
            prompts = [v[1] for v in values if v[1] is not None]
            completions = [v[2] for v in values if v[2] is not None]
            p50 = round(statistics.median(latencies), 3) if latencies else None
            applied = False
            expert = expert_by_name(session, name)
            if apply and expert is not None and p50 is not None and len(latencies) >= min_answers:
                expert.attributes = validate_attributes(name, {**(expert.attributes or {}), "latency_ms": p50})
                applied = True
            result.append(ExpertUsage(name, len(values), p50, statistics.fmean(prompts) if prompts else None,
                                      statistics.fmean(completions) if completions else None, applied))
    return result


def _show_usage(rows: list[ExpertUsage]) -> None:
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    print(f"{'expert':32} {'answers':>8} {'p50 ms':>9} {'prompt tok':>10} {'compl tok':>10}  applied")
    for r in rows:
        print(f"{r.name:32} {r.answers:8} {fmt(r.latency_ms_p50):>9} {fmt(r.prompt_tokens_mean):>10} "
              f"{fmt(r.completion_tokens_mean):>10}  {'yes' if r.applied else '-'}")


def _show_library(experts: list[ExpertInfo]) -> None:
    print(f"demo library ready: {', '.join(f'{e.name} (v{e.version})' for e in experts)}")


def _show_added(expert: ExpertInfo) -> None:
    print(f"expert {expert.name} registered: kind {expert.kind}, version {expert.version}")


def _show_list(experts: list[ExpertInfo]) -> None:
    for e in experts:
        print(f"{e.name:32} {e.kind:10} v{e.version:<3} {json.dumps(e.attributes, default=str)}")


GROUP = Group("experts", "the expert library (build the demo experts, add, list, observed usage)", (
    verb("build-demo", build_demo, arg("--seed", type=int, default=0), show=_show_library, cli={"progress": True}),
    verb("add", add,
         arg("name"),
         arg("--kind", required=True, choices=KINDS),
         arg("--uri", help="local Hugging Face model directory (masked-lm / causal-lm)"),
         arg("--attr", dest="attributes", action=KeyValues, default={}, metavar="KEY=VALUE",
             help="attribute such as params=51e9 or cost=0.9 (repeatable)"),
         show=_show_added),
    verb("list", list_experts, show=_show_list),
    verb("usage", usage,
         arg("--hours", type=float, default=24.0, help="the window to read (default 24)"),
         arg("--apply", action="store_true", help="write each median latency as the expert's latency_ms attribute"),
         arg("--min-answers", type=int, default=5, help="answers an expert needs before --apply changes it"),
         show=_show_usage),
))
