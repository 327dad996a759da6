"""Start-up: a daemon with no router version creates the cold-start router and serves it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from daemon.app import create_app
from daemon.holder import RouterHolder
from daemon.metrics import Metrics


def test_start_up_creates_a_cold_start_router(settings) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(settings, RouterHolder(settings, metrics=Metrics()))) as client:
        health = client.get("/healthz")
        assert health.status_code == 200, health.text
        body = client.post("/v1/route", json={"prompt": "first request ever", "explore": False}).json()
        assert body["expert"] == "large", "with no data the cold start prefers the largest expert"
