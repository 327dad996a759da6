"""create_app: the settings it refuses before anything starts, and a router added as one more entry."""

from __future__ import annotations

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

import daemon.app
from daemon.app import create_app
from daemon.holder import RouterHolder
from daemon.metrics import Metrics


def test_bad_default_lambdas_fail_at_start_up(settings) -> None:  # type: ignore[no-untyped-def]
    from router.constraints import LambdaError

    with pytest.raises(LambdaError, match="quality"):
        create_app(settings.model_copy(update={"default_lambdas": {"quality": 1.0}}))


def test_a_router_added_to_routers_is_served_documented_and_counted(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    admin = APIRouter(prefix="/admin")

    @admin.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    monkeypatch.setattr(daemon.app, "ROUTERS", (*daemon.app.ROUTERS, admin))
    client = TestClient(create_app(settings, RouterHolder(settings, metrics=Metrics())))  # lifespan not needed
    assert client.get("/admin/ping").json() == {"pong": "yes"}
    assert client.get("/admin/elsewhere").status_code == 404
    assert "/admin/ping" in client.get("/openapi.json").json()["paths"]
    text = client.get("/metrics").text
    assert 'thalamus_http_requests_total{endpoint="/admin/ping",status="200"} 1.0' in text
    assert 'thalamus_http_requests_total{endpoint="other",status="404"} 1.0' in text
    assert 'thalamus_http_requests_total{endpoint="other",status="200"} 1.0' in text  # /openapi.json
