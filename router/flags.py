"""Routing flags written inside a prompt, e.g. ``[Flag: smallest model]`` or ``[Flag: cost=1]``.

A flag bracket may hold several comma-separated flags (``[Flag: cheapest, fastest]``).
Flags apply left to right; a later flag overrides an earlier one for the same constraint.
"""

from __future__ import annotations

import math
import re

from router.constraints import CONSTRAINTS

FLAG_WEIGHT: float = 16.0
"""λ a named flag sets. Constraints are scaled to [0, 1], so 16 outweighs any realistic loss gap."""

_NAMED: dict[str, dict[str, float]] = {
    "smallest model": {"size": FLAG_WEIGHT},
    "smallest": {"size": FLAG_WEIGHT},
    "cheapest": {"cost": FLAG_WEIGHT},
    "cheapest model": {"cost": FLAG_WEIGHT},
    "fastest": {"latency": FLAG_WEIGHT},
    "fastest model": {"latency": FLAG_WEIGHT},
    "newest": {"recency": FLAG_WEIGHT},
    "newest model": {"recency": FLAG_WEIGHT},
    "best quality": {name: 0.0 for name in CONSTRAINTS},
    "best": {name: 0.0 for name in CONSTRAINTS},
}

_FLAG = re.compile(r"\[\s*flag\s*:([^\]]*)\]", re.IGNORECASE)
_EXPLICIT = re.compile(r"^([a-z_]+)\s*=\s*(.*)$", re.IGNORECASE)


class FlagError(ValueError):
    """A flag in the prompt is unknown or carries a bad value."""


def _apply(flag: str, lambdas: dict[str, float]) -> None:
    text = " ".join(flag.split()).lower()
    if not text:
        raise FlagError("empty flag: write e.g. [Flag: smallest model] or [Flag: size=2.5]")
    if text in _NAMED:
        lambdas.update(_NAMED[text])
        return
    match = _EXPLICIT.match(text)
    if match is None:
        known = ", ".join(sorted(_NAMED))
        raise FlagError(f"unknown flag {flag.strip()!r}; known flags: {known}, or <constraint>=<weight>")
    name, raw = match.group(1), match.group(2).strip()
    if name not in CONSTRAINTS:
        raise FlagError(f"unknown constraint {name!r} in flag {flag.strip()!r}; known: {', '.join(CONSTRAINTS)}")
    try:
        value = float(raw)
    except ValueError:
        raise FlagError(f"flag {flag.strip()!r}: {raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise FlagError(f"flag {flag.strip()!r}: the weight must be a finite number >= 0")
    lambdas[name] = value


def parse_flags(prompt: str) -> tuple[str, dict[str, float]]:
    """Strip ``[Flag: ...]`` markers from a prompt; return the clean prompt and the λ they set.

    Matching is case-insensitive. Only constraints mentioned by a flag appear in the dict
    (``best quality`` sets all of them to 0). Raises FlagError for unknown flags or bad values.
    """
    lambdas: dict[str, float] = {}
    for match in _FLAG.finditer(prompt):
        for part in match.group(1).split(","):
            _apply(part, lambdas)
    if not lambdas and _FLAG.search(prompt) is None:
        return prompt, {}
    text = _FLAG.sub(" ", prompt)
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.split("\n")]
    return "\n".join(lines).strip(), lambdas
