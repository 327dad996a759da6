"""The OpenAI-compatible gateway: choose the expert, call it (upstream or local), log the answer.

``model`` names what to do:

- ``thalamus`` / ``thalamus:<preset>``: route the user messages' text (λ from the preset, a setting
  of ``THALAMUS_MODEL_PRESETS`` or a named prompt flag such as ``smallest`` or ``cost=2``), then
  call the best expert that can answer completions; on a connection error or a 5xx, call the
  next best once (the row records ``attempts`` and ``served_by``).
- the name of an expert of the router: call it without routing (still logged, no retry).

An expert answers completions when its attributes give an OpenAI-compatible ``base_url`` (the
request is forwarded with ``model`` set to its ``model`` attribute, or its name, and its credential
from ``api_key_env`` / ``api_key_file`` as a bearer token), or when it is a local causal-LM
(greedy generation in this process). Streaming (SSE) works for both. Every answer carries
``x-thalamus-request-id``, ``x-thalamus-expert`` and ``x-thalamus-router-version``; the request
row holds the upstream's token usage and latency. Errors are OpenAI-shaped (``daemon/openai_errors.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
from fastapi import HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.responses import Response

from daemon.holder import ExpertInfo, RouterHolder
from daemon.logwriter import RequestLogWriter
from daemon.metrics import Metrics
from daemon.openai_errors import openai_error
from daemon.openai_schemas import ChatCompletionRequest, CompletionRequest
from router.hashing import Salt, stable_fraction
from store.schema import utcnow
from store.settings import Settings

if TYPE_CHECKING:
    from experts.local import ExpertCache, Generated

log = logging.getLogger(__name__)

Kind = Literal["chat", "completions"]
ROUTED_MODEL = "thalamus"
_PATHS: dict[Kind, str] = {"chat": "/chat/completions", "completions": "/completions"}


class UpstreamFailed(Exception):
    """An expert could not answer (connection error, 5xx, a local model that does not load): worth a retry."""


@dataclasses.dataclass(frozen=True)
class Target:
    """An expert the gateway can call: upstream (``base_url``) or local (a causal-LM directory)."""

    info: ExpertInfo

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def base_url(self) -> str | None:
        value = self.info.attributes.get("base_url")
        return str(value).rstrip("/") if value else None

    @property
    def upstream_model(self) -> str:
        return str(self.info.attributes.get("model") or self.info.name)

    def credential(self) -> str | None:
        """The upstream's key, read now from the environment variable or file its attributes name."""
        attributes = self.info.attributes
        env, file = attributes.get("api_key_env"), attributes.get("api_key_file")
        if env:
            value = os.environ.get(str(env), "").strip()
            if not value:
                raise UpstreamFailed(f"expert {self.name!r}: the environment variable {env} holding its key is unset")
            return value
        if file:
            try:
                return Path(str(file)).expanduser().read_text().strip() or None
            except OSError as exc:
                raise UpstreamFailed(f"expert {self.name!r}: its key file cannot be read: {exc.strerror}") from None
        return None

    def timeout(self, settings: Settings) -> httpx.Timeout:
        seconds = float(self.info.attributes.get("timeout_seconds") or settings.upstream_timeout_seconds)
        return httpx.Timeout(seconds, connect=min(seconds, settings.upstream_connect_seconds))


def target_of(info: ExpertInfo | None) -> Target | None:
    """The expert as a completion target, or None when it cannot answer completions."""
    if info is None or not info.registered or info.status not in (None, "active"):
        return None
    if info.attributes.get("base_url") or (info.kind == "causal-lm" and info.uri):
        return Target(info)
    return None


@dataclasses.dataclass
class Plan:
    """Who to call for one request, and what the request row will say about the decision."""

    request_id: str
    prompt: str
    lambdas: dict[str, float]
    candidates: list[Target]
    router_version: int | None
    predicted: dict[str, float]
    routing_ms: float
    routed: bool


def preset_lambdas(settings: Settings, preset: str) -> dict[str, float]:
    """λ of ``thalamus:<preset>``: a configured preset, else a named prompt flag (404 when neither)."""
    from router.flags import FlagError, parse_flags

    if not preset:
        return {}
    if preset in settings.model_presets:
        return dict(settings.model_presets[preset])
    try:
        _, lambdas = parse_flags(f"[Flag: {preset}] x")
    except FlagError:
        known = ", ".join(sorted({*settings.model_presets, "smallest", "cheapest", "fastest"}))
        raise HTTPException(404, f"unknown model 'thalamus:{preset}'; presets are {known} "
                                 "(or a weight such as thalamus:cost=2)") from None
    return lambdas


def plan_request(settings: Settings, holder: RouterHolder, metrics: Metrics, model: str, text: str) -> Plan:
    """Route (``thalamus[:preset]``) or resolve an expert's name; blocking (torch), so run in a thread."""
    from daemon.routes.routing import _prompt_and_lambdas
    from daemon.schemas import RouteRequest

    loaded = holder.current
    if loaded is None:
        raise HTTPException(503, f"no router is loaded yet: {holder.last_error or 'starting up'}")
    request_id = str(uuid.uuid4())
    name, colon, preset = model.partition(":")
    if name == ROUTED_MODEL and (colon == "" or preset):
        requested = preset_lambdas(settings, preset)
        prompt, lambdas = _prompt_and_lambdas(settings, RouteRequest.model_construct(prompt=text, lambdas=requested))
        started = time.perf_counter()
        decision = loaded.route(prompt, lambdas)
        seconds = time.perf_counter() - started
        metrics.route_latency.observe(seconds)
        order = sorted(decision.objective, key=decision.objective.__getitem__)
        candidates = [t for t in (target_of(loaded.expert(n)) for n in order) if t is not None]
        if not candidates:
            raise HTTPException(409, "no expert of the router can answer completions: register one with a "
                                     "base_url attribute, or a local causal-lm expert")
        return Plan(request_id, prompt, lambdas, candidates, loaded.version_id, decision.predicted,
                    1000 * seconds, routed=True)
    target = target_of(loaded.expert(model))
    if target is None:
        raise HTTPException(404, f"unknown model {model!r}; GET /v1/models lists the models this daemon serves")
    if not text.strip():
        raise HTTPException(422, "the prompt is empty")
    if len(text) > settings.max_prompt_chars:
        raise HTTPException(422, f"prompt has {len(text)} characters; the limit is {settings.max_prompt_chars}")
    return Plan(request_id, text, {}, [target], loaded.version_id, {}, 0.0, routed=False)


@dataclasses.dataclass
class Served:
    """What one call produced: the expert, its usage and time, and the answer (a body or an SSE stream)."""

    target: Target
    attempts: int
    upstream_ms: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    body: dict[str, Any] | None = None
    status: int = 200
    stream: AsyncIterator[str] | None = None


class Gateway:
    """One per app (``app.state.gateway``): a pooled HTTP client for upstreams and the call logic."""

    def __init__(self, settings: Settings, holder: RouterHolder, writer: RequestLogWriter, metrics: Metrics,
                 experts: ExpertCache) -> None:
        self.settings, self.holder, self.writer, self.metrics, self.experts = settings, holder, writer, metrics, experts
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:  # created in the serving event loop, on first use
            self._client = httpx.AsyncClient(limits=httpx.Limits(max_connections=200, max_keepalive_connections=50))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- one request -----------------------------------------------------------------------------

    async def handle(self, body: ChatCompletionRequest | CompletionRequest, kind: Kind, app: str | None) -> Response:
        plan = await run_in_threadpool(plan_request, self.settings, self.holder, self.metrics, body.model,
                                       body.routing_text())
        limit = 2 if plan.routed else 1
        failures: list[str] = []
        for attempt, target in enumerate(plan.candidates[:limit], start=1):
            try:
                served = await self._call(target, attempt, plan, body, kind)
            except UpstreamFailed as exc:
                self.metrics.upstream.labels(target.name, "failed").inc()
                failures.append(str(exc))
                log.warning("request %s: %s%s", plan.request_id, exc,
                            "; retrying on the next-best expert" if attempt < min(limit, len(plan.candidates)) else "")
                continue
            except httpx.TimeoutException:
                self.metrics.upstream.labels(target.name, "timeout").inc()
                return openai_error(504, f"expert {target.name!r} did not answer within "
                                         f"{target.timeout(self.settings).read:g} s",
                                    headers=self._headers(plan, target, attempt))
            self.metrics.upstream.labels(target.name, "ok" if served.status < 400 else "refused").inc()
            return await self._respond(plan, served, app)
        return openai_error(502, "; ".join(failures), headers={"x-thalamus-request-id": plan.request_id})

    def _headers(self, plan: Plan, target: Target, attempts: int) -> dict[str, str]:
        headers = {"x-thalamus-request-id": plan.request_id, "x-thalamus-expert": target.name,
                   "x-thalamus-attempts": str(attempts)}
        if plan.router_version is not None:
            headers["x-thalamus-router-version"] = str(plan.router_version)
        return headers

    async def _respond(self, plan: Plan, served: Served, app: str | None) -> Response:
        headers = self._headers(plan, served.target, served.attempts)
        if served.stream is not None:
            return StreamingResponse(self._logged_stream(plan, served, app), media_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-cache"})
        if served.status < 400:
            await run_in_threadpool(self._log, plan, served, app)
        return JSONResponse(served.body, status_code=served.status, headers=headers)

    async def _logged_stream(self, plan: Plan, served: Served, app: str | None) -> AsyncIterator[str]:
        """The served stream; the row is logged before ``[DONE]`` so feedback can follow at once."""
        assert served.stream is not None
        logged = False
        try:
            async for event in served.stream:
                if event == "data: [DONE]\n\n" and not logged:
                    logged = True
                    await run_in_threadpool(self._log, plan, served, app)
                yield event
        finally:
            if not logged:  # the stream ended without [DONE] (upstream cut it, client left): still an answer
                await run_in_threadpool(self._log, plan, served, app)

    def _log(self, plan: Plan, served: Served, app: str | None) -> None:
        share = self.settings.label_share
        self.writer.submit({
            "id": plan.request_id, "created_at": utcnow(), "prompt": plan.prompt, "lambdas": plan.lambdas,
            "router_version_id": plan.router_version, "expert": plan.candidates[0].name,
            "predicted_losses": plan.predicted, "propensity": 1.0, "explored": False,
            # the gateway serves the best expert that can answer completions, deterministically
            "action_probs": {plan.candidates[0].name: 1.0} if plan.routed else None,
            "sampled": share > 0 and stable_fraction(plan.prompt, salt=Salt.LABEL_SAMPLE) < share,
            "latency_ms": plan.routing_ms, "app": app, "prompt_tokens": served.prompt_tokens,
            "completion_tokens": served.completion_tokens, "upstream_ms": round(served.upstream_ms, 3),
            "served_by": served.target.name, "attempts": served.attempts,
        })
        self.metrics.chosen.labels(served.target.name).inc()
        self.metrics.upstream_latency.observe(served.upstream_ms / 1000)

    # --- calling an expert --------------------------------------------------------------------------

    async def _call(self, target: Target, attempt: int, plan: Plan, body: ChatCompletionRequest | CompletionRequest,
                    kind: Kind) -> Served:
        if target.base_url is None:
            return await self._local(target, attempt, plan, body, kind)
        url = target.base_url + _PATHS[kind]
        payload = body.upstream_body(target.upstream_model)
        injected = body.stream and not (body.stream_options and body.stream_options.include_usage is not None)
        if injected:  # ask for the usage chunk, and drop it again unless the client asked
            payload["stream_options"] = {**payload.get("stream_options", {}), "include_usage": True}
        headers = {"Accept": "text/event-stream" if body.stream else "application/json"}
        credential = target.credential()
        if credential:
            headers["Authorization"] = f"Bearer {credential}"
        started = time.perf_counter()
        request = self.client.build_request("POST", url, json=payload, headers=headers,
                                            timeout=target.timeout(self.settings))
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TimeoutException:
            raise
        except httpx.HTTPError as exc:
            raise UpstreamFailed(f"expert {target.name!r} at {target.base_url} cannot be reached: "
                                 f"{type(exc).__name__}") from None
        if response.status_code >= 500:
            await response.aclose()
            raise UpstreamFailed(f"expert {target.name!r} answered {response.status_code}")
        served = Served(target, attempt)
        if body.stream and response.status_code < 400:
            served.stream = self._relay(response, served, started, strip_usage=injected)
            return served
        try:
            raw = await response.aread()
        finally:
            await response.aclose()
        served.upstream_ms = 1000 * (time.perf_counter() - started)
        served.status = response.status_code
        try:
            served.body = json.loads(raw)
        except ValueError:
            raise UpstreamFailed(f"expert {target.name!r} answered {response.status_code} without JSON") from None
        usage = served.body.get("usage") if isinstance(served.body, dict) else None
        self._take_usage(served, usage)
        return served

    @staticmethod
    def _take_usage(served: Served, usage: Any) -> None:
        """The upstream's token counts, kept only when they are counts (they become cost data and an INTEGER column)."""
        def count(value: Any) -> int | None:
            return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31 else None

        if isinstance(usage, dict):
            served.prompt_tokens = count(usage.get("prompt_tokens"))
            served.completion_tokens = count(usage.get("completion_tokens"))

    async def _relay(self, response: httpx.Response, served: Served, started: float,
                     strip_usage: bool) -> AsyncIterator[str]:
        """Upstream SSE events, re-emitted as they come; the usage chunk is read (and dropped if not asked for)."""
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    if line.strip():
                        yield line + "\n"
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    served.upstream_ms = 1000 * (time.perf_counter() - started)
                    yield "data: [DONE]\n\n"
                    continue
                try:
                    event = json.loads(data)
                except ValueError:
                    event = None
                if isinstance(event, dict) and event.get("usage"):
                    self._take_usage(served, event["usage"])
                    if strip_usage and not event.get("choices"):
                        continue
                yield f"data: {data}\n\n"
        except httpx.HTTPError as exc:
            log.warning("the stream from expert %r broke: %s", served.target.name, type(exc).__name__)
        finally:
            if not served.upstream_ms:
                served.upstream_ms = 1000 * (time.perf_counter() - started)
            await response.aclose()

    async def _local(self, target: Target, attempt: int, plan: Plan, body: ChatCompletionRequest | CompletionRequest,
                     kind: Kind) -> Served:
        """Greedy generation by a local causal-LM expert, as OpenAI's objects (streamed or not)."""
        from experts.local import ExpertError, chat_prompt

        info = target.info
        assert info.uri is not None
        try:
            expert = await run_in_threadpool(self.experts.get, info.name, str(info.kind), info.uri, info.version or 1)
        except ExpertError as exc:
            raise UpstreamFailed(str(exc)) from None
        if isinstance(body, ChatCompletionRequest):
            prompt = chat_prompt(expert.tokenizer, [{"role": m.role, "content": m.text} for m in body.messages])
        else:
            prompt = body.routing_text()
        budget = min(body.token_budget or self.settings.max_new_tokens, self.settings.max_new_tokens)
        try:
            pieces, generated = expert.stream(prompt, budget)
        except ExpertError as exc:
            raise UpstreamFailed(str(exc)) from None
        served = Served(target, attempt)
        created, ident = int(time.time()), ("chatcmpl-" if kind == "chat" else "cmpl-") + plan.request_id
        started = time.perf_counter()
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            served.stream = self._local_events(pieces, generated, served, started, kind, ident, created, usage)
            return served
        text = "".join(await run_in_threadpool(list, pieces))
        served.upstream_ms = 1000 * (time.perf_counter() - started)
        served.prompt_tokens, served.completion_tokens = generated.prompt_tokens, generated.completion_tokens
        choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant", "content": text}}
                                  if kind == "chat" else {"index": 0, "text": text, "logprobs": None})
        choice["finish_reason"] = generated.finish_reason
        served.body = {"id": ident, "object": "chat.completion" if kind == "chat" else "text_completion",
                       "created": created, "model": target.name, "choices": [choice], "usage": _usage(generated)}
        return served

    async def _local_events(self, pieces: Iterator[str], generated: Generated, served: Served, started: float,
                            kind: Kind, ident: str, created: int, usage: bool) -> AsyncIterator[str]:
        model = served.target.name
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            chunk = {"id": ident, "object": obj, "created": created, "model": model, "choices": choices, **extra}
            return f"data: {json.dumps(chunk)}\n\n"

        def piece(text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
            if kind == "chat":
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else (
                    {"content": text} if text is not None else {})
                return {"index": 0, "delta": delta, "finish_reason": finish}
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

        if kind == "chat":
            yield event([piece(None, None, role=True)])
        async for text in iterate_in_threadpool(pieces):
            yield event([piece(text, None)])
        served.upstream_ms = 1000 * (time.perf_counter() - started)
        served.prompt_tokens, served.completion_tokens = generated.prompt_tokens, generated.completion_tokens
        yield event([piece(None, generated.finish_reason)])
        if usage:
            yield event([], usage=_usage(generated))
        yield "data: [DONE]\n\n"

    # --- /v1/models ---------------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """``thalamus``, its presets, and every expert of the loaded router that answers completions."""
        loaded = self.holder.current
        created = int(loaded.loaded_at.timestamp()) if loaded is not None else 0
        presets = sorted({*self.settings.model_presets, "smallest", "cheapest", "fastest"})
        names = [ROUTED_MODEL, *(f"{ROUTED_MODEL}:{p}" for p in presets)]
        rows = [{"id": n, "object": "model", "created": created, "owned_by": "thalamus"} for n in names]
        if loaded is not None:
            rows += [{"id": info.name, "object": "model", "created": created,
                      "owned_by": "upstream" if info.attributes.get("base_url") else "local"}
                     for info in loaded.experts if target_of(info) is not None]
        return rows


def _usage(generated: Generated) -> dict[str, int]:
    return {"prompt_tokens": generated.prompt_tokens, "completion_tokens": generated.completion_tokens,
            "total_tokens": generated.prompt_tokens + generated.completion_tokens}
