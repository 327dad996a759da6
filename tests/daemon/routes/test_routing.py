"""POST /v1/route and /v1/infer on a real router bundle, a real SQLite database and real (tiny) masked-LM experts."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from daemon.app import create_app
from daemon.holder import RouterHolder
from daemon.metrics import Metrics
from router.constraints import CONSTRAINTS, constraint_matrix
from store.db import session_scope
from store.queries import prompt_hash
from store.schema import Prompt, Request
from tests.daemon.conftest import ATTRIBUTES, EXPERTS, row_counts
from tests.daemon.routes.conftest import PROMPTS, flush


def _objective(predicted: dict[str, float], lambdas: dict[str, float]) -> dict[str, float]:
    matrix = constraint_matrix([ATTRIBUTES[name] for name in EXPERTS])
    weights = np.array([lambdas.get(name, 0.0) for name in CONSTRAINTS])
    return {name: predicted[name] + float(matrix[i] @ weights) for i, name in enumerate(EXPERTS)}


def test_route_returns_the_argmin_of_the_objective(client: TestClient, served: int) -> None:
    """With ``"explore": false`` (determinism is the point here) the route is the argmin, propensity 1."""
    for prompt in PROMPTS:
        response = client.post("/v1/route", json={"prompt": prompt, "app": "tests", "explore": False})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["router_version"] == served
        assert set(body["predicted_losses"]) == set(EXPERTS)
        assert body["expert"] == min(body["objective"], key=body["objective"].get)
        assert body["objective"] == pytest.approx(_objective(body["predicted_losses"], body["lambdas"]))
        assert body["propensity"] == 1.0 and body["explored"] is False
        assert body["action_probs"] == {"api": 1.0, "large": 0.0, "small": 0.0}
        assert body["expert"] == "api"  # bundle A: api 0.1 < large 0.2 < small 0.5
    predictions = {tuple(client.post("/v1/route", json={"prompt": p, "explore": False}).json()["predicted_losses"].values())
                   for p in PROMPTS}
    assert len(predictions) > 1, "predictions should depend on the prompt"


def test_flags_and_lambdas_set_the_choice(client: TestClient) -> None:
    flagged = client.post("/v1/route", json={"prompt": "[Flag: smallest model] Translate 'cat' to German.",
                                             "explore": False}).json()
    assert flagged["expert"] == "small"
    assert flagged["lambdas"] == {"size": 16.0}
    assert flagged["expert"] == min(flagged["objective"], key=flagged["objective"].get)

    by_cost = client.post("/v1/route", json={"prompt": "Translate 'cat' to German.", "lambdas": {"cost": 1},
                                             "explore": False}).json()
    assert by_cost["expert"] == "large"

    # Request λ override flags, key by key.
    both = client.post("/v1/route", json={"prompt": "[Flag: smallest model] Translate 'cat' to German.",
                                          "lambdas": {"size": 0, "cost": 1}, "explore": False}).json()
    assert both["lambdas"] == {"size": 0.0, "cost": 1.0}
    assert both["expert"] == "large"

    flush(client)
    with session_scope(client.app.state.settings) as session:
        texts = set(session.scalars(select(Prompt.text)))
        logged = session.get(Request, flagged["request_id"])
        assert logged.lambdas == {"size": 16.0} and logged.expert == "small"
    assert "Translate 'cat' to German." in texts
    assert not any("Flag" in text for text in texts), "flags are stripped before encoding and logging"


def test_default_lambdas_fill_the_rest(settings, served: int) -> None:  # type: ignore[no-untyped-def]
    settings = settings.model_copy(update={"default_lambdas": {"cost": 1.0}, "explore": "off"})
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
    flush(client)
    sampled_by_prompt: dict[str, set[bool]] = {}
    with session_scope(client.app.state.settings) as session:
        rows = {row.id: row for row in session.scalars(select(Request))}
    assert set(rows) == set(ids)
    for request_id, (prompt, body) in ids.items():
        row = rows[request_id]
        assert row.prompt_hash == prompt_hash(prompt)
        assert row.router_version_id == served and row.expert == body["expert"] and row.app == "tests"
        assert row.sampled == body["sampled"]
        assert row.propensity == body["propensity"] == body["action_probs"][body["expert"]]
        assert row.action_probs == body["action_probs"] and row.explored == body["explored"]
        assert sum(row.action_probs.values()) == pytest.approx(1.0)
        assert row.predicted_losses == pytest.approx(body["predicted_losses"])
        sampled_by_prompt.setdefault(prompt, set()).add(row.sampled)
    assert all(len(values) == 1 for values in sampled_by_prompt.values()), "sampling is per prompt"
    assert {v for values in sampled_by_prompt.values() for v in values} == {True, False}  # label_share 0.5


def test_infer_runs_the_chosen_local_expert(client: TestClient) -> None:
    response = client.post("/v1/infer", json={"prompt": "The capital of France is [MASK].",
                                              "lambdas": {"cost": 1}, "explore": False})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["expert"] == "large"
    assert body["output"]["kind"] == "fill-mask" and len(body["output"]["masks"]) == 1
    flush(client)
    with session_scope(client.app.state.settings) as session:
        assert session.get(Request, body["request_id"]).expert == "large"


def test_infer_refuses_an_external_expert_and_writes_nothing(client: TestClient) -> None:
    before = row_counts(client.app.state.settings)
    response = client.post("/v1/infer", json={"prompt": "Write a haiku about routers.", "explore": False})
    assert response.status_code == 409
    assert "api" in response.json()["detail"] and "external" in response.json()["detail"]
    flush(client)
    assert row_counts(client.app.state.settings) == before
