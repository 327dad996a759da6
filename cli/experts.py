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


def _show_library(experts: list[ExpertInfo]) -> None:
    print(f"demo library ready: {', '.join(f'{e.name} (v{e.version})' for e in experts)}")


def _show_added(expert: ExpertInfo) -> None:
    print(f"expert {expert.name} registered: kind {expert.kind}, version {expert.version}")


def _show_list(experts: list[ExpertInfo]) -> None:
    for e in experts:
        print(f"{e.name:32} {e.kind:10} v{e.version:<3} {json.dumps(e.attributes, default=str)}")


GROUP = Group("experts", "the expert library (build the demo experts, add, list)", (
    verb("build-demo", build_demo, arg("--seed", type=int, default=0), show=_show_library, cli={"progress": True}),
    verb("add", add,
         arg("name"),
         arg("--kind", required=True, choices=KINDS),
         arg("--uri", help="local Hugging Face model directory (masked-lm / causal-lm)"),
         arg("--attr", dest="attributes", action=KeyValues, default={}, metavar="KEY=VALUE",
             help="attribute such as params=51e9 or cost=0.9 (repeatable)"),
         show=_show_added),
    verb("list", list_experts, show=_show_list),
))
