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


def _explore_client(settings, **update) -> TestClient:  # type: ignore[no-untyped-def]
    from tests.daemon.conftest import fresh_app

    return TestClient(fresh_app(settings.model_copy(update=update)))


def test_exploration_on_by_default_logs_the_policys_distribution(client: TestClient, served: int) -> None:
    """The production default (epsilon:0.1, margin 1, warm-up 0.2); with λ_cost = 1 bundle A's objective
    is large 0.3 < small 0.51 < api 1.1, so small and api (gaps 0.21 and 0.8 loss-scale units) are both
    eligible and share ε; no expert has a loss row yet: small and api are in warm-up and share 0.2 of the
    requests. (An expert outside the margin: tests/router/test_exploration.py.)"""
    from router.exploration import action_probabilities, draw, explore_fraction

    settings = client.app.state.settings
    assert (settings.explore, settings.explore_margin) == ("epsilon:0.1", 1.0)
    assert client.get("/v1/status").json()["explore"] == {
        "policy": "epsilon:0.1", "kind": "epsilon", "value": 0.1, "margin": 1.0, "scope": "margin", "top": 0, "loss_scale": 1.0,
        "opt_out_apps": []}
    policy, names = settings.explore_policy, list(EXPERTS)
    assert (policy.warmup_share, policy.warmup_rows) == (0.2, 30)
    unproven = np.ones(len(names), dtype=bool)
    bodies = [client.post("/v1/route", json={"prompt": f"question {i}", "lambdas": {"cost": 1}}).json()
              for i in range(40)]
    for body in bodies:
        probs = action_probabilities(np.array([body["objective"][n] for n in names]), policy, 1.0, unproven)
        assert body["action_probs"] == pytest.approx(dict(zip(names, probs, strict=True)))
        assert sum(body["action_probs"].values()) == pytest.approx(1.0)
        assert body["action_probs"]["api"] == pytest.approx(0.8 * 0.1 / 2 + 0.1), "half of ε, and its warm-up share"
        assert body["action_probs"]["small"] == pytest.approx(0.8 * 0.1 / 2 + 0.1)
        assert body["propensity"] == body["action_probs"][body["expert"]]
        assert body["explored"] == (body["expert"] != "large")
        # Replay: the same (prompt, request id) draws the same expert.
        prompt = f"question {bodies.index(body)}"
        assert names[draw(probs, explore_fraction(prompt, body["request_id"]))] == body["expert"]
    # How often each is drawn is tested on 10,000 draws in tests/router/test_exploration.py.
    flush(client)
    with session_scope(settings) as session:
        rows = {r.id: r for r in session.scalars(select(Request))}
    for body in bodies:
        row = rows[body["request_id"]]
        assert (row.expert, row.propensity, row.explored) == (body["expert"], body["propensity"], body["explored"])
        assert row.action_probs == body["action_probs"]


def test_requests_and_apps_that_opt_out_never_explore(settings, served: int) -> None:  # type: ignore[no-untyped-def]
    """With ε = 1 every request that may explore does (bundle A, no λ: api greedy, large within 0.25)."""
    with _explore_client(settings, explore="epsilon:1", explore_margin=0.25, explore_opt_out_apps=["batch"],
                         explore_warmup_share=0.0) as client:
        for i in range(10):
            prompt = f"opt-out {i}"
            free = client.post("/v1/route", json={"prompt": prompt, "app": "chat"}).json()
            assert free["explored"] is True and free["expert"] == "large" and free["propensity"] == 1.0
            assert free["action_probs"] == {"large": 1.0, "small": 0.0, "api": 0.0}
            for body in ({"prompt": prompt, "explore": False}, {"prompt": prompt, "app": "batch"},
                         {"prompt": prompt, "app": "batch", "explore": True}):
                answer = client.post("/v1/route", json=body).json()
                assert (answer["expert"], answer["explored"], answer["propensity"]) == ("api", False, 1.0), body
                assert answer["action_probs"] == {"api": 1.0, "large": 0.0, "small": 0.0}
        assert client.get("/v1/status").json()["explore"]["opt_out_apps"] == ["batch"]
        flush(client)
        with session_scope(client.app.state.settings) as session:
            rows = list(session.scalars(select(Request)))
        assert len(rows) == 40
        assert all(r.explored == (r.app == "chat") for r in rows)
        assert all(r.propensity == 1.0 and r.action_probs[r.expert] == 1.0 for r in rows)


def test_explore_off_serves_the_argmin(settings, served: int) -> None:  # type: ignore[no-untyped-def]
    with _explore_client(settings, explore="off") as client:
        bodies = [client.post("/v1/route", json={"prompt": f"p {i}"}).json() for i in range(10)]
        assert {(b["expert"], b["explored"], b["propensity"]) for b in bodies} == {("api", False, 1.0)}
        assert client.get("/v1/status").json()["explore"]["policy"] == "off"


@pytest.mark.parametrize("value", ["no", 0, 1, None, [], {"x": 1}])
def test_explore_of_a_wrong_type_is_422_and_writes_nothing(client: TestClient, value: object) -> None:
    before = row_counts(client.app.state.settings)
    response = client.post("/v1/route", json={"prompt": "hello", "explore": value})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "explore" in detail and "\n" not in detail
    flush(client)
    assert row_counts(client.app.state.settings) == before


def test_logged_exploration_on_postgres(pg_daemon_settings, bundles) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL keeps action_probs (JSON), explored and propensity as the response gave them."""
    from tests.daemon.conftest import register_version

    register_version(pg_daemon_settings, bundles["a"])
    with _explore_client(pg_daemon_settings, explore="softmax:0.2", explore_margin=0.5) as client:
        bodies = [client.post("/v1/route", json={"prompt": f"pg {i}", "app": "tests"}).json() for i in range(20)]
        bodies.append(client.post("/v1/route", json={"prompt": "pg opt-out", "explore": False}).json())
        flush(client)
        with session_scope(client.app.state.settings) as session:
            rows = {r.id: r for r in session.scalars(select(Request))}
    assert len(rows) == 21
    for body in bodies:
        row = rows[body["request_id"]]
        assert row.action_probs == pytest.approx(body["action_probs"]) and set(row.action_probs) == set(EXPERTS)
        assert (row.explored, row.propensity, row.expert) == (body["explored"], body["propensity"], body["expert"])
        assert sum(row.action_probs.values()) == pytest.approx(1.0)
    # softmax:0.2 over gaps 0, 0.1 (large) and 0.4 (small) with margin 0.5: all three eligible.
    assert all(0 < b["action_probs"]["small"] < b["action_probs"]["large"] < b["action_probs"]["api"]
               for b in bodies[:-1])
    assert any(b["explored"] for b in bodies) and bodies[-1]["action_probs"]["api"] == 1.0
