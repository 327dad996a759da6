"""Bodies of the OpenAI-compatible endpoints (``daemon/routes/openai.py``).

Requests accept OpenAI's fields and keep any other one (``extra="allow"``) so that parameters this
daemon does not read (``temperature``, ``tools``, ``response_format``...) reach an upstream expert
unchanged. The fields the gateway reads are typed and checked (text rule included); a bad one is a
400 in OpenAI's error shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from daemon.schemas import Text
from store.text import check_text

_OPEN = ConfigDict(extra="allow")


class ContentPart(BaseModel):
    """One part of a message's content; only ``text`` parts are read for routing and local generation."""

    model_config = _OPEN

    type: Text = Field(min_length=1, max_length=50)
    text: Text | None = None

    _text_rule = field_validator("type", "text", mode="before")(check_text)


class ChatMessage(BaseModel):
    model_config = _OPEN

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Text | list[ContentPart] | None = None
    name: Text | None = Field(None, max_length=200)

    _text_rule = field_validator("content", "name", mode="before")(check_text)

    @property
    def text(self) -> str:
        """The message's text: the string, or its text parts joined by newlines."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content if part.text)


class StreamOptions(BaseModel):
    model_config = _OPEN

    include_usage: bool | None = None


class _Generation(BaseModel):
    """What both endpoints share. ``model``: ``thalamus``, ``thalamus:<preset>``, or an expert's name."""

    model_config = _OPEN

    model: Text = Field(min_length=1, max_length=200)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    n: int | None = Field(None, ge=1, le=1, description="only one choice is generated")

    _text_rule = field_validator("model", mode="before")(check_text)

    def upstream_body(self, model: str) -> dict[str, Any]:
        """The request as an upstream expert gets it: every field as sent, ``model`` its name there."""
        return {**self.model_dump(exclude_unset=True, exclude_none=True), "model": model}


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1, max_length=10_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def routing_text(self) -> str:
        """What the router reads: the user messages' text (the last message's when there is no user message)."""
        users = [m.text for m in self.messages if m.role == "user" and m.text.strip()]
        return "\n".join(users) if users else self.messages[-1].text


class CompletionRequest(_Generation):
    prompt: Text | list[Text] = Field(min_length=1)

    _prompt_rule = field_validator("prompt", mode="before")(check_text)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("give one prompt (a string, or a list of exactly one string)")
        return value

    @property
    def token_budget(self) -> int | None:
        return self.max_tokens

    def routing_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error shape: every 4xx/5xx of these endpoints."""

    error: OpenAIErrorBody


class Usage(BaseModel):
    model_config = _OPEN

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """A ``chat.completion`` (``stream: false``); with ``stream: true`` the answer is ``text/event-stream``."""

    model_config = _OPEN

    id: str
    object: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: Usage | None = None


class Completion(ChatCompletion):
    """A ``text_completion`` (``stream: false``)."""


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


_DESCRIPTIONS = {
    400: "Invalid request (OpenAI's ``invalid_request_error``).",
    401: "No API key, or one that is not valid, revoked or expired.",
    403: "The API key lacks the scope this endpoint needs.",
    404: "Unknown model.",
    409: "No expert of the router can answer completions.",
    422: "Never sent: an invalid request is a 400 here, as in OpenAI's API.",
    429: "The API key's rate limit is exceeded; see ``Retry-After``.",
    502: "The upstream expert failed (connection error or 5xx), also on the retry.",
    503: "No router is loaded yet, or the database is unreachable.",
    504: "The upstream expert did not answer in time.",
}


def openai_error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries with OpenAI's error body."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": OpenAIError, "description": _DESCRIPTIONS[code]}
        if code == 429:
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}
        responses[code] = entry
    return responses
