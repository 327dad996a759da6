"""POST /v1/feedback on SQLite and PostgreSQL: reported losses become loss rows, once."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from daemon.app import create_app
from daemon.holder import RouterHolder
from daemon.logwriter import RequestLogWriter
from daemon.metrics import Metrics
from store.db import session_scope
from store.queries import prompt_hash
from store.schema import ExpertLoss, Feedback
from tests.daemon.conftest import EXPERTS, new_id
from tests.daemon.routes.conftest import PROMPTS, flush


def test_feedback_writes_a_reported_loss_once(any_client: TestClient) -> None:
    """On SQLite and PostgreSQL (where psycopg's rowcount once made every first submission a 'duplicate')."""
    client = any_client
    settings = client.app.state.settings
    routed = client.post("/v1/route", json={"prompt": "Explain LoRA briefly.", "lambdas": {"cost": 1},
                                                  "explore": False}).json()
    flush(client)

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
        flush(client)
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


def test_feedback_for_an_expert_that_did_not_serve_is_full_information_data(any_client: TestClient) -> None:
    """On SQLite and PostgreSQL: an application that also evaluated another expert on the prompt reports
    its loss; the loss table then holds both cells of that prompt, which training reads as observed."""
    from jobs.loss_table import load_loss_table
    from store.schema import Expert

    client = any_client
    settings = client.app.state.settings
    prompt = "Translate 'good morning' into French."
    routed = client.post("/v1/route", json={"prompt": prompt, "lambdas": {"cost": 1}}).json()
    served = routed["expert"]
    others = [name for name in EXPERTS if name != served]
    flush(client)
    answers = [client.post("/v1/feedback", json={"request_id": routed["request_id"], "score": 0.8}).json()]
    answers += [client.post("/v1/feedback", json={"request_id": routed["request_id"], "expert": name,
                                                  "loss": 0.3 + 0.2 * k}).json() for k, name in enumerate(others)]
    assert [a["status"] for a in answers] == ["accepted"] * 3
    with session_scope(settings) as session:
        events = {e.payload["expert"]: e.payload for e in session.scalars(select(Feedback))}
        table = load_loss_table(session, list(session.scalars(select(Expert).order_by(Expert.name))))
    assert {name: payload["served"] for name, payload in events.items()} == {
        served: True, **{name: False for name in others}}
    row = table.hashes.index(prompt_hash(prompt))
    observed = dict(zip(table.experts, table.targets[row].tolist(), strict=True))
    assert observed == {served: pytest.approx(0.2), others[0]: pytest.approx(0.3), others[1]: pytest.approx(0.5)}
    assert table.rows_read == {"reported": 3}
