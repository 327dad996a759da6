"""thalamus_client against the real app (auth on): routing, feedback, status and the admin verbs."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.daemon.conftest import fresh_app, register_version
from thalamus_client import Client, ThalamusError


def test_client_routes_reports_and_administers(settings, bundles) -> None:  # type: ignore[no-untyped-def]
    from store.db import session_scope
    from store.keys import create_key

    settings = settings.model_copy(update={"auth": True})
    register_version(settings, bundles["a"])
    candidate = register_version(settings, bundles["b"], status="candidate")
    with session_scope(settings) as session:
        app_key = create_key(session, "shop", ["route", "feedback"]).key
        admin_key = create_key(session, "ops", ["admin"]).key
    with TestClient(fresh_app(settings)) as http:
        app = Client(api_key=app_key, http=http)
        route = app.route("def add(a, b): return a + b", lambdas={"cost": 1.0}, explore=False)
        assert route.expert == "large" and route.router_version == 1
        assert app.feedback(route.request_id, score=0.75).loss == pytest.approx(0.25)
        assert app.feedback(route.request_id, score=0.75).status == "duplicate"
        assert {"thalamus", "thalamus:smallest"} <= set(app.models())
        with pytest.raises(ThalamusError) as refused:
            app.versions()
        assert refused.value.status == 403 and "admin" in refused.value.message
        with pytest.raises(ThalamusError) as unservable:  # masked-LM and API experts without base_url
            app.chat([{"role": "user", "content": "hi"}])
        assert unservable.value.status == 409 and "base_url" in unservable.value.message

        admin = Client(api_key=admin_key, http=TestClient(http.app))
        assert [v["status"] for v in admin.versions()] == ["active", "candidate"]
        assert admin.approve(candidate, reason="looks good")["actor"] == "ops"
        assert admin.version(candidate)["version"]["status"] == "active"
        assert admin.rollback()["version"]["id"] == 1
        assert {e["name"] for e in admin.experts()} == {"large", "small", "api"}
        assert admin.job_runs() == []
        with pytest.raises(ThalamusError) as unknown:
            admin.trigger_job("no_such_job")
        assert unknown.value.status == 404 and "known jobs" in unknown.value.message
        anonymous = Client(http=TestClient(http.app))
        with pytest.raises(ThalamusError) as missing:
            anonymous.status()
        assert missing.value.status == 401
