"""The HTTP API on a real router bundle, a real SQLite database and real (tiny) masked-LM experts."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from daemon.app import create_app
from daemon.holder import RouterHolder
from daemon.logwriter import RequestLogWriter
from daemon.metrics import Metrics
from router.constraints import CONSTRAINTS, constraint_matrix
from store.db import session_scope
from store.queries import prompt_hash
from store.schema import ExpertLoss, Feedback, Prompt, Request
from tests.daemon.conftest import ATTRIBUTES, EXPERTS, new_id, row_counts

PROMPTS = [f"Summarise the report on topic number {i} in two sentences." for i in range(12)] + [
    "def add(a, b):\n    return a + b", "The capital of France is [MASK].",
]


def _objective(predicted: dict[str, float], lambdas: dict[str, float]) -> dict[str, float]:
    matrix = constraint_matrix([ATTRIBUTES[name] for name in EXPERTS])
    weights = np.array([lambdas.get(name, 0.0) for name in CONSTRAINTS])
    return {name: predicted[name] + float(matrix[i] @ weights) for i, name in enumerate(EXPERTS)}


def _flush(client: TestClient) -> None:
    assert client.app.state.writer.flush(10)


def test_route_returns_the_argmin_of_the_objective(client: TestClient, served: int) -> None:
    for prompt in PROMPTS:
        response = client.post("/v1/route", json={"prompt": prompt, "app": "tests"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["router_version"] == served
        assert set(body["predicted_losses"]) == set(EXPERTS)
        assert body["expert"] == min(body["objective"], key=body["objective"].get)
        assert body["objective"] == pytest.approx(_objective(body["predicted_losses"], body["lambdas"]))
        assert body["propensity"] == 1.0
        assert body["expert"] == "api"  # bundle A: api 0.1 < large 0.2 < small 0.5
    predictions = {tuple(client.post("/v1/route", json={"prompt": p}).json()["predicted_losses"].values())
                   for p in PROMPTS}
    assert len(predictions) > 1, "predictions should depend on the prompt"


def test_flags_and_lambdas_set_the_choice(client: TestClient) -> None:
    flagged = client.post("/v1/route", json={"prompt": "[Flag: smallest model] Translate 'cat' to German."}).json()
    assert flagged["expert"] == "small"
    assert flagged["lambdas"] == {"size": 16.0}
    assert flagged["expert"] == min(flagged["objective"], key=flagged["objective"].get)

    by_cost = client.post("/v1/route", json={"prompt": "Translate 'cat' to German.", "lambdas": {"cost": 1}}).json()
    assert by_cost["expert"] == "large"

    # Request λ override flags, key by key.
    both = client.post("/v1/route", json={"prompt": "[Flag: smallest model] Translate 'cat' to German.",
                                          "lambdas": {"size": 0, "cost": 1}}).json()
    assert both["lambdas"] == {"size": 0.0, "cost": 1.0}
    assert both["expert"] == "large"

    _flush(client)
    with session_scope(client.app.state.settings) as session:
        texts = set(session.scalars(select(Prompt.text)))
        logged = session.get(Request, flagged["request_id"])
        assert logged.lambdas == {"size": 16.0} and logged.expert == "small"
    assert "Translate 'cat' to German." in texts
    assert not any("Flag" in text for text in texts), "flags are stripped before encoding and logging"


def test_default_lambdas_fill_the_rest(settings, served: int) -> None:  # type: ignore[no-untyped-def]
    settings = settings.model_copy(update={"default_lambdas": {"cost": 1.0}})
    with TestClient(create_app(settings, RouterHolder(settings, metrics=Metrics()))) as client:
        body = client.post("/v1/route", json={"prompt": "hello there"}).json()
        assert body["lambdas"] == {"cost": 1.0} and body["expert"] == "large"
        body = client.post("/v1/route", json={"prompt": "[Flag: size=16] hello there"}).json()
        assert body["lambdas"] == {"cost": 1.0, "size": 16.0} and body["expert"] == "small"
        body = client.post("/v1/route", json={"prompt": "hello there", "lambdas": {"cost": 0}}).json()
        assert body["lambdas"] == {"cost": 0.0} and body["expert"] == "api"


def test_requests_are_logged_with_decision_propensity_and_sampling(client: TestClient, served: int) -> None:
    ids = {}
    for prompt in PROMPTS + PROMPTS[:3]:
        body = client.post("/v1/route", json={"prompt": prompt, "app": "tests"}).json()
        ids[body["request_id"]] = (prompt, body)
    _flush(client)
    sampled_by_prompt: dict[str, set[bool]] = {}
    with session_scope(client.app.state.settings) as session:
        rows = {row.id: row for row in session.scalars(select(Request))}
    assert set(rows) == set(ids)
    for request_id, (prompt, body) in ids.items():
        row = rows[request_id]
        assert row.prompt_hash == prompt_hash(prompt)
        assert row.router_version_id == served and row.expert == body["expert"] and row.app == "tests"
        assert row.propensity == 1.0 and row.sampled == body["sampled"]
        assert row.predicted_losses == pytest.approx(body["predicted_losses"])
        sampled_by_prompt.setdefault(prompt, set()).add(row.sampled)
    assert all(len(values) == 1 for values in sampled_by_prompt.values()), "sampling is per prompt"
    assert {v for values in sampled_by_prompt.values() for v in values} == {True, False}  # label_share 0.5


def test_infer_runs_the_chosen_local_expert(client: TestClient) -> None:
    response = client.post("/v1/infer", json={"prompt": "The capital of France is [MASK].", "lambdas": {"cost": 1}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["expert"] == "large"
    assert body["output"]["kind"] == "fill-mask" and len(body["output"]["masks"]) == 1
    _flush(client)
    with session_scope(client.app.state.settings) as session:
        assert session.get(Request, body["request_id"]).expert == "large"


def test_infer_refuses_an_external_expert_and_writes_nothing(client: TestClient) -> None:
    before = row_counts(client.app.state.settings)
    response = client.post("/v1/infer", json={"prompt": "Write a haiku about routers."})
    assert response.status_code == 409
    assert "api" in response.json()["detail"] and "external" in response.json()["detail"]
    _flush(client)
    assert row_counts(client.app.state.settings) == before


def test_feedback_writes_a_reported_loss_once(any_client: TestClient) -> None:
    """On SQLite and PostgreSQL (where psycopg's rowcount once made every first submission a 'duplicate')."""
    client = any_client
    settings = client.app.state.settings
    routed = client.post("/v1/route", json={"prompt": "Explain LoRA briefly.", "lambdas": {"cost": 1}}).json()
    _flush(client)

    first = client.post("/v1/feedback", json={"request_id": routed["request_id"], "score": 0.75, "app": "tests"})
    assert first.status_code == 202, first.text
    assert first.json() == {"status": "accepted", "idempotency_key": f"{routed['request_id']}:large",
                            "expert": "large", "loss": 0.25}
    again = client.post("/v1/feedback", json={"request_id": routed["request_id"], "score": 0.1})
    assert again.status_code == 202 and again.json()["status"] == "duplicate"

    other = client.post("/v1/feedback", json={"request_id": routed["request_id"], "loss": 1.5, "expert": "api",
                                              "idempotency_key": "eval-1"})
    assert other.status_code == 202 and other.json()["status"] == "accepted"
    assert client.post("/v1/feedback", json={"request_id": routed["request_id"], "loss": 9.0, "expert": "api",
                                             "idempotency_key": "eval-1"}).json()["status"] == "duplicate"

    with session_scope(settings) as session:
        losses = {(r.expert, r.expert_version, r.source): (r.loss, r.prompt_hash)
                  for r in session.scalars(select(ExpertLoss))}
        events = list(session.scalars(select(Feedback).order_by(Feedback.id)))
    key = prompt_hash("Explain LoRA briefly.")
    assert losses == {("large", 1, "reported"): (0.25, key), ("api", 1, "reported"): (1.5, key)}
    assert [e.idempotency_key for e in events] == [f"{routed['request_id']}:large", "eval-1"]
    assert events[0].app == "tests" and events[0].payload["score"] == 0.75 and events[0].payload["loss"] == 0.25


def test_feedback_on_postgres_becomes_loss_rows_that_training_reads(pg_daemon_settings, bundles) -> None:  # type: ignore[no-untyped-def]
    """Posted feedback → ``expert_losses`` rows (source reported) → the next train_router run reads them."""
    from jobs.runs import create_run, get_run
    from tests.daemon.conftest import fresh_app, register_version
    from workers.tasks import execute

    settings = pg_daemon_settings
    register_version(settings, bundles["a"])
    with TestClient(fresh_app(settings)) as client:
        request_ids = [client.post("/v1/route", json={"prompt": p}).json()["request_id"] for p in PROMPTS[:10]]
        _flush(client)
        answers = [client.post("/v1/feedback", json={"request_id": rid, "loss": 0.1 * (k + 1) + 0.01 * i,
                                                     "expert": name}).json()
                   for i, rid in enumerate(request_ids) for k, name in enumerate(EXPERTS)]
    assert {a["status"] for a in answers} == {"accepted"}
    with session_scope(settings) as session:
        sources = session.scalars(select(ExpertLoss.source)).all()
    assert sources == ["reported"] * 30

    run_id = create_run(settings, "train_router", {"epochs": 1}, trigger="test")
    execute(settings, run_id)
    run = get_run(settings, run_id)
    assert run is not None and run.status == "succeeded", run.error if run else None
    assert run.result["loss_rows"]["read"] == {"reported": 30}
    assert run.result["metrics"]["n_train"] + run.result["metrics"]["n_holdout"] == 10


def test_feedback_before_the_log_writer_flushed(settings, served: int) -> None:  # type: ignore[no-untyped-def]
    slow = settings.model_copy(update={"log_flush_seconds": 60.0, "log_batch_size": 10_000})
    writer = RequestLogWriter(slow, metrics=Metrics())
    with TestClient(create_app(slow, RouterHolder(slow, metrics=writer.metrics), writer)) as client:
        routed = client.post("/v1/route", json={"prompt": "Is this logged yet?"}).json()
        assert writer.pending(routed["request_id"]) is not None
        response = client.post("/v1/feedback", json={"request_id": routed["request_id"], "loss": 0.3})
        assert response.status_code == 202, response.text
        assert writer.pending(routed["request_id"]) is None
        assert client.post("/v1/feedback", json={"request_id": new_id(), "loss": 0.3}).status_code == 404


def test_status_health_and_metrics(client: TestClient, served: int) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "router_version": served}
    client.post("/v1/route", json={"prompt": "count me"})
    client.post("/v1/route", json={"prompt": ""})
    _flush(client)
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


def test_start_up_creates_a_cold_start_router(settings) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(settings, RouterHolder(settings, metrics=Metrics()))) as client:
        health = client.get("/healthz")
        assert health.status_code == 200, health.text
        body = client.post("/v1/route", json={"prompt": "first request ever"}).json()
        assert body["expert"] == "large", "with no data the cold start prefers the largest expert"


def test_bad_default_lambdas_fail_at_start_up(settings) -> None:  # type: ignore[no-untyped-def]
    from router.constraints import LambdaError

    with pytest.raises(LambdaError, match="quality"):
        create_app(settings.model_copy(update={"default_lambdas": {"quality": 1.0}}))
