"""Constraint functions C_j(M_i) of experts and the routing objective.

Route = argmin_i  L̂(z, M_i) + Σ_j λ_j · C_j(M_i), with every C_j scaled to [0, 1] across the
current expert library so that λ is comparable between constraints.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CONSTRAINTS: tuple[str, ...] = ("size", "cost", "latency", "recency")
"""Constraint names, in the column order of :func:`constraint_matrix`."""

ATTRIBUTES: dict[str, str] = {
    "size": "params",
    "cost": "cost",
    "latency": "latency_ms",
    "recency": "release_date",
}
"""The expert attribute each constraint reads."""


MAX_LAMBDA = 1e6
"""The largest λ: every C_j lies in [0, 1], so a larger weight changes no choice, only risks an
objective that overflows to infinity (and a response that cannot be written as JSON)."""


class LambdaError(ValueError):
    """A λ mapping names an unknown constraint or holds a value that is not a finite number ≥ 0."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip()[:10])
        except ValueError:
            return None
    return None


def constraint_matrix(attributes: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Shape (E, C) matrix of constraint penalties, each column in [0, 1].

    size/cost/latency: value / max value over experts. recency: age / max age, where an
    expert's age is counted from the newest release date in the library (the newest expert
    gets 0, so the matrix does not drift with the wall clock).

    A missing attribute (absent or None) is penalised as the column maximum, 1.0: an expert of
    unknown size is never picked by a size constraint by accident. A present but invalid value
    (not a number, negative, not an ISO date) raises ValueError naming the expert index.
    A column whose maximum is 0 is all zeros.
    """
    n = len(attributes)
    out = np.ones((n, len(CONSTRAINTS)), dtype=np.float64)
    for j, name in enumerate(CONSTRAINTS):
        key = ATTRIBUTES[name]
        raw: list[float | None] = []
        for i, attrs in enumerate(attributes):
            value = attrs.get(key)
            if value is None:
                raw.append(None)
                continue
            if name == "recency":
                date = _date(value)
                if date is None:
                    raise ValueError(f"expert {i}: {key}={value!r} is not an ISO date (YYYY-MM-DD)")
                raw.append(float(date.toordinal()))
                continue
            number = _number(value)
            if number is None or not math.isfinite(number) or number < 0:
                raise ValueError(f"expert {i}: {key}={value!r} is not a finite number >= 0")
            raw.append(number)
        known = [v for v in raw if v is not None]
        if not known:
            continue
        if name == "recency":
            newest = max(known)
            raw = [None if v is None else newest - v for v in raw]
            known = [v for v in raw if v is not None]
        top = max(known)
        for i, v in enumerate(raw):
            if v is not None:
                out[i, j] = v / top if top > 0 else 0.0
    return out


def validate_lambdas(lambdas: Mapping[str, Any]) -> dict[str, float]:
    """Check a λ mapping and return it as {constraint: float}; raises LambdaError naming the bad key."""
    if not isinstance(lambdas, Mapping):
        raise LambdaError(f"lambdas must be a mapping of constraint name to weight, got {type(lambdas).__name__}")
    out: dict[str, float] = {}
    for key, value in lambdas.items():
        if key not in CONSTRAINTS:
            raise LambdaError(f"unknown constraint {key!r} in lambdas; known: {', '.join(CONSTRAINTS)}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise LambdaError(f"lambda {key!r} must be a number, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise LambdaError(f"lambda {key!r} must be finite, got {value!r}")
        if number < 0:
            raise LambdaError(f"lambda {key!r} must be >= 0, got {value!r}")
        if number > MAX_LAMBDA:
            raise LambdaError(f"lambda {key!r} must be <= {MAX_LAMBDA:g}, got {value!r}")
        out[key] = number
    return out


def penalty(constraints: np.ndarray, lambdas: Mapping[str, float]) -> np.ndarray:
    """Σ_j λ_j · C[:, j], shape (E,)."""
    weights = validate_lambdas(lambdas)
    constraints = np.asarray(constraints, dtype=np.float64)
    if constraints.ndim != 2 or constraints.shape[1] != len(CONSTRAINTS):
        raise ValueError(f"constraints must have shape (E, {len(CONSTRAINTS)}), got {constraints.shape}")
    vector = np.array([weights.get(name, 0.0) for name in CONSTRAINTS])
    return constraints @ vector


def objective(predicted: np.ndarray, constraints: np.ndarray, lambdas: Mapping[str, float]) -> np.ndarray:
    """predicted (E,) or (B, E) plus the λ-weighted constraint penalty; same shape as predicted."""
    predicted = np.asarray(predicted, dtype=np.float64)
    extra = penalty(constraints, lambdas)
    if predicted.shape[-1] != extra.shape[0]:
        raise ValueError(f"predicted has {predicted.shape[-1]} experts but constraints have {extra.shape[0]}")
    return predicted + extra


def choose(
    predicted: np.ndarray, constraints: np.ndarray, lambdas: Mapping[str, float]
) -> tuple[int | np.ndarray, np.ndarray]:
    """Argmin of the objective: an int for (E,) input, an index array for (B, E); ties go to the lower index."""
    scores = objective(predicted, constraints, lambdas)
    index = np.argmin(scores, axis=-1)
    if scores.ndim == 1:
        return int(index), scores
    return index, scores
