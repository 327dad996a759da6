"""Helpers shared by the tests (fixtures live in conftest.py): row counts and route traffic."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from store.settings import Settings


def row_counts(settings: Settings) -> dict[str, int]:
    """Rows in every table, by table name: bad input must leave all of them unchanged."""
    from store.db import session_scope
    from store.schema import Base

    with session_scope(settings) as session:
        return {name: session.scalar(select(func.count()).select_from(table)) or 0
                for name, table in Base.metadata.tables.items()}


@dataclass
class Traffic:
    """What the route traffic saw: every non-200 answer (or exception), and the experts each version chose."""

    failures: list[str] = field(default_factory=list)
    seen: dict[int, set[str]] = field(default_factory=dict)
    requests: int = 0


@contextmanager
def route_traffic(open_client: Callable[[], AbstractContextManager[Any]], prompt: Callable[[int, int], str],
                  threads: int = 3) -> Iterator[Traffic]:
    """``threads`` threads post ``/v1/route`` with ``prompt(thread, i)`` until the block ends.

    ``open_client`` gives each thread its client (an ``httpx.Client`` or a shared ``TestClient``
    wrapped in ``contextlib.nullcontext``); the threads are stopped and joined on leaving.
    """
    traffic = Traffic()
    lock = threading.Lock()
    stop = threading.Event()

    def run(k: int) -> None:
        try:
            with open_client() as client:
                i = 0
                while not stop.is_set():
                    response = client.post("/v1/route", json={"prompt": prompt(k, i)})
                    i += 1
                    with lock:
                        traffic.requests += 1
                        if response.status_code != 200:
                            traffic.failures.append(f"{response.status_code} {response.text}")
                        else:
                            body = response.json()
                            traffic.seen.setdefault(body["router_version"], set()).add(body["expert"])
        except Exception as exc:  # noqa: BLE001 - a broken connection is a failure too, not a silent thread death
            with lock:
                traffic.failures.append(repr(exc))

    workers = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield traffic
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
