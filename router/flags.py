"""Flags written in a prompt, e.g. ``[Flag: smallest model]`` or ``[Flag: size=2.5]``, set λ."""

from __future__ import annotations

import math
import re

from router.constraints import CONSTRAINTS

STRONG = 16.0
NAMED = {
    "smallest model": {"size": STRONG}, "smallest": {"size": STRONG}, "small model": {"size": STRONG},
    "cheapest": {"cost": STRONG}, "cheapest model": {"cost": STRONG},
    "fastest": {"latency": STRONG}, "fastest model": {"latency": STRONG},
    "newest": {"recency": STRONG}, "newest model": {"recency": STRONG},
    "best quality": {name: 0.0 for name in CONSTRAINTS}, "best": {name: 0.0 for name in CONSTRAINTS},
}
_FLAG = re.compile(r"\[\s*flag\s*:\s*([^\]]*)\]", re.IGNORECASE)


class FlagError(ValueError):
    """A flag that names nothing known or carries a bad value."""


def _parse_one(body: str) -> dict[str, float]:
    text = " ".join(body.lower().split())
    if text in NAMED:
        return dict(NAMED[text])
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep:
        known = ", ".join(sorted(NAMED))
        raise FlagError(f"unknown flag [Flag: {body.strip()}]; use one of: {known}, or CONSTRAINT=WEIGHT")
    if name not in CONSTRAINTS:
        raise FlagError(f"flag [Flag: {body.strip()}] names unknown constraint {name!r}; known: {', '.join(CONSTRAINTS)}")
    try:
        value = float(raw)
    except ValueError:
        raise FlagError(f"flag [Flag: {body.strip()}] needs a number after '='") from None
    if not math.isfinite(value) or value < 0:
        raise FlagError(f"flag [Flag: {body.strip()}] needs a finite, non-negative weight")
    return {name: value}


def parse_flags(prompt: str) -> tuple[str, dict[str, float]]:
    """The prompt without its flags (whitespace tidied) and the λ the flags set (later flags win)."""
    lambdas: dict[str, float] = {}
    for match in _FLAG.finditer(prompt):
        lambdas.update(_parse_one(match.group(1)))
    if not lambdas and not _FLAG.search(prompt):
        return prompt, {}
    cleaned = _FLAG.sub(" ", prompt)
    cleaned = re.sub(r"[ \t]+", " ", cleaned)
    cleaned = re.sub(r" *\n *", "\n", cleaned).strip()
    return cleaned, lambdas
