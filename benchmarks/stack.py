"""A throw-away thalamus installation for fault benchmarks: PostgreSQL database, home, experts, two router versions.

``Stack`` creates a fresh PostgreSQL database (dropped afterwards) and a temporary THALAMUS_HOME,
registers three external experts with a few hundred loss rows, creates the cold-start router
(version 1) and a second candidate (version 2, a different head, for swaps), and starts real
``thalamus serve`` / ``thalamus worker`` processes, which it kills on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import httpx
from sqlalchemy import create_engine, select, text

from benchmarks.loadgen import wait_healthy
from benchmarks.tcpproxy import free_port
from store.settings import Settings
from store.states import VersionStatus

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
EXPERTS = {"coder": {"params": 7e9, "cost": 1.0}, "writer": {"params": 70e9, "cost": 5.0}, "api": {"cost": 10.0}}
CODE = ["def add(a, b): return a + b", "for i in range(10): print(i)", "import os; os.listdir('.')",
        "class Point: x: int", "while True: break", "lambda x: x * 2", "try: pass except Exception: raise"]
PROSE = ["The sun rose over the quiet hills.", "She walked to the market with her dog.",
         "Rain fell softly on the old roof.", "The children laughed in the garden.",
         "A letter arrived from a distant friend.", "The river was cold and clear.", "Birds sang at dawn."]


def thalamus_command(*args: str) -> list[str]:
    """The one place that says how to run a ``thalamus`` verb as a child process."""
    return [sys.executable, "-m", "cli", *args]


def build_tiny_backbone(path: Path) -> str:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer: a real encoder, small enough for fast loop tests
    (the test suite's ``tiny_backbone`` fixture and the fault benchmark's default)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from store.settings import default_backbone

    tokenizer = AutoTokenizer.from_pretrained(default_backbone())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def loss_records(repeats: int = 10) -> list[dict[str, Any]]:
    """Benchmark-shaped loss rows: the coder expert is good at code, the writer at prose."""
    rows = []
    for i in range(repeats):
        rows += [{"question": f"{t} #{i}", "scores": {"coder": 0.9, "writer": 0.1, "api": 0.6}} for t in CODE]
        rows += [{"question": f"{t} ({i})", "scores": {"coder": 0.2, "writer": 0.8, "api": 0.6}} for t in PROSE]
    return rows


def route_bodies() -> list[dict[str, Any]]:
    """The prompts the load generator cycles through."""
    return [{"prompt": f"{t} [{i}]", "app": "bench-faults"} for i in range(20) for t in (*CODE, *PROSE)]


class Stack:
    """A fresh PostgreSQL database + THALAMUS_HOME with experts, loss rows and router versions 1 (active), 2."""

    def __init__(self, name: str, backbone: str | None, admin_url: str = ADMIN_URL, broker_url: str | None = None,
                 **settings: Any) -> None:
        self.name, self.admin_url, self.backbone = name, admin_url, backbone
        self.broker_url, self.overrides = broker_url, settings
        self.processes: list[subprocess.Popen[bytes]] = []
        self.versions: tuple[int, int] = (0, 0)
        self.headers: dict[str, str] = {}  # an API key of every scope, made by ``__enter__``

    # --- set-up and tear-down ---------------------------------------------------------------

    def __enter__(self) -> Self:
        self.database = f"thalamus_faults_{uuid.uuid4().hex[:10]}"
        self._admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{self.database}"'))
        self.home = Path(tempfile.mkdtemp(prefix=f"thalamus-faults-{self.name}-"))
        try:
            self.port = free_port()
            self.settings = Settings(
                home=self.home, database_url=self.admin_url.rsplit("/", 1)[0] + f"/{self.database}",
                broker_url=self.broker_url, port=self.port, backbone=self.backbone, swap_poll_seconds=0.5,
                train_lora_layers=1, **self.overrides)
            self._prepare()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _prepare(self) -> None:
        from jobs.bootstrap import ensure_active_router
        from jobs.ingest import ingest_file
        from jobs.recipe import TrainRecipe
        from jobs.router_store import save_version
        from router.model import Router, init_head_cold_start
        from store.db import session_scope
        from store.keys import create_key
        from store.migrate import upgrade
        from store.schema import Expert

        upgrade(self.settings)
        with session_scope(self.settings) as session:
            session.add_all([Expert(name=n, kind="external", attributes=a) for n, a in EXPERTS.items()])
            key = create_key(session, "bench", ("route", "feedback", "admin"), rate_limit="100000/second").key
        self.headers = {"Authorization": f"Bearer {key}"}
        losses = self.home / "losses.json"
        losses.write_text(json.dumps(loss_records()))
        ingest_file(self.settings, losses)
        first = ensure_active_router(self.settings)
        router = Router.from_config(TrainRecipe.from_settings(self.settings).router_config(list(EXPERTS)))
        init_head_cold_start(router, [0.6, 0.2, 0.4], [None] * len(EXPERTS))
        with session_scope(self.settings) as session:
            second = save_version(session, self.settings, router, parent_id=first, status=VersionStatus.CANDIDATE,
                                  metrics={"bench": "faults"}, training_window={})
            if second.status != VersionStatus.CANDIDATE:
                raise RuntimeError(f"the second router version does not load: {second.reason}")
            self.versions = (first, second.id)

    def __exit__(self, *_: object) -> None:
        from store.db import dispose_engines

        for process in reversed(self.processes):
            kill(process)
        dispose_engines()
        with self._admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
        self._admin.dispose()
        shutil.rmtree(self.home, ignore_errors=True)

    # --- processes ----------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **overrides: Any) -> dict[str, str]:
        """The child processes' environment: these settings, with ``overrides`` (Settings fields)."""
        return {**self.settings.model_copy(update=overrides).as_env(), "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def spawn(self, args: Sequence[str], log: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """``thalamus ARGS`` in its own process group (so a kill takes its children too), output in HOME/log."""
        with open(self.home / log, "ab") as handle:
            process = subprocess.Popen(thalamus_command(*args), env=env, stdout=handle, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.processes.append(process)
        return process

    def serve(self, timeout: float = 180.0, **overrides: Any) -> subprocess.Popen[bytes]:
        """Start ``thalamus serve`` and wait until /healthz answers 200."""
        process = self.spawn(["serve"], "daemon.log", self.env(**overrides))
        self.wait_healthy(process, timeout)
        return process

    def wait_healthy(self, process: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
        wait_healthy(self.base, process, timeout=timeout, log_tail=lambda: self.log_tail("daemon.log"))

    def log_tail(self, log: str, chars: int = 2000) -> str:
        path = self.home / log
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def status(self) -> dict[str, Any]:
        return httpx.get(f"{self.base}/v1/status", timeout=10, headers=self.headers).json()

    # --- what the database holds ----------------------------------------------------------------

    def written(self, ids: Iterable[str]) -> set[str]:
        """Which of these request ids have a row in ``requests`` (read directly, not through the daemon)."""
        from store.db import session_scope
        from store.schema import Request

        wanted, found = list(ids), set()
        with session_scope(self.settings) as session:
            for i in range(0, len(wanted), 1000):
                found |= set(session.scalars(select(Request.id).where(Request.id.in_(wanted[i:i + 1000]))))
        return found


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process started by :meth:`Stack.spawn` and its whole process group."""
    with contextlib.suppress(ProcessLookupError):  # the group outlives a dead leader while its children live
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
