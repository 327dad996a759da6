"""The range every stored loss must lie in: ``[0, max_loss]``.

``max_loss`` is the expert's ``max_loss`` attribute when it holds a positive number, otherwise
``THALAMUS_MAX_LOSS`` (100 nats by default: far above any per-token NLL or ``1 − score``, far
below where a float32 mean overflows). Every ingestion path refuses a loss outside it (feedback,
``ingest losses``, computed scoring) and training skips a stored row outside it, so one bad value
cannot poison the table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from store.schema import Expert

DEFAULT_MAX_LOSS = 100.0
MAX_LOSS_ATTRIBUTE = "max_loss"


def max_loss(attributes: Mapping[str, Any] | None, default: float = DEFAULT_MAX_LOSS) -> float:
    """The expert's own bound when its ``max_loss`` attribute is a positive finite number, else ``default``."""
    value = (attributes or {}).get(MAX_LOSS_ATTRIBUTE)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return default


def bounds_of(experts: Iterable[Expert], default: float = DEFAULT_MAX_LOSS) -> dict[str, float]:
    """Each expert's bound by name."""
    return {expert.name: max_loss(expert.attributes, default) for expert in experts}


def loss_problem(loss: float, bound: float) -> str | None:
    """Why ``loss`` may not be stored (a phrase for a sentence), or None when it lies in ``[0, bound]``."""
    if not isinstance(loss, (int, float)) or isinstance(loss, bool) or not math.isfinite(loss):
        return f"loss {loss!r} is not a finite number"
    if not 0.0 <= loss <= bound:
        return (f"loss {loss:g} is outside the allowed range [0, {bound:g}] "
                f"(THALAMUS_MAX_LOSS, or the expert's '{MAX_LOSS_ATTRIBUTE}' attribute)")
    return None
