"""Hot-swapping: poll path on SQLite, LISTEN/NOTIFY and reconnect on real PostgreSQL, corrupt bundles."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from daemon.app import create_app
from daemon.holder import RouterHolder
from daemon.metrics import Metrics
from store.db import get_engine, session_scope
from store.queries import notify_activation
from store.schema import Base, Expert, RouterVersion
from tests.conftest import make_settings
from tests.daemon.conftest import ATTRIBUTES, EXPERTS, activate, copy_bundle, register_version


def _wait_for(predicate, timeout: float) -> float | None:  # type: ignore[no-untyped-def]
    """Seconds until ``predicate()`` held, or None after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def _tamper(bundle_dir: Path) -> None:
    weights = max(bundle_dir.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    weights.write_bytes(bytes(data))


def test_load_active_serves_the_active_version(settings, served: int) -> None:  # type: ignore[no-untyped-def]
    holder = RouterHolder(settings, metrics=Metrics())
    assert holder.current is None
    assert holder.load_active() is True
    loaded = holder.current
    assert loaded.version_id == served and loaded.expert_names == EXPERTS
    assert loaded.constraints.shape == (3, 4) and not loaded.constraints.flags.writeable
    assert [e.kind for e in loaded.experts] == ["masked-lm", "masked-lm", "external"]
    assert holder.load_active() is False and holder.current is loaded, "same version: no reload"
    decision = loaded.route("hello", {})
    assert decision.expert == "api" and set(decision.predicted) == set(EXPERTS)


def test_expert_attribute_changes_refresh_constraints_without_reloading(settings, served: int) -> None:  # type: ignore[no-untyped-def]
    holder = RouterHolder(settings, metrics=Metrics())
    holder.load_active()
    before = holder.current
    assert before.route("hello", {"cost": 1}).expert == "large"
    with session_scope(settings) as session:
        session.execute(update(Expert).where(Expert.name == "large").values(attributes={"params": 1e8, "cost": 100.0}))
    assert holder.load_active() is False
    after = holder.current
    assert after is not before and after.router is before.router and after.version_id == before.version_id
    assert after.route("hello", {"cost": 1}).expert == "api"  # large now costs 10x api


def test_poll_hot_swaps_when_the_active_version_changes(settings, served: int, bundles) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    holder = RouterHolder(settings, metrics=metrics)  # swap_poll_seconds = 0.2 on SQLite
    holder.load_active()
    holder.start()
    try:
        first = holder.current
        new = register_version(settings, bundles["b"])
        took = _wait_for(lambda: holder.current.version_id == new, 5.0)
        assert took is not None, f"no swap within 5 s; last error: {holder.last_error}"
        assert holder.current.route("hello", {}).expert == "small"
        assert first.route("hello", {}).expert == "api", "the old bundle object is untouched"
        assert "thalamus_router_swaps_total 2.0" in metrics.render().decode()
    finally:
        holder.stop()


def test_a_corrupt_bundle_keeps_the_old_one_serving(settings, served: int, bundles, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    holder = RouterHolder(settings, metrics=metrics)
    holder.load_active()
    tampered = copy_bundle(bundles["b"], tmp_path / "tampered")
    _tamper(tampered.path)
    bad = register_version(settings, tampered)
    assert holder.load_active() is False
    assert holder.current.version_id == served
    assert f"router version {bad} failed to load" in holder.last_error and "sha256" in holder.last_error
    assert holder.failures == 1 and "thalamus_router_swap_failures_total 1.0" in metrics.render().decode()
    assert holder.current.route("still serving", {}).expert == "api"
    assert holder.load_active() is False and holder.failures == 1, "a failed version is not retried on every poll"

    wrong_order = register_version(settings, bundles["b"])
    with session_scope(settings) as session:
        session.execute(update(RouterVersion).where(RouterVersion.id == wrong_order)
                        .values(expert_order=list(reversed(EXPERTS))))
    assert holder.load_active() is False and holder.current.version_id == served
    assert f"router version {wrong_order} failed to load" in holder.last_error
    assert f"expert order {list(EXPERTS)} differs from expected {list(reversed(EXPERTS))}" in holder.last_error

    wrong_sha = register_version(settings, bundles["b"], sha256="0" * 64)
    assert holder.load_active() is False and holder.current.version_id == served
    assert f"router version {wrong_sha} failed" in holder.last_error and holder.failures == 3

    good = register_version(settings, bundles["b"])
    assert holder.load_active() is True and holder.current.version_id == good


def test_a_corrupt_bundle_is_reported_by_the_api(client: TestClient, settings, served: int, bundles, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tampered = copy_bundle(bundles["b"], tmp_path / "tampered")
    _tamper(tampered.path)
    bad = register_version(settings, tampered)
    holder = client.app.state.holder
    assert _wait_for(lambda: holder.failures >= 1, 5.0) is not None
    status = client.get("/v1/status").json()
    assert status["router_version"] == served and status["active_in_db"] == bad
    assert f"router version {bad} failed to load" in status["last_swap_error"]
    assert client.post("/v1/route", json={"prompt": "hi"}).json()["router_version"] == served
    assert "thalamus_router_swap_failures_total 1.0" in client.get("/metrics").text


def test_concurrent_requests_during_a_swap_all_succeed(client: TestClient, settings, served: int, bundles) -> None:  # type: ignore[no-untyped-def]
    holder = client.app.state.holder
    failures: list[str] = []
    seen: dict[int, set[str]] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def hammer(k: int) -> None:
        i = 0
        while not stop.is_set():
            response = client.post("/v1/route", json={"prompt": f"request {k}-{i}", "explore": False})
            i += 1
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text}")
                continue
            body = response.json()
            with lock:
                seen.setdefault(body["router_version"], set()).add(body["expert"])

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    new = register_version(settings, bundles["b"])
    swapped = _wait_for(lambda: holder.current.version_id == new, 5.0)
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert swapped is not None, holder.last_error
    assert failures == []
    assert seen == {served: {"api"}, new: {"small"}}, "each request used one bundle from start to finish"


def _activate_and_notify(settings, version_id: int) -> None:  # type: ignore[no-untyped-def]
    with session_scope(settings) as session:
        session.execute(update(RouterVersion).where(RouterVersion.status == "active").values(status="retired"))
        session.execute(update(RouterVersion).where(RouterVersion.id == version_id).values(status="active"))
        notify_activation(session, version_id)


@pytest.mark.integration
def test_postgres_listen_notify_and_reconnect(tmp_path: Path, pg_url: str, thalamus_env: None,  # type: ignore[no-untyped-def]
                                              tiny_backbone: str, bundles) -> None:
    """Real PostgreSQL in a fresh ``thalamus_test_*`` database. Polling is every 30 s, so a swap
    inside 5 s came through NOTIFY; after the listener's connection is killed, the reconnect
    re-reads the active version (a NOTIFY sent while disconnected is lost)."""
    settings = make_settings(tmp_path / "home", database_url=pg_url, backbone=tiny_backbone, swap_poll_seconds="30")
    Base.metadata.create_all(get_engine(settings))
    with session_scope(settings) as session:
        for name in EXPERTS:
            session.add(Expert(name=name, kind="external", attributes=ATTRIBUTES[name]))
    first = register_version(settings, bundles["a"])
    second = register_version(settings, bundles["b"], status="candidate")
    third = register_version(settings, bundles["a"], status="candidate")

    holder = RouterHolder(settings, metrics=Metrics())
    holder.start()
    try:
        assert _wait_for(lambda: holder.listening and holder.current is not None, 10.0) is not None, holder.last_error
        assert holder.current.version_id == first

        started = time.monotonic()
        _activate_and_notify(settings, second)
        took = _wait_for(lambda: holder.current.version_id == second, 5.0)
        assert took is not None and time.monotonic() - started < 5.0, "no swap within 5 s of NOTIFY"

        # Kill the listening connection, then activate without any NOTIFY reaching us.
        with get_engine(settings).connect() as connection:
            killed = connection.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()"
            )).scalars().all()
            connection.commit()
        assert killed == [True]
        activate(settings, third)
        took = _wait_for(lambda: holder.current.version_id == third, 5.0)
        assert took is not None, f"no swap after reconnect; last error: {holder.last_error}"
        assert _wait_for(lambda: holder.listening, 5.0) is not None
        assert np.isfinite(holder.current.predict(["ok"])).all()
    finally:
        holder.stop()


def _fresh_client(settings) -> TestClient:  # type: ignore[no-untyped-def]
    from daemon.logwriter import RequestLogWriter

    metrics = Metrics()
    return TestClient(create_app(settings, RouterHolder(settings, metrics=metrics),
                                 RequestLogWriter(settings, metrics=metrics)))


def test_a_daemon_that_cannot_load_the_active_version_falls_back_and_keeps_serving(  # type: ignore[no-untyped-def]
        settings, served: int, bundles, tmp_path: Path) -> None:
    """Version A was active; B, made active directly in the database (a bundle corrupted after its
    approval, or an approval from before the load check), cannot be loaded. A daemon started now
    serves A, says so in /v1/status and /metrics, and swaps as usual once a loadable version is active."""
    tampered = copy_bundle(bundles["b"], tmp_path / "tampered")
    _tamper(tampered.path)
    bad = register_version(settings, tampered)  # retires A
    with _fresh_client(settings) as client:
        route = client.post("/v1/route", json={"prompt": "hello", "explore": False})
        assert route.status_code == 200, route.text
        assert route.json()["router_version"] == served and route.json()["expert"] == "api"
        status = client.get("/v1/status").json()
        assert status["serving_fallback"] is True
        assert (status["router_version"], status["active_in_db"]) == (served, bad)
        assert f"router version {bad} failed to load" in status["active_load_error"] and "sha256" in status["active_load_error"]
        text = client.get("/metrics").text
        assert "thalamus_router_fallback 1.0" in text and f"thalamus_router_version {float(served)}" in text
        assert client.get("/healthz").status_code == 200

        good = register_version(settings, bundles["b"])
        holder = client.app.state.holder
        assert _wait_for(lambda: holder.current.version_id == good, 5.0) is not None, holder.last_error
        status = client.get("/v1/status").json()
        assert status["serving_fallback"] is False and status["active_load_error"] is None
        assert (status["router_version"], status["active_in_db"]) == (good, good)
        assert "thalamus_router_fallback 0.0" in client.get("/metrics").text
        assert client.post("/v1/route", json={"prompt": "hello", "explore": False}).json()["expert"] == "small"


def test_fallback_skips_versions_that_do_not_load_and_never_serves_a_rejected_one(  # type: ignore[no-untyped-def]
        settings, served: int, bundles, tmp_path: Path) -> None:
    tampered = copy_bundle(bundles["b"], tmp_path / "tampered")
    _tamper(tampered.path)
    register_version(settings, tampered)  # retired, cannot load
    register_version(settings, bundles["b"], status="rejected")  # loads, but was rejected
    register_version(settings, bundles["b"], status="candidate")  # loads, but nobody approved it
    bad = register_version(settings, tampered)  # the active one
    holder = RouterHolder(settings, metrics=Metrics())
    assert holder.load_active() is True
    assert holder.current.version_id == served and holder.fallback.active_version == bad
    assert holder.load_active() is False and holder.current.version_id == served, "no reload while it fails"

    with session_scope(settings) as session:  # now every other loadable version is rejected or a candidate
        session.execute(update(RouterVersion).where(RouterVersion.id == served).values(status="rejected"))
    lone = RouterHolder(settings, metrics=Metrics())
    assert lone.load_active() is False and lone.current is None, "only rejected or unloadable versions are left"
    assert f"router version {bad} failed to load" in lone.last_error


@pytest.mark.parametrize(("bundle", "inference", "served_by"), [
    ("a", "auto", "onnx-"),
    ("legacy", "auto", "torch (fallback: the bundle has no ONNX export)"),
    ("a", "torch", "torch (THALAMUS_INFERENCE=torch)"),
])
def test_the_status_says_what_serves_the_router(tmp_path, thalamus_env, tiny_backbone, expert_models, bundles,  # type: ignore[no-untyped-def]
                                                bundle: str, inference: str, served_by: str) -> None:
    from router.inference import OnnxRouter
    from tests.daemon.conftest import _daemon_settings

    settings = _daemon_settings(tmp_path / "home", tiny_backbone, expert_models, inference=inference)
    register_version(settings, bundles[bundle])
    with TestClient(create_app(settings)) as client:
        status = client.get("/v1/status").json()
        answer = client.post("/v1/route", json={"prompt": "hello", "explore": False}).json()
    assert status["inference"].startswith(served_by)
    assert answer["expert"] == "api", "every path routes bundle A's way"
    holder_router = isinstance(client.app.state.holder.current.router, OnnxRouter)  # type: ignore[attr-defined]
    assert holder_router == served_by.startswith("onnx")
