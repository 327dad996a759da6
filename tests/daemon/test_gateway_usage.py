"""The gateway keeps an upstream's token counts only when they are counts: they become cost data."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.gateway import Gateway, Served, Target
from daemon.holder import ExpertInfo


@pytest.mark.parametrize(("usage", "kept"), [
    ({"prompt_tokens": 12, "completion_tokens": 0}, (12, 0)),
    ({"prompt_tokens": -3, "completion_tokens": True}, (None, None)),
    ({"prompt_tokens": 1.5, "completion_tokens": 2**31}, (None, None)),
    ({"prompt_tokens": "7"}, (None, None)),
    ("not a dict", (None, None)),
])
def test_take_usage_keeps_only_plausible_counts(usage: Any, kept: tuple[int | None, int | None]) -> None:
    served = Served(Target(ExpertInfo("up", "external", None, 1, {}, "active")), 1)
    Gateway._take_usage(served, usage)
    assert (served.prompt_tokens, served.completion_tokens) == kept
