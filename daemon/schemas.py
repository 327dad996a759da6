"""Request and response bodies of the HTTP API. Strict: no silent coercion of ``"1"`` to ``1``.

The models carry every constraint the endpoints enforce that a JSON Schema can say, so
``/openapi.json`` tells the truth; what it cannot say (a prompt made only of whitespace or flags,
an unknown request id or expert) is answered with a documented 4xx and an ``ErrorResponse``.
Every text field follows one rule (``store/text.py``): no lone surrogates, no control characters
other than tab, newline and carriage return.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router.constraints import CONSTRAINTS, MAX_LAMBDA
from store.text import TEXT_PATTERN, check_text

_STRICT = ConfigDict(strict=True, extra="forbid")

Text = Annotated[str, Field(json_schema_extra={"pattern": TEXT_PATTERN})]
"""A string field of a request body: the text rule, as the schema shows it (``_TextRule`` enforces it)."""

UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

_LAMBDAS_SCHEMA = {
    "propertyNames": {"enum": list(CONSTRAINTS)},
    "additionalProperties": {"type": "number", "minimum": 0, "maximum": MAX_LAMBDA},
}


class _TextRule(BaseModel):
    """A strict request body whose every string field follows the one text rule (422 with a sentence).

    A ``before`` validator, so that it also sees lone surrogates, which pydantic's own length checks
    would refuse first with a vaguer message.
    """

    model_config = _STRICT

    @field_validator("*", mode="before")
    @classmethod
    def _text_rule(cls, value: Any) -> Any:
        return check_text(value)


class RouteRequest(_TextRule):
    """``prompt`` may carry flags such as ``[Flag: smallest model]``; ``lambdas`` override them.

    A prompt of whitespace only, or of flags only, is refused with 422; so is one longer than
    ``THALAMUS_MAX_PROMPT_CHARS`` (the served schema shows that limit as ``maxLength``).
    """

    prompt: Text = Field(min_length=1)
    lambdas: Annotated[dict[str, float], Field(json_schema_extra=_LAMBDAS_SCHEMA)] | None = None
    app: Text | None = Field(None, min_length=1, max_length=200)
    explore: bool = Field(True, description="false: serve the argmin, never explore (so does every request of "
                                           "an app in THALAMUS_EXPLORE_OPT_OUT_APPS)")


class InferRequest(RouteRequest):
    max_new_tokens: int = Field(32, ge=1, le=1024)


class RouteResponse(BaseModel):
    request_id: str
    expert: str
    predicted_losses: dict[str, float]
    # Half-width of each predicted loss's calibrated 80 % interval; absent for a router without one.
    predicted_spread: dict[str, float | None] | None = None
    objective: dict[str, float]
    router_version: int
    lambdas: dict[str, float]
    sampled: bool
    propensity: float = Field(description="probability of the served expert under the policy that served it")
    explored: bool = Field(description="true when the exploration policy served another expert than the argmin")
    action_probs: dict[str, float] = Field(description="the policy's whole distribution over the experts (sums to 1)")
    latency_ms: float


class InferResponse(RouteResponse):
    output: dict[str, Any]
    expert_version: int | None = Field(None, description="the version of the expert's weights that answered")


class FeedbackRequest(_TextRule):
    """A loss (≥ 0) or a score in [0, 1] (loss = 1 − score) for the expert that served a request, or another."""

    request_id: str = Field(min_length=36, max_length=36, pattern=UUID_PATTERN,
                             description="the request_id a /v1/route or /v1/infer answer gave")
    loss: float | None = Field(None, ge=0, allow_inf_nan=False,
                               description="at most THALAMUS_MAX_LOSS, or the expert's max_loss attribute")
    score: float | None = Field(None, ge=0, le=1, allow_inf_nan=False, description="loss = 1 - score")
    expert: Text | None = Field(None, min_length=1, max_length=200)
    idempotency_key: Text | None = Field(None, min_length=1, max_length=200)
    app: Text | None = Field(None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _one_value(self) -> FeedbackRequest:
        if (self.loss is None) == (self.score is None):
            raise ValueError("give exactly one of 'loss' or 'score'")
        return self

    @property
    def effective_loss(self) -> float:
        if self.loss is not None:
            return float(self.loss)
        assert self.score is not None  # the validator above guarantees exactly one of the two
        return 1.0 - float(self.score)


class FeedbackResponse(BaseModel):
    status: Literal["accepted", "duplicate"]
    idempotency_key: str
    expert: str
    loss: float


class ErrorItem(BaseModel):
    type: str
    loc: list[str]
    msg: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: one readable sentence; request validation adds the structured errors."""

    detail: str
    errors: list[ErrorItem] | None = None


_ERROR_DESCRIPTIONS = {
    400: "Malformed JSON.",
    401: "No API key, or one that is not valid, revoked or expired (``WWW-Authenticate: Bearer``).",
    403: "The API key lacks the scope this endpoint needs, or the request belongs to another application.",
    404: "Unknown request id, router version or job.",
    409: "The chosen expert cannot run in the daemon, or the router version is not in a state that allows it.",
    429: "The API key's rate limit is exceeded; ``Retry-After`` says when to retry.",
    422: "The request is well-formed JSON but invalid; ``detail`` says why in one sentence.",
    503: "Not ready: no router is loaded yet, or the database is unreachable.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these status codes, all with the ErrorResponse body."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        responses[code] = {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[code]}
        if code == 429:
            responses[code]["headers"] = {"Retry-After": {"schema": {"type": "integer"},
                                                          "description": "seconds to wait"}}
    return responses


class HealthResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str
    router_version: int | None = None
    detail: str | None = None


class ExpertStatus(BaseModel):
    name: str
    kind: str | None
    version: int | None
    status: str | None
    attributes: dict[str, Any]
    in_router: bool


class ExploreStatus(BaseModel):
    """The exploration policy in force (``router/exploration.py``)."""

    policy: str = Field(description="THALAMUS_EXPLORE: off, epsilon:ε or softmax:τ")
    kind: str
    value: float
    margin: float = Field(description="THALAMUS_EXPLORE_MARGIN, in units of the router's loss scale")
    scope: str = Field("margin", description="THALAMUS_EXPLORE_SCOPE: margin, or overlap (calibrated intervals)")
    top: int = Field(0, description="THALAMUS_EXPLORE_TOP: only this many alternatives nearest the argmin are "
                                    "explored (0: every eligible one)")
    loss_scale: float | None = Field(description="the served router's loss scale (mean per-expert loss std)")
    opt_out_apps: list[str]
class ShadowStatus(BaseModel):
    """A shadow router this daemon runs (or fails to load), with its counts since the daemon started."""

    version: int
    share: float | None = Field(description="share of live requests it routes; null while it is not loaded")
    loaded: bool
    sha256: str | None
    loaded_at: str | None
    load_error: str | None = Field(description="why it is not loaded; serving is not affected")
    routed: int = Field(description="shadow decisions made and written")
    dropped: int = Field(description="sampled requests dropped: the shadow queue was full, or serving never "
                                     "paused for 1 s")
    failed: int = Field(description="sampled requests whose shadow decision failed (prediction or write)")


class StatusResponse(BaseModel):
    router_version: int | None
    router_sha256: str | None
    loaded_at: str | None
    inference: str | None = Field(None, description="what computes the served router's predictions: "
                                  "'onnx-int8' or 'onnx-fp32' (the bundle's export), or 'torch' with the reason")
    pid: int | None = Field(None, description="the server process that answered (THALAMUS_WORKERS runs several)")
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
    explore: ExploreStatus

    shadows: list[ShadowStatus]
    shadow_queue: dict[str, Any]
