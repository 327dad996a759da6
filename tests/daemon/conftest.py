"""Daemon fixtures: a temp SQLite database, three experts, and real router bundles on a tiny encoder.

Experts: ``large`` and ``small`` are tiny real masked-LMs; ``api`` is external. Bundle A predicts
api 0.1 < large 0.2 < small 0.5 (plus a little prompt-dependent noise), so:
no λ → api; ``[Flag: smallest model]`` → small; ``{"cost": 1}`` → large.
Bundle B predicts small 0.1, the others 0.9: swapping A → B changes the default choice to small.
Both carry the ONNX export the daemon serves (router/export.py); ``legacy`` is A without it, as
bundles registered before exports are (served by PyTorch).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from tests.conftest import make_masked_lm, make_settings
from tests.helpers import row_counts  # noqa: F401 - re-exported for the daemon tests

EXPERTS = ("large", "small", "api")
ATTRIBUTES = {
    "large": {"params": 1e8, "cost": 1.0},
    "small": {"params": 1e6, "cost": 0.1},
    "api": {"cost": 10.0},
}
LOSSES_A = (0.2, 0.5, 0.1)
LOSSES_B = (0.9, 0.1, 0.9)


@dataclass(frozen=True)
class Bundle:
    path: Path
    sha256: str


def _build_bundle(directory: Path, backbone: str, losses: tuple[float, ...], noise: float, seed: int,
                  export: bool = True) -> Bundle:
    import torch

    from router.checkpoint import save_bundle
    from router.config import RouterConfig
    from router.export import export_inference
    from router.model import Router, init_head_cold_start

    router = Router.from_config(RouterConfig(backbone=backbone, expert_names=list(EXPERTS), lora_r=4, lora_layers=1))
    init_head_cold_start(router, list(losses), [None] * len(losses))
    if noise:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            weight = router.head.last.weight
            weight.copy_(torch.randn(weight.shape, generator=generator) * noise)
    return Bundle(directory, save_bundle(router, directory, export=export_inference if export else None))


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: str) -> dict[str, Bundle]:
    root = tmp_path_factory.mktemp("bundles")
    return {
        "a": _build_bundle(root / "a", tiny_backbone, LOSSES_A, noise=0.003, seed=1),
        "b": _build_bundle(root / "b", tiny_backbone, LOSSES_B, noise=0.0, seed=2),
        "legacy": _build_bundle(root / "legacy", tiny_backbone, LOSSES_A, noise=0.003, seed=1, export=False),
    }


@pytest.fixture(scope="session")
def expert_models(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: str) -> dict[str, str]:
    root = tmp_path_factory.mktemp("experts")
    return {"large": make_masked_lm(root / "large", tiny_backbone, 32, 1),
            "small": make_masked_lm(root / "small", tiny_backbone, 16, 2)}


def _daemon_settings(home: Path, tiny_backbone: str, expert_models: dict[str, str], **env: str):  # type: ignore[no-untyped-def]
    """Migrated database (SQLite unless ``database_url`` is given) with the three experts, no router version."""
    from store.db import session_scope
    from store.migrate import upgrade
    from store.schema import Expert

    settings = make_settings(home, backbone=tiny_backbone, swap_poll_seconds="0.2",
                             log_flush_seconds="0.05", label_share="0.5", **env)
    upgrade(settings)
    with session_scope(settings) as session:
        for name in EXPERTS:
            kind = "external" if name == "api" else "masked-lm"
            session.add(Expert(name=name, kind=kind, uri=expert_models.get(name), attributes=ATTRIBUTES[name]))
    return settings


@pytest.fixture
def settings(tmp_path: Path, thalamus_env: None, tiny_backbone: str, expert_models: dict[str, str]):  # type: ignore[no-untyped-def]
    """A fresh SQLite database with the three experts registered and no router version yet."""
    return _daemon_settings(tmp_path / "home", tiny_backbone, expert_models)


@pytest.fixture
def pg_daemon_settings(tmp_path: Path, pg_url: str, thalamus_env: None, tiny_backbone: str,  # type: ignore[no-untyped-def]
                       expert_models: dict[str, str]):
    """The same on a fresh PostgreSQL database."""
    return _daemon_settings(tmp_path / "home", tiny_backbone, expert_models, database_url=pg_url)


def register_version(settings, bundle: Bundle, status: str = "active", sha256: str | None = None) -> int:  # type: ignore[no-untyped-def]
    """Insert a router version row for ``bundle``; when active, retire the previously active one."""
    from store.db import session_scope
    from store.schema import RouterVersion

    with session_scope(settings) as session:
        if status == "active":
            session.execute(update(RouterVersion).where(RouterVersion.status == "active").values(status="retired"))
        version = RouterVersion(base_encoder="tiny", checkpoint_uri=str(bundle.path),
                                checkpoint_sha256=sha256 or bundle.sha256, expert_order=list(EXPERTS), status=status)
        session.add(version)
        session.flush()
        return version.id


def activate(settings, version_id: int) -> None:  # type: ignore[no-untyped-def]
    from store.db import session_scope
    from store.schema import RouterVersion

    with session_scope(settings) as session:
        session.execute(update(RouterVersion).where(RouterVersion.status == "active").values(status="retired"))
        session.execute(update(RouterVersion).where(RouterVersion.id == version_id).values(status="active"))


def copy_bundle(bundle: Bundle, directory: Path) -> Bundle:
    shutil.copytree(bundle.path, directory)
    return Bundle(directory, bundle.sha256)


@pytest.fixture
def served(settings, bundles: dict[str, Bundle]) -> int:  # type: ignore[no-untyped-def]
    """Bundle A registered as the active version; returns its id."""
    return register_version(settings, bundles["a"])


def fresh_app(settings) -> Any:  # type: ignore[no-untyped-def]
    """The full app with its own holder, writer and metrics."""
    from daemon.app import create_app
    from daemon.holder import RouterHolder
    from daemon.logwriter import RequestLogWriter
    from daemon.metrics import Metrics

    metrics = Metrics()
    return create_app(settings, RouterHolder(settings, metrics=metrics), RequestLogWriter(settings, metrics=metrics))


@pytest.fixture
def client(settings, served: int) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """A TestClient over the full app (lifespan included) with fresh metrics."""
    from fastapi.testclient import TestClient

    with TestClient(fresh_app(settings)) as test_client:
        yield test_client


@pytest.fixture(params=["sqlite", "postgres"])
def any_client(request: pytest.FixtureRequest, bundles: dict[str, Bundle]) -> Iterator[Any]:
    """``client`` on SQLite, then on PostgreSQL."""
    from fastapi.testclient import TestClient

    settings = request.getfixturevalue("settings" if request.param == "sqlite" else "pg_daemon_settings")
    register_version(settings, bundles["a"])
    with TestClient(fresh_app(settings)) as test_client:
        yield test_client


@dataclass
class LiveDaemon:
    """A real uvicorn server on loopback, in a thread of the test process."""

    base_url: str
    settings: Any
    app: Any

    @property
    def writer(self) -> Any:
        return self.app.state.writer


@pytest.fixture
def live_pg_daemon(pg_daemon_settings, bundles: dict[str, Bundle]) -> Iterator[LiveDaemon]:  # type: ignore[no-untyped-def]
    """The daemon on PostgreSQL behind a real uvicorn (HTTP/1.1 keep-alive, real sockets), bundle A active."""
    import socket
    import threading
    import time

    import uvicorn

    register_version(pg_daemon_settings, bundles["a"])
    app = fresh_app(pg_daemon_settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start within 60 s")
        time.sleep(0.05)
    try:
        yield LiveDaemon(f"http://127.0.0.1:{port}", pg_daemon_settings, app)
    finally:
        server.should_exit = True
        thread.join(30)


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def pg_serve_settings(tmp_path: Path, pg_url: str, thalamus_env: None, tiny_backbone: str,  # type: ignore[no-untyped-def]
                      expert_models: dict[str, str], bundles: dict[str, Bundle]):
    """PostgreSQL with the three experts and bundle A active, for a real ``thalamus serve`` on a free port."""
    from benchmarks.tcpproxy import free_port
    from store.db import session_scope
    from store.migrate import upgrade
    from store.schema import Expert

    settings = make_settings(tmp_path / "home", database_url=pg_url, backbone=tiny_backbone,
                             port=str(free_port()), swap_poll_seconds="0.5", label_share="0.5")
    upgrade(settings)
    with session_scope(settings) as session:
        for name in EXPERTS:
            kind = "external" if name == "api" else "masked-lm"
            session.add(Expert(name=name, kind=kind, uri=expert_models.get(name), attributes=ATTRIBUTES[name]))
    register_version(settings, bundles["a"])
    return settings
