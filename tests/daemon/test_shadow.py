"""Shadow routers in the daemon: hot-load and unload, the sampled share, a full queue, load failures, status."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from daemon.app import create_app
from daemon.holder import RouterHolder
from daemon.logwriter import RequestLogWriter
from daemon.metrics import Metrics
from daemon.shadow import ShadowRunner
from jobs.shadows import start_shadow, stop_shadows
from router.hashing import Salt, stable_fraction
from store.db import session_scope
from store.schema import RouterVersion, ShadowDecision
from tests.daemon.conftest import register_version


def _wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _shadow(settings, version_id: int, share: float) -> None:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        start_shadow(session, version_id, share, actor="tests", reason="try it")


def _stop(settings, version_id: int | None = None) -> None:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        stop_shadows(session, version_id, actor="tests")


def _decisions(settings) -> list[ShadowDecision]:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        rows = list(session.scalars(select(ShadowDecision).order_by(ShadowDecision.id)))
        session.expunge_all()
        return rows


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_holder_loads_changes_and_unloads_a_shadow(request: pytest.FixtureRequest, bundles, backend: str) -> None:  # type: ignore[no-untyped-def]
    settings = request.getfixturevalue("settings" if backend == "sqlite" else "pg_daemon_settings")
    active = register_version(settings, bundles["a"])
    candidate = register_version(settings, bundles["b"], status="candidate")
    holder = RouterHolder(settings, metrics=Metrics())
    holder.load_active()
    served = holder.current
    assert served is not None and served.version_id == active and holder.shadows == {}

    _shadow(settings, candidate, 0.5)
    assert holder.load_shadows() is True
    shadow = holder.shadows[candidate]
    assert shadow.share == 0.5 and shadow.loaded.sha256 == bundles["b"].sha256
    assert shadow.loaded.route("hello", {}).expert == "small"  # bundle B; the served A chooses api
    assert served.route("hello", {}).expert == "api"

    _shadow(settings, candidate, 1.0)  # a new share: same bundle, no reload
    assert holder.load_shadows() is False
    assert holder.shadows[candidate].share == 1.0 and holder.shadows[candidate].loaded is shadow.loaded

    _stop(settings)
    holder.load_active()  # the watcher's read refreshes the shadows too
    assert holder.shadows == {} and holder.current is served and holder.shadow_errors == {}


def test_a_shadow_is_hot_loaded_by_notify_on_postgres(pg_daemon_settings, bundles) -> None:  # type: ignore[no-untyped-def]
    settings = pg_daemon_settings.model_copy(update={"swap_poll_seconds": 60.0})  # no poll within the test
    register_version(settings, bundles["a"])
    candidate = register_version(settings, bundles["b"], status="candidate")
    holder = RouterHolder(settings, metrics=Metrics())
    holder.load_active()
    holder.start()
    try:
        assert _wait_for(lambda: holder.listening, 10)
        _shadow(settings, candidate, 0.2)
        assert _wait_for(lambda: candidate in holder.shadows, 10), "NOTIFY did not load the shadow"
        _stop(settings, candidate)
        assert _wait_for(lambda: not holder.shadows, 10), "NOTIFY did not unload the shadow"
    finally:
        holder.stop()


def test_a_shadow_that_does_not_load_is_reported_and_serving_goes_on(settings, bundles) -> None:  # type: ignore[no-untyped-def]
    register_version(settings, bundles["a"])
    broken = register_version(settings, bundles["b"], status="candidate", sha256="0" * 64)
    with session_scope(settings) as session:  # bypasses the CLI's load check, as a bundle damaged later would
        session.execute(update(RouterVersion).where(RouterVersion.id == broken).values(shadow_share=1.0))
    with TestClient(_app(settings)) as client:
        assert client.post("/v1/route", json={"prompt": "hello"}).status_code == 200
        status = client.get("/v1/status").json()
        assert status["router_version"] is not None and status["last_swap_error"] is None
        [listed] = status["shadows"]
        assert listed["version"] == broken and listed["loaded"] is False and listed["share"] is None
        assert "shadow router version" in listed["load_error"] and listed["routed"] == 0


def _app(settings, shadows: type[ShadowRunner] = ShadowRunner, **options: Any) -> Any:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    holder = RouterHolder(settings, metrics=metrics)
    return create_app(settings, holder, RequestLogWriter(settings, metrics=metrics),
                      shadows(settings, holder, metrics=metrics, **options))


def test_shadow_decisions_are_written_for_the_sampled_share_and_only_for_it(settings, bundles) -> None:  # type: ignore[no-untyped-def]
    served = register_version(settings, bundles["a"])
    candidate = register_version(settings, bundles["b"], status="candidate")
    _shadow(settings, candidate, 0.3)
    app = _app(settings)
    with TestClient(app) as client:
        ids = []
        for i in range(60):
            response = client.post("/v1/route", json={"prompt": f"prompt number {i}", "lambdas": {"cost": 0.0}})
            assert response.status_code == 200
            ids.append(response.json()["request_id"])
        assert app.state.shadows.flush(20)
        status = client.get("/v1/status").json()
    expected = {rid for rid in ids if stable_fraction(rid, salt=Salt.SHADOW) < 0.3}
    assert 5 < len(expected) < 35
    rows = _decisions(settings)
    assert {r.request_id for r in rows} == expected and len(rows) == len(expected)
    assert {(r.router_version_id, r.expert, r.served_expert) for r in rows} == {(candidate, "small", "api")}
    assert all(set(r.predicted_losses) == {"large", "small", "api"} for r in rows)
    [listed] = status["shadows"]
    assert (listed["version"], listed["share"], listed["loaded"]) == (candidate, 0.3, True)
    assert (listed["routed"], listed["dropped"], listed["failed"]) == (len(expected), 0, 0)
    assert status["router_version"] == served and status["shadow_queue"]["capacity"] == settings.shadow_queue_size


class _Blocked(ShadowRunner):
    """A runner whose thread waits for ``release`` before each batch: the queue fills behind it."""

    release = threading.Event()

    def _process(self, batch):  # type: ignore[no-untyped-def]
        self.release.wait(30)
        super()._process(batch)


def test_a_full_shadow_queue_drops_and_counts_without_failing_requests(settings, bundles) -> None:  # type: ignore[no-untyped-def]
    register_version(settings, bundles["a"])
    candidate = register_version(settings, bundles["b"], status="candidate")
    _shadow(settings, candidate, 1.0)
    _Blocked.release.clear()
    app = _app(settings, _Blocked, max_queue=2, batch_size=1)
    with TestClient(app) as client:
        try:
            for i in range(20):
                started = time.monotonic()
                response = client.post("/v1/route", json={"prompt": f"prompt {i}"})
                assert response.status_code == 200 and time.monotonic() - started < 5
            counts = app.state.shadows.counts()[candidate]
            assert 16 <= counts.dropped <= 18 and counts.routed == 0  # one taken by the thread, two queued
            assert client.get("/v1/status").json()["shadows"][0]["dropped"] == counts.dropped
            assert "thalamus_shadow_decisions_total{outcome=\"dropped\"}" in client.get("/metrics").text
        finally:
            _Blocked.release.set()
        assert app.state.shadows.flush(20)
        counts = app.state.shadows.counts()[candidate]
    assert counts.routed + counts.dropped == 20 and counts.failed == 0
    assert len(_decisions(settings)) == counts.routed


def test_no_shadow_means_no_work_on_the_response_path(settings, bundles) -> None:  # type: ignore[no-untyped-def]
    register_version(settings, bundles["a"])
    app = _app(settings)
    with TestClient(app) as client:
        assert client.post("/v1/route", json={"prompt": "hello"}).status_code == 200
        assert app.state.shadows.depth == 0 and client.get("/v1/status").json()["shadows"] == []
    assert _decisions(settings) == []


def _started_runner(settings, bundles) -> tuple[RouterHolder, ShadowRunner, int]:  # type: ignore[no-untyped-def]
    """Bundle A active, B a full shadow: a loaded holder and its started runner (close it), and B's id."""
    register_version(settings, bundles["a"])
    candidate = register_version(settings, bundles["b"], status="candidate")
    _shadow(settings, candidate, 1.0)
    holder = RouterHolder(settings, metrics=Metrics())
    holder.load_active()
    runner = ShadowRunner(settings, holder, metrics=Metrics())
    runner.start()
    assert holder.current is not None
    return holder, runner, candidate


def test_the_shadow_thread_waits_while_the_served_router_computes(settings, bundles) -> None:  # type: ignore[no-untyped-def]
    holder, runner, candidate = _started_runner(settings, bundles)
    served = holder.current.batcher
    try:
        with served._model_lock:  # a served forward pass in progress
            assert served.busy
            assert runner.offer("00000000-0000-4000-8000-000000000000", "hello", {}, "api") == 1
            time.sleep(0.3)
            assert runner.counts().get(candidate) is None  # still waiting for the served router
        assert not served.busy
        assert runner.flush(10) and runner.counts()[candidate].routed == 1
    finally:
        runner.close()


def test_a_saturated_daemon_drops_shadow_work_instead_of_competing(settings, bundles, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import daemon.shadow

    monkeypatch.setattr(daemon.shadow, "_MAX_YIELD", 0.2)
    holder, runner, candidate = _started_runner(settings, bundles)
    try:
        with holder.current.batcher._model_lock:  # serving never pauses
            runner.offer("00000000-0000-4000-8000-000000000001", "hello", {}, "api")
            assert runner.flush(5)
        counts = runner.counts()[candidate]
        assert (counts.routed, counts.dropped, counts.failed) == (0, 1, 0)
    finally:
        runner.close()
    assert _decisions(settings) == []
