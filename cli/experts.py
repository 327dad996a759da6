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


PRICES = ("price_per_1k_prompt_tokens", "price_per_1k_completion_tokens")
"""The price attributes (per 1000 tokens, one currency for every expert) that make token counts a cost."""

Observation = tuple[float | None, int | None, int | None]
"""One answer the gateway logged: upstream milliseconds, prompt tokens, completion tokens."""


@dataclass(frozen=True)
class ExpertUsage:
    """What the gateway observed of one expert: answers, median upstream latency, mean tokens and cost.

    ``cost_per_answer`` is the mean over answers with both token counts of tokens × prices / 1000
    (None without both prices); ``cost_note`` says why ``cost`` was not computed or not applied;
    ``applied`` names the attributes ``--apply`` wrote.
    """

    name: str
    answers: int
    latency_ms_p50: float | None
    prompt_tokens_mean: float | None
    completion_tokens_mean: float | None
    cost_per_answer: float | None
    cost_note: str | None
    applied: tuple[str, ...]


def _observed(settings: Settings, hours: float) -> dict[str, list[Observation]]:
    """The answers of the last HOURS per serving expert; negative token counts (a broken upstream) read as None."""
    import datetime as dt

    from sqlalchemy import select

    from store.db import session_scope
    from store.schema import Request, utcnow

    def count(value: int | None) -> int | None:
        return value if value is not None and value >= 0 else None

    since = utcnow() - dt.timedelta(hours=hours)
    seen: dict[str, list[Observation]] = {}
    with session_scope(settings) as session:
        rows = session.execute(select(Request.served_by, Request.upstream_ms, Request.prompt_tokens,
                                      Request.completion_tokens)
                               .where(Request.served_by.is_not(None), Request.created_at >= since))
        for name, ms, prompt, completion in rows:
            seen.setdefault(str(name), []).append((ms, count(prompt), count(completion)))
    return seen


def _prices(name: str, attributes: dict[str, Any]) -> tuple[float, float] | str:
    """The expert's two prices, validated (a bad stored one is ExpertError), or why there are none."""
    from experts.attributes import validate_attributes

    given = validate_attributes(name, {k: attributes[k] for k in PRICES if attributes.get(k) is not None})
    if not given:
        return "no price attributes: cost unchanged"
    missing = [k for k in PRICES if k not in given]
    if missing:
        return f"{missing[0]} missing (0 if free): cost unchanged"
    return float(given[PRICES[0]]), float(given[PRICES[1]])


def _cost(name: str, expert: Expert | None, tokens: list[tuple[int, int]]) -> tuple[float | None, str | None]:
    """The mean cost of an answer from its (prompt, completion) token counts and the prices, or why there is none.

    Rounded to twelve significant digits, so a stored cost carries no float noise (0.3, not 0.30000000000000004).
    """
    import statistics

    if expert is None:
        return None, "not registered"
    prices = _prices(name, dict(expert.attributes or {}))
    if isinstance(prices, str):
        return None, prices
    if not tokens:
        return None, "no answer with token counts: cost unchanged"
    mean = statistics.fmean((prompt * prices[0] + completion * prices[1]) / 1000 for prompt, completion in tokens)
    return float(f"{mean:.12g}"), None


def usage(settings: Settings, *, hours: float = 24.0, apply: bool = False, min_answers: int = 5) -> list[ExpertUsage]:
    """Gateway usage per expert over the last HOURS; --apply writes the median latency and the token cost.

    The constraint ``latency`` reads ``latency_ms`` (the median upstream milliseconds) and ``cost``
    reads ``cost``: with both price attributes, the mean cost of an answer (prompt and completion
    tokens × price per 1000). An expert without prices keeps its cost. Each is written once it rests
    on at least --min-answers answers, through the registry's validated update; running daemons use
    it from their next poll of the active router.
    """
    import statistics

    from experts.registry import update_attributes
    from store.db import session_scope
    from store.queries import expert_by_name

    if hours <= 0:
        raise ValueError(f"--hours must be > 0, not {hours:g}")
    seen = _observed(settings, hours)
    result, changes = [], {}
    with session_scope(settings) as session:
        for name, values in sorted(seen.items()):
            latencies = [ms for ms, _, _ in values if ms is not None and ms > 0]
            prompts = [p for _, p, _ in values if p is not None]
            completions = [c for _, _, c in values if c is not None]
            both = [(p, c) for _, p, c in values if p is not None and c is not None]
            p50 = round(statistics.median(latencies), 3) if latencies else None
            expert = expert_by_name(session, name)
            cost, note = _cost(name, expert, both)
            change: dict[str, float] = {}
            if apply and expert is not None:
                if p50 is not None and len(latencies) >= min_answers:
                    change["latency_ms"] = p50
                if cost is not None and len(both) >= min_answers:
                    change["cost"] = cost
                elif cost is not None:
                    note = f"{len(both)} answers with token counts, below --min-answers {min_answers}: cost unchanged"
            if change:
                changes[name] = change
            result.append(ExpertUsage(name, len(values), p50, statistics.fmean(prompts) if prompts else None,
                                      statistics.fmean(completions) if completions else None, cost, note,
                                      tuple(change)))
        if changes:
            update_attributes(session, changes)
    return result


def _show_usage(rows: list[ExpertUsage]) -> None:
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    print(f"{'expert':32} {'answers':>8} {'p50 ms':>9} {'prompt tok':>10} {'compl tok':>10} {'cost/answer':>12}  "
          "applied")
    for r in rows:
        cost = "-" if r.cost_per_answer is None else f"{r.cost_per_answer:.6g}"
        note = f"  ({r.cost_note})" if r.cost_note else ""
        print(f"{r.name:32} {r.answers:8} {fmt(r.latency_ms_p50):>9} {fmt(r.prompt_tokens_mean):>10} "
              f"{fmt(r.completion_tokens_mean):>10} {cost:>12}  {', '.join(r.applied) or '-'}{note}")


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
             help="attribute such as params=51e9, cost=0.9 or price_per_1k_prompt_tokens=0.5 (repeatable)"),
         show=_show_added),
    verb("list", list_experts, show=_show_list),
    verb("usage", usage,
         arg("--hours", type=float, default=24.0, help="the window to read (default 24)"),
         arg("--apply", action="store_true",
             help="write each median latency as latency_ms and, for experts with prices, the mean cost per answer "
                  "as cost"),
         arg("--min-answers", type=int, default=5, help="answers an expert needs before --apply changes it"),
         show=_show_usage),
))
