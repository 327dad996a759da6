"""API keys on the real app (auth on, the production default): 401/403/429, ownership of feedback, nothing written."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.daemon.conftest import Bundle, fresh_app, register_version, row_counts
from tests.helpers import route_traffic


def _keys(settings: Any, **specs: tuple[str, list[str]]) -> dict[str, str]:
    from store.db import session_scope
    from store.keys import create_key

    with session_scope(settings) as session:
        return {name: create_key(session, app, scopes).key for name, (app, scopes) in specs.items()}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(params=["sqlite", "postgres"])
def secured(request: pytest.FixtureRequest, bundles: dict[str, Bundle]) -> Iterator[tuple[TestClient, Any, dict[str, str]]]:
    """The full app with auth on (key state re-read on every request), bundle A active, and four keys."""
    settings = request.getfixturevalue("settings" if request.param == "sqlite" else "pg_daemon_settings")
    settings = settings.model_copy(update={"auth": True, "auth_cache_seconds": 0.0})
    register_version(settings, bundles["a"])
    keys = _keys(settings, a=("app-a", ["route", "feedback"]), b=("app-b", ["route", "feedback"]),
                 route=("app-a", ["route"]), admin=("ops", ["admin"]))
    with TestClient(fresh_app(settings)) as client:
        yield client, settings, keys


def test_wrong_revoked_and_expired_keys_are_refused(secured) -> None:  # type: ignore[no-untyped-def]
    from store.db import session_scope
    from store.keys import create_key, revoke_key
    from store.schema import ApiKey

    client, settings, keys = secured
    body = {"prompt": "def f(): pass"}
    assert client.post("/v1/route", json=body, headers=_auth(keys["a"])).status_code == 200
    missing = client.post("/v1/route", json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in missing.json()["detail"]
    wrong = keys["a"][:-4] + ("AAAA" if not keys["a"].endswith("AAAA") else "BBBB")
    for bad in (wrong, "thk_nope", "sk-" + "x" * 40):
        answer = client.post("/v1/route", json=body, headers=_auth(bad))
        assert answer.status_code == 401 and answer.json()["detail"] == "the API key is not valid"

    with session_scope(settings) as session:
        revoke_key(session, keys["b"].split("_")[1])
        soon = create_key(session, "app-c", ["route"], expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
        session.query(ApiKey).filter(ApiKey.key_id == soon.info.key_id).update(
            {ApiKey.expires_at: dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)})
    revoked = client.post("/v1/route", json=body, headers=_auth(keys["b"]))
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
    expired = client.post("/v1/route", json=body, headers=_auth(soon.key))
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]

    metrics = client.get("/metrics").text  # open by default (THALAMUS_METRICS_PUBLIC)
    for reason, count in (("missing", 1), ("wrong", 1), ("malformed", 2), ("revoked", 1), ("expired", 1)):
        assert f'thalamus_auth_failures_total{{reason="{reason}"}} {float(count)}' in metrics
    assert client.get("/healthz").status_code == 200


def test_scopes_and_feedback_ownership(secured) -> None:  # type: ignore[no-untyped-def]
    client, settings, keys = secured
    routed = client.post("/v1/route", json={"prompt": "print(1)", "app": "someone-else"}, headers=_auth(keys["a"]))
    request_id = routed.json()["request_id"]
    client.app.state.writer.flush()

    before = row_counts(settings)
    forbidden = [
        client.post("/v1/feedback", json={"request_id": request_id, "loss": 0.3}, headers=_auth(keys["route"])),
        client.post("/v1/feedback", json={"request_id": request_id, "loss": 0.3}, headers=_auth(keys["b"])),
        client.get("/v1/admin/versions", headers=_auth(keys["a"])),
        client.post("/v1/admin/rollback", json={"reason": "x"}, headers=_auth(keys["a"])),
    ]
    assert [r.status_code for r in forbidden] == [403, 403, 403, 403]
    assert "lacks the 'feedback' scope" in forbidden[0].json()["detail"]
    assert "another application" in forbidden[1].json()["detail"]
    assert row_counts(settings) == before  # nothing written

    own = client.post("/v1/feedback", json={"request_id": request_id, "loss": 0.3, "app": "spoofed"},
                      headers=_auth(keys["a"]))
    assert own.status_code == 202
    admin = client.post("/v1/feedback", json={"request_id": request_id, "loss": 0.4, "idempotency_key": "ops-1"},
                        headers=_auth(keys["admin"]))
    assert admin.status_code == 202

    from sqlalchemy import select

    from store.db import session_scope
    from store.schema import Feedback, Request

    with session_scope(settings) as session:
        assert session.get(Request, request_id).app == "app-a"  # from the key, not the body
        assert sorted(session.scalars(select(Feedback.app))) == ["app-a", "ops"]
    assert 'thalamus_auth_failures_total{reason="owner"} 1.0' in client.get("/metrics").text
    assert client.get("/v1/status", headers=_auth(keys["route"])).status_code == 200  # any valid key


def test_rate_limit_answers_429_with_retry_after(settings, bundles) -> None:  # type: ignore[no-untyped-def]
    from store.db import session_scope
    from store.keys import create_key

    settings = settings.model_copy(update={"auth": True})
    register_version(settings, bundles["a"])
    with session_scope(settings) as session:
        limited = create_key(session, "burst", ["route"], rate_limit="3/minute").key
        default = create_key(session, "steady", ["route"]).key
    with TestClient(fresh_app(settings)) as client:
        answers = [client.post("/v1/route", json={"prompt": f"x {i}"}, headers=_auth(limited)) for i in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
        assert "rate limit (3/minute)" in answers[-1].json()["detail"]
        assert client.post("/v1/route", json={"prompt": "y"}, headers=_auth(default)).status_code == 200  # per key
        assert "thalamus_rate_limited_total 1.0" in client.get("/metrics").text


def test_metrics_can_be_closed(settings, bundles) -> None:  # type: ignore[no-untyped-def]
    settings = settings.model_copy(update={"auth": True, "metrics_public": False})
    register_version(settings, bundles["a"])
    keys = _keys(settings, admin=("ops", ["admin"]), route=("app", ["route"]))
    with TestClient(fresh_app(settings)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=_auth(keys["route"])).status_code == 403
        assert client.get("/metrics", headers=_auth(keys["admin"])).status_code == 200


def test_serve_refuses_auth_off_on_a_public_address(settings) -> None:  # type: ignore[no-untyped-def]
    from daemon.auth import check_binding

    with pytest.raises(ValueError, match="loopback-only"):
        check_binding(settings.model_copy(update={"auth": False, "host": "0.0.0.0"}))
    check_binding(settings.model_copy(update={"auth": False, "host": "127.0.0.1"}))
    check_binding(settings.model_copy(update={"auth": True, "host": "0.0.0.0"}))


def test_admin_approve_over_http_hot_swaps_with_zero_failed_requests(live_pg_daemon, bundles) -> None:  # type: ignore[no-untyped-def]
    """An admin key approves a candidate through the HTTP API while route traffic (another key) flows."""
    import time

    from sqlalchemy import select

    from store.db import session_scope
    from store.keys import create_key
    from store.schema import Activation

    daemon = live_pg_daemon
    settings = daemon.settings
    # The fixture's daemon runs with the tests' auth off; its endpoints read the settings per request.
    daemon.app.state.settings = settings.model_copy(update={"auth": True})
    keys = _keys(settings, admin=("release-bot", ["admin"]))
    with session_scope(settings) as session:  # three threads as fast as they go: above the default 100/second
        keys["app"] = create_key(session, "traffic", ["route"], rate_limit="100000/second").key
    candidate = register_version(settings, bundles["b"], status="candidate")
    admin = httpx.Client(base_url=daemon.base_url, headers=_auth(keys["admin"]), timeout=30)
    assert admin.get("/v1/admin/versions").json()[-1]["status"] == "candidate"
    with route_traffic(lambda: httpx.Client(base_url=daemon.base_url, headers=_auth(keys["app"]), timeout=30),
                       lambda k, i: f"def f{k}_{i}(): return {i}") as traffic:
        time.sleep(0.5)
        approved = admin.post(f"/v1/admin/versions/{candidate}/approve", json={"reason": "better holdout"})
        assert approved.status_code == 200 and approved.json()["actor"] == "release-bot"
        deadline = time.monotonic() + 30
        while candidate not in traffic.seen and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
    assert traffic.failures == [] and traffic.requests > 0
    assert candidate in traffic.seen and "small" in traffic.seen[candidate]  # bundle B's argmin (exploration on)
    with session_scope(settings) as session:
        last = session.scalars(select(Activation).order_by(Activation.id.desc())).first()
        assert (last.router_version_id, last.actor, last.reason) == (candidate, "release-bot", "better holdout")
    again = admin.post(f"/v1/admin/versions/{candidate}/approve", json={})
    assert again.status_code == 409 and "already active" in again.json()["detail"]
    assert admin.get("/v1/admin/versions/999").status_code == 404
    assert admin.get("/v1/admin/experts").json()[0]["name"] == "api"
    assert admin.post("/v1/admin/jobs/no-such-job").status_code == 404
    admin.close()
