"""Request and response bodies of the HTTP API. Strict: no silent coercion of ``"1"`` to ``1``."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_STRICT = ConfigDict(strict=True, extra="forbid")


class RouteRequest(BaseModel):
    """``prompt`` may carry flags such as ``[Flag: smallest model]``; ``lambdas`` override them."""

    model_config = _STRICT

    prompt: str
    lambdas: dict[str, float] | None = None
    app: str | None = Field(None, min_length=1, max_length=200)


class InferRequest(RouteRequest):
    max_new_tokens: int = Field(32, ge=1, le=1024)


class RouteResponse(BaseModel):
    request_id: str
    expert: str
    predicted_losses: dict[str, float]
    objective: dict[str, float]
    router_version: int
    lambdas: dict[str, float]
    sampled: bool
    propensity: float
    latency_ms: float


class InferResponse(RouteResponse):
    output: dict[str, Any]


class FeedbackRequest(BaseModel):
    """A loss (≥ 0) or a score in [0, 1] (loss = 1 − score) for the expert that served a request, or another."""

    model_config = _STRICT

    request_id: str = Field(min_length=1, max_length=36)
    loss: float | None = None
    score: float | None = None
    expert: str | None = Field(None, min_length=1, max_length=200)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    app: str | None = Field(None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _one_finite_value(self) -> "FeedbackRequest":
        if (self.loss is None) == (self.score is None):
            raise ValueError("give exactly one of 'loss' or 'score'")
        if self.loss is not None and (not math.isfinite(self.loss) or self.loss < 0):
            raise ValueError(f"'loss' must be a finite number >= 0, got {self.loss}")
        if self.score is not None and (not math.isfinite(self.score) or not 0.0 <= self.score <= 1.0):
            raise ValueError(f"'score' must be a number in [0, 1], got {self.score}")
        return self

    @property
    def effective_loss(self) -> float:
        return float(self.loss) if self.loss is not None else 1.0 - float(self.score)  # type: ignore[arg-type]


class FeedbackResponse(BaseModel):
    status: Literal["accepted", "duplicate"]
    idempotency_key: str
    expert: str
    loss: float


class ExpertStatus(BaseModel):
    name: str
    kind: str | None
    version: int | None
    status: str | None
    attributes: dict[str, Any]
    in_router: bool


class StatusResponse(BaseModel):
    router_version: int | None
    router_sha256: str | None
    loaded_at: str | None
    active_in_db: int | None
    serving_fallback: bool = Field(description="true while router_version serves because active_in_db cannot be loaded")
    active_load_error: str | None = Field(description="why the active version cannot be loaded, while falling back")
    last_checked_at: str | None
    last_swap_error: str | None
    last_swap_error_at: str | None
    swaps: int
    swap_failures: int
    listening: bool
    experts: list[ExpertStatus]
    counts: dict[str, int]
    writer: dict[str, Any]
    default_lambdas: dict[str, float]
    label_share: float
