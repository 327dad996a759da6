"""A typed Python client of the thalamus daemon (on httpx): routing, feedback, completions, admin verbs.

    from thalamus_client import Client

    with Client("http://127.0.0.1:8700", api_key="thk_...") as thalamus:
        answer = thalamus.chat([{"role": "user", "content": "Write a haiku about rivers"}])
        thalamus.feedback(answer.request_id, score=0.9)

Every call raises :class:`ThalamusError` (status code and the daemon's one-sentence message) on a
4xx/5xx answer. The official ``openai`` package works against the same daemon too
(``base_url=http://127.0.0.1:8700/v1``); this client adds the routing headers, feedback and admin.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import httpx

__all__ = ["Client", "Completion", "Feedback", "Route", "StreamedCompletion", "ThalamusError"]


class ThalamusError(Exception):
    """A 4xx/5xx answer: ``status`` and the daemon's message (``detail``, or OpenAI's ``error.message``)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after


@dataclass(frozen=True)
class Route:
    """The answer of ``POST /v1/route``: the chosen expert and what the router predicted."""

    request_id: str
    expert: str
    router_version: int
    predicted_losses: dict[str, float]
    objective: dict[str, float]
    lambdas: dict[str, float]
    sampled: bool
    propensity: float
    latency_ms: float


@dataclass(frozen=True)
class Feedback:
    status: str  # "accepted" or "duplicate"
    idempotency_key: str
    expert: str
    loss: float


@dataclass(frozen=True)
class Completion:
    """A (chat) completion and the routing decision from the ``x-thalamus-*`` headers."""

    request_id: str
    expert: str
    router_version: int | None
    attempts: int
    text: str
    body: dict[str, Any]


@dataclass
class StreamedCompletion:
    """A streamed completion: iterate for text pieces; the decision is known before the first piece."""

    request_id: str
    expert: str
    router_version: int | None
    attempts: int
    _pieces: Iterator[str] = field(repr=False)
    text: str = ""

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self.text += piece
            yield piece


def _error(response: httpx.Response) -> ThalamusError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = body.get("detail") if isinstance(body, dict) else None
    if message is None and isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message")
    retry = response.headers.get("retry-after")
    return ThalamusError(response.status_code, str(message or response.text[:200] or response.reason_phrase),
                         float(retry) if retry else None)


def _text(choice: Mapping[str, Any]) -> str:
    if "message" in choice:
        return str((choice.get("message") or {}).get("content") or "")
    if "delta" in choice:
        return str((choice.get("delta") or {}).get("content") or "")
    return str(choice.get("text") or "")


class Client:
    """One daemon, one API key. ``http`` lets a caller pass its own ``httpx.Client`` (tests, proxies)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8700", api_key: str | None = None, *,
                 timeout: float = 60.0, http: httpx.Client | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._owned = http is None
        self.http = http or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        self.http.headers.update(headers)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self.http.close()

    def _call(self, method: str, path: str, body: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        response = self.http.request(method, path, json=body, params=params)
        if response.status_code >= 400:
            raise _error(response)
        return response.json()

    # --- routing and feedback --------------------------------------------------------------------

    def route(self, prompt: str, lambdas: Mapping[str, float] | None = None, explore: bool | None = None) -> Route:
        """Choose the expert for ``prompt`` (call it yourself, then post feedback with ``request_id``);
        ``explore=False`` always serves the argmin."""
        request: dict[str, Any] = {"prompt": prompt}
        if lambdas:
            request["lambdas"] = dict(lambdas)
        if explore is not None:
            request["explore"] = explore
        body = self._call("POST", "/v1/route", request)
        return Route(**{name: body[name] for name in Route.__dataclass_fields__})

    def feedback(self, request_id: str, *, loss: float | None = None, score: float | None = None,
                 expert: str | None = None, idempotency_key: str | None = None) -> Feedback:
        """Report how a request went: a ``loss`` >= 0 or a ``score`` in [0, 1] (for another ``expert`` if given)."""
        given = {"loss": loss, "score": score, "expert": expert, "idempotency_key": idempotency_key}
        body = self._call("POST", "/v1/feedback", {"request_id": request_id,
                                                    **{k: v for k, v in given.items() if v is not None}})
        return Feedback(**body)

    # --- the OpenAI-compatible gateway -------------------------------------------------------------

    def chat(self, messages: Sequence[Mapping[str, Any]], model: str = "thalamus", **params: Any) -> Completion:
        """A chat completion: ``model`` is ``thalamus``, ``thalamus:<preset>`` or an expert's name."""
        return self._complete("/v1/chat/completions", {"model": model, "messages": list(messages), **params})

    def complete(self, prompt: str, model: str = "thalamus", **params: Any) -> Completion:
        """A text completion (``POST /v1/completions``)."""
        return self._complete("/v1/completions", {"model": model, "prompt": prompt, **params})

    def stream_chat(self, messages: Sequence[Mapping[str, Any]], model: str = "thalamus",
                    **params: Any) -> StreamedCompletion:
        """A streamed chat completion; iterate the result for text pieces (read it to the end)."""
        body = {"model": model, "messages": list(messages), **params, "stream": True}
        request = self.http.build_request("POST", "/v1/chat/completions", json=body)
        response = self.http.send(request, stream=True)
        if response.status_code >= 400:
            response.read()
            response.close()
            raise _error(response)

        def pieces() -> Iterator[str]:
            try:
                for line in response.iter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    event = json.loads(line[5:])
                    for choice in event.get("choices") or ():
                        text = _text(choice)
                        if text:
                            yield text
            finally:
                response.close()

        return StreamedCompletion(*self._decision(response), _pieces=pieces())

    def models(self) -> list[str]:
        """The model names ``chat`` and ``complete`` accept."""
        return [row["id"] for row in self._call("GET", "/v1/models")["data"]]

    def _complete(self, path: str, body: dict[str, Any]) -> Completion:
        response = self.http.post(path, json=body)
        if response.status_code >= 400:
            raise _error(response)
        payload = response.json()
        choices = payload.get("choices") or [{}]
        return Completion(*self._decision(response), text=_text(choices[0]), body=payload)

    @staticmethod
    def _decision(response: httpx.Response) -> tuple[str, str, int | None, int]:
        version = response.headers.get("x-thalamus-router-version")
        return (response.headers["x-thalamus-request-id"], response.headers["x-thalamus-expert"],
                int(version) if version else None, int(response.headers.get("x-thalamus-attempts", "1")))

    # --- status and admin (an ``admin`` key) ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/status")
        return result

    def versions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/admin/versions")
        return result

    def version(self, version_id: int) -> dict[str, Any]:
        """The version's report: ``version``, ``holdout``, ``off_policy``, ``gate`` (``admin show --json``)."""
        result: dict[str, Any] = self._call("GET", f"/v1/admin/versions/{version_id}")
        return result

    def approve(self, version_id: int, reason: str | None = None, force: bool = False) -> dict[str, Any]:
        """Approve and activate a candidate unless the promotion gate refuses it (``force`` needs a reason)."""
        body: dict[str, Any] = {"force": force} if force else {}
        if reason:
            body["reason"] = reason
        result: dict[str, Any] = self._call("POST", f"/v1/admin/versions/{version_id}/approve", body)
        return result

    def activate(self, version_id: int, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/v1/admin/versions/{version_id}/activate", {"reason": reason})
        return result

    def reject(self, version_id: int, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/v1/admin/versions/{version_id}/reject", {"reason": reason})
        return result

    def rollback(self, reason: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/v1/admin/rollback", {"reason": reason} if reason else {})
        return result

    def job_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/admin/jobs", params={"limit": limit})
        return result

    def trigger_job(self, name: str, params: Mapping[str, Any] | None = None) -> int:
        """Queue a job run on the workers; returns its run id."""
        return int(self._call("POST", f"/v1/admin/jobs/{name}", {"params": dict(params or {})})["run"])

    def experts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/admin/experts")
        return result
