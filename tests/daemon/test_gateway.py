"""The OpenAI-compatible gateway against real upstream processes, driven with the official ``openai`` package.

Three real processes: an upstream ``thalamus serve`` (SQLite, auth on) serving a tiny GPT-2
causal-LM expert through these same endpoints; a misbehaving OpenAI-compatible server
(``benchmarks/openai_stub.py``: 500s and a slow model); and the gateway, ``thalamus serve`` on
PostgreSQL with auth on, whose library holds: ``broken`` (the stub's 500s; the router's first
choice), ``upstream-gpt`` (the upstream daemon, its key read from the ``UPSTREAM_KEY`` environment
variable; second choice), ``local-gpt`` (the GPT-2 directory, generated in the gateway) and ``slow``
(the stub's slow model with a 1 s timeout).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from benchmarks.loadgen import wait_healthy
from benchmarks.tcpproxy import free_port
from cli.embedded import stop_process
from store.settings import Settings
from tests.conftest import ADMIN_URL, make_gpt2_expert

ORDER = ("broken", "upstream-gpt", "local-gpt", "slow")
LOSSES = (0.1, 0.2, 0.3, 0.9)
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say something about rivers"}]


@dataclass
class World:
    gateway: str
    upstream: str
    settings: Settings
    keys: dict[str, str]
    home: Path
    stub_log: Path

    def client(self, key: str = "a") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gateway}/v1", api_key=self.keys[key], max_retries=0, timeout=60)

    def headers(self, key: str = "a") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key]}"}

    def row(self, request_id: str) -> Any:
        """The request's row, once the gateway's asynchronous log writer has written it."""
        import time

        from store.db import session_scope
        from store.schema import Request

        deadline = time.monotonic() + 20
        while True:
            with session_scope(self.settings) as session:
                row = session.get(Request, request_id)
            if row is not None or time.monotonic() > deadline:
                return row
            time.sleep(0.1)


def _serve(settings: Settings, log: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    env = {**settings.as_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           **extra_env}
    with open(log, "ab") as handle:
        process = subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=env, stdout=handle,
                                   stderr=subprocess.STDOUT)
    return process


def _router_version(settings: Settings, backbone: str, directory: Path) -> None:
    from router.checkpoint import save_bundle
    from router.config import RouterConfig
    from router.model import Router, init_head_cold_start
    from store.db import session_scope
    from store.schema import RouterVersion

    router = Router.from_config(RouterConfig(backbone=backbone, expert_names=list(ORDER), lora_r=4, lora_layers=1))
    init_head_cold_start(router, list(LOSSES), [None] * len(ORDER))
    sha = save_bundle(router, directory)
    with session_scope(settings) as session:
        session.add(RouterVersion(base_encoder="tiny", checkpoint_uri=str(directory), checkpoint_sha256=sha,
                                  expert_order=list(ORDER), status="active"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: str) -> Iterator[World]:
    from experts.registry import register_experts
    from store.db import dispose_engines, session_scope
    from store.keys import create_key
    from store.migrate import upgrade

    root = tmp_path_factory.mktemp("gateway")
    gpt = make_gpt2_expert(root / "gpt", tiny_backbone)
    processes: list[subprocess.Popen[bytes]] = []
    database = f"thalamus_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    try:
        # The upstream: a thalamus daemon serving the GPT-2 through /v1/chat/completions.
        upstream = Settings(home=root / "upstream", backbone=tiny_backbone, port=free_port(), auth=True,
                            spool=False)
        upgrade(upstream)
        with session_scope(upstream) as session:
            register_experts(session, [{"name": "tiny-gpt", "kind": "causal-lm", "uri": gpt}])
            upstream_key = create_key(session, "gateway", ["route"]).key
        up_base = f"http://127.0.0.1:{upstream.port}"
        processes.append(_serve(upstream, root / "upstream.log"))

        stub_port, stub_log = free_port(), root / "stub.jsonl"
        processes.append(subprocess.Popen([sys.executable, "-m", "benchmarks.openai_stub", str(stub_port)],
                                          env={**os.environ, "STUB_LOG": str(stub_log)}))
        stub = f"http://127.0.0.1:{stub_port}/v1"

        gateway = Settings(home=root / "gateway", backbone=tiny_backbone, port=free_port(), auth=True,
                           database_url=ADMIN_URL.rsplit("/", 1)[0] + f"/{database}", swap_poll_seconds=0.5,
                           auth_cache_seconds=0)
        upgrade(gateway)
        with session_scope(gateway) as session:
            register_experts(session, [
                {"name": "broken", "kind": "external", "attributes": {"base_url": stub, "model": "broken"}},
                {"name": "upstream-gpt", "kind": "external",
                 "attributes": {"base_url": f"{up_base}/v1", "model": "tiny-gpt", "api_key_env": "UPSTREAM_KEY"}},
                {"name": "local-gpt", "kind": "causal-lm", "uri": gpt},
                {"name": "slow", "kind": "external",
                 "attributes": {"base_url": stub, "model": "slow", "timeout_seconds": 1}},
            ])
            keys = {"a": create_key(session, "app-a", ["route", "feedback"]).key,
                    "b": create_key(session, "app-b", ["route", "feedback"]).key}
        _router_version(gateway, tiny_backbone, root / "bundle")
        gw_base = f"http://127.0.0.1:{gateway.port}"
        processes.append(_serve(gateway, root / "gateway.log", UPSTREAM_KEY=upstream_key))
        for base, process, log in ((up_base, processes[0], "upstream.log"), (gw_base, processes[2], "gateway.log")):
            wait_healthy(base, process, timeout=180, log_tail=lambda log=log: (root / log).read_text()[-3000:])
        yield World(gw_base, up_base, gateway, {**keys, "upstream": upstream_key}, root, stub_log)
    finally:
        for process in reversed(processes):
            stop_process(process)
        dispose_engines()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def _stub_calls(world: World) -> list[dict[str, Any]]:
    if not world.stub_log.exists():
        return []
    return [json.loads(line) for line in world.stub_log.read_text().splitlines()]


def test_routed_completion_retries_the_next_best_expert_and_logs_usage(world: World) -> None:
    raw = world.client().chat.completions.with_raw_response.create(model="thalamus", messages=MESSAGES, max_tokens=6)
    completion = raw.parse()
    assert raw.headers["x-thalamus-expert"] == "upstream-gpt"  # broken (first choice) answered 500
    assert raw.headers["x-thalamus-attempts"] == "2"
    assert raw.headers["x-thalamus-router-version"] == "1"
    assert completion.choices[0].message.content  # generated by the upstream daemon's GPT-2
    assert completion.usage is not None and completion.usage.completion_tokens == 6
    assert {"path": "/v1/chat/completions", "model": "broken", "auth": False} in _stub_calls(world)

    request_id = raw.headers["x-thalamus-request-id"]
    accepted = httpx.post(f"{world.gateway}/v1/feedback", headers=world.headers("a"),
                          json={"request_id": request_id, "score": 0.8}, timeout=30)
    assert accepted.status_code == 202 and accepted.json()["expert"] == "upstream-gpt"
    other = httpx.post(f"{world.gateway}/v1/feedback", headers=world.headers("b"),
                       json={"request_id": request_id, "score": 0.1, "idempotency_key": "b-1"}, timeout=30)
    assert other.status_code == 403 and "another application" in other.json()["detail"]

    row = world.row(request_id)
    assert (row.app, row.expert, row.served_by, row.attempts) == ("app-a", "broken", "upstream-gpt", 2)
    assert row.prompt_tokens > 0 and row.completion_tokens == 6 and row.upstream_ms > 0


def test_streaming_through_the_gateway(world: World) -> None:
    stream = world.client().chat.completions.create(model="thalamus", messages=MESSAGES, max_tokens=5, stream=True)
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert pieces, "no content streamed"

    with httpx.stream("POST", f"{world.gateway}/v1/completions", headers=world.headers(), timeout=60,
                      json={"model": "local-gpt", "prompt": "rivers", "max_tokens": 4, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-thalamus-expert"] == "local-gpt"
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert any(json.loads(e[6:])["choices"][0]["finish_reason"] == "length" for e in events[:-1])
    row = world.row(response.headers["x-thalamus-request-id"])
    assert row.served_by == "local-gpt" and row.completion_tokens == 4


def test_passthrough_by_model_name(world: World) -> None:
    raw = world.client().chat.completions.with_raw_response.create(model="upstream-gpt", messages=MESSAGES,
                                                                   max_tokens=3)
    assert (raw.headers["x-thalamus-expert"], raw.headers["x-thalamus-attempts"]) == ("upstream-gpt", "1")
    local = world.client().completions.with_raw_response.create(model="local-gpt", prompt="hello", max_tokens=3)
    assert local.headers["x-thalamus-expert"] == "local-gpt" and local.parse().choices[0].text
    row = world.row(local.headers["x-thalamus-request-id"])
    assert row is not None and row.predicted_losses == {}
    models = {m.id for m in world.client().models.list()}
    assert {"thalamus", "thalamus:smallest", "upstream-gpt", "local-gpt", "broken", "slow"} <= models


def test_upstream_timeout_and_failure_are_openai_errors(world: World) -> None:
    with pytest.raises(openai.APIStatusError) as timed_out:
        world.client().chat.completions.create(model="slow", messages=MESSAGES)
    assert timed_out.value.status_code == 504
    assert timed_out.value.body["code"] == "upstream_timeout" and "1 s" in timed_out.value.body["message"]
    with pytest.raises(openai.APIStatusError) as failed:  # named explicitly: no retry on another expert
        world.client().chat.completions.create(model="broken", messages=MESSAGES)
    assert failed.value.status_code == 502 and failed.value.body["type"] == "api_error"
    with pytest.raises(openai.NotFoundError):
        world.client().chat.completions.create(model="no-such-model", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{world.gateway}/v1", api_key="thk_000000000000_" + "x" * 43,
                      max_retries=0).models.list()


def test_keys_never_appear_in_the_logs(world: World) -> None:
    world.client().chat.completions.create(model="thalamus", messages=MESSAGES, max_tokens=2)
    httpx.get(f"{world.gateway}/v1/models", headers={"Authorization": "Bearer " + world.keys["b"][:-1] + "!"})
    logs = "".join((world.home / name).read_text(errors="replace") for name in ("gateway.log", "upstream.log"))
    assert "POST /v1/chat/completions" in logs  # the access log was captured
    for key in world.keys.values():
        secret = key.removeprefix("thk_").split("_", 1)[1]  # thk_<id>_<secret>; the secret may hold "_" itself
        assert len(secret) >= 40 and secret[:16] not in logs


def test_the_project_client_against_the_gateway(world: World) -> None:
    from thalamus_client import Client

    with Client(world.gateway, api_key=world.keys["a"]) as thalamus:
        answer = thalamus.chat(MESSAGES, model="upstream-gpt", max_tokens=3)
        assert answer.expert == "upstream-gpt" and answer.text and answer.attempts == 1
        streamed = thalamus.stream_chat(MESSAGES, model="local-gpt", max_tokens=3)
        assert streamed.expert == "local-gpt" and "".join(streamed) == streamed.text != ""
        assert thalamus.feedback(streamed.request_id, loss=1.5).expert == "local-gpt"
