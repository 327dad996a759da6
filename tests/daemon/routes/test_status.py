"""GET /v1/status, /healthz and /metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient

from daemon.app import create_app
from daemon.holder import RouterHolder
from daemon.metrics import Metrics
from tests.daemon.conftest import ATTRIBUTES, EXPERTS
from tests.daemon.routes.conftest import flush


def test_status_health_and_metrics(client: TestClient, served: int) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "router_version": served}
    # explore off: the request id is random, so an exploring draw would make the chosen expert random too
    client.post("/v1/route", json={"prompt": "count me", "explore": False})
    client.post("/v1/route", json={"prompt": ""})
    flush(client)
    status = client.get("/v1/status").json()
    assert status["router_version"] == served == status["active_in_db"]
    assert status["last_swap_error"] is None and status["swaps"] == 1
    assert status["counts"] == {"requests": 1, "loss_rows": 0, "feedback": 0}
    assert status["writer"]["queue_depth"] == 0 and status["writer"]["written"] == 1
    experts = {e["name"]: e for e in status["experts"]}
    assert set(experts) == set(EXPERTS)
    assert experts["api"]["kind"] == "external" and experts["large"]["attributes"] == ATTRIBUTES["large"]
    assert all(e["in_router"] and e["version"] == 1 for e in experts.values())

    text = client.get("/metrics").text
    assert 'thalamus_http_requests_total{endpoint="/v1/route",status="200"} 1.0' in text
    assert 'thalamus_http_requests_total{endpoint="/v1/route",status="422"} 1.0' in text
    assert "thalamus_route_latency_seconds_count 1.0" in text
    assert 'thalamus_chosen_expert_total{expert="api"} 1.0' in text
    assert "thalamus_router_swaps_total 1.0" in text
    assert "thalamus_router_swap_failures_total 0.0" in text
    assert "thalamus_log_queue_depth 0.0" in text and "thalamus_log_dropped_total 0.0" in text


def test_not_healthy_before_a_router_is_loaded(settings) -> None:  # type: ignore[no-untyped-def]
    client = TestClient(create_app(settings, RouterHolder(settings, metrics=Metrics())))  # lifespan not run
    assert client.get("/healthz").status_code == 503
    response = client.post("/v1/route", json={"prompt": "hello"})
    assert response.status_code == 503 and "no router" in response.json()["detail"]
