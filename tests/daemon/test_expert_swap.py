"""``POST /v1/infer`` swaps to an approved expert version under concurrent requests, and back on rollback.

The daemon's traffic is what the fine-tune learns from: requests routed to ``large`` are logged,
``finetune_expert`` trains a candidate on them, approving it makes every following request answer
with the new weights (``expert_version``), rollback the old ones, and no request fails meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from store.db import session_scope
from store.schema import Request
from tests.daemon.conftest import Bundle, fresh_app, register_version

LARGE = {"cost": 1.0}  # bundle A's choice under a cost weight: the local masked-LM "large"
# Requests opt out of exploration ("explore": false), so every one is served by the router's choice.


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_infer_swaps_expert_version_without_a_failed_request(request: pytest.FixtureRequest, backend: str,
                                                             bundles: dict[str, Bundle]) -> None:
    from fastapi.testclient import TestClient

    from cli import jobs
    from jobs import expert_versions

    settings = request.getfixturevalue("settings" if backend == "sqlite" else "pg_daemon_settings")
    register_version(settings, bundles["a"])
    with TestClient(fresh_app(settings)) as client:
        for i in range(24):
            answer = client.post("/v1/infer", json={"prompt": f"the [MASK] sat on mat number {i}", "lambdas": LARGE,
                                                    "explore": False})
            assert answer.status_code == 200 and answer.json()["expert"] == "large", answer.text
            assert answer.json()["expert_version"] == 1

        def logged() -> bool:
            with session_scope(settings) as session:
                return (session.scalar(select(func.count()).select_from(Request).where(Request.expert == "large"))
                        or 0) >= 24

        _wait(logged, "the requests to be logged")
        outcome = jobs.run(settings, "finetune_expert", params={"expert": "large", "min_routed_prompts": 10,
                                                                "epochs": 1}, inline=True)
        assert outcome.status == "succeeded" and outcome.result is not None, outcome.error
        version = outcome.result["version"]

        answers: list[tuple[int, Any]] = []
        failures: list[str] = []
        stop = threading.Event()

        def traffic(thread: int) -> None:
            i = 0
            while not stop.is_set():
                try:
                    reply = client.post("/v1/infer", json={"prompt": f"a [MASK] in thread {thread} call {i}",
                                                           "lambdas": LARGE, "explore": False})
                    if reply.status_code != 200:
                        failures.append(f"{reply.status_code}: {reply.text}")
                    else:
                        answers.append((len(answers), reply.json()["expert_version"]))
                except Exception as exc:
                    failures.append(repr(exc))
                i += 1

        threads = [threading.Thread(target=traffic, args=(t,)) for t in range(3)]
        for thread in threads:
            thread.start()
        try:
            _wait(lambda: len(answers) >= 5, "traffic on version 1")
            with session_scope(settings) as session:
                expert_versions.approve(session, "large", version, actor="tester", reason="swap test")
            _wait(lambda: bool(answers) and answers[-1][1] == version, f"requests served by version {version}")
            mark = len(answers)
            _wait(lambda: len(answers) >= mark + 5, "more traffic on the new version")
            with session_scope(settings) as session:
                expert_versions.rollback(session, "large", actor="tester", reason="swap back")
            _wait(lambda: answers[-1][1] == 1, "requests served by version 1 again")
            back = len(answers)
            _wait(lambda: len(answers) >= back + 5, "more traffic after the rollback")
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
    assert failures == []
    seen = [v for _, v in answers]
    assert set(seen) == {1, version}
    # A request keeps the version it started with: when the first answer on version 1 came back, each of the
    # other threads may still have had one request in flight on the new version (seen in CI). Past those, only 1.
    after_rollback = seen[back + len(threads) - 1:]
    assert after_rollback and set(after_rollback) == {1}, seen[back:]


def test_a_request_in_flight_keeps_the_version_it_started_with(settings: Any, served: int, tmp_path: Any) -> None:
    """The bundle a request took before an approval still names the old directory, and the cache still
    hands out the old model for it; the swapped bundle names the new one."""
    import shutil
    from pathlib import Path

    from daemon.holder import RouterHolder
    from experts.local import ExpertCache
    from experts.registry import content_hash
    from jobs.expert_versions import approve, ensure_base_version, register_candidate
    from store.queries import expert_by_name

    holder = RouterHolder(settings)
    assert holder.load_active()
    in_flight = holder.current
    assert in_flight is not None
    old = in_flight.expert("large")
    assert old is not None and old.version == 1 and old.uri is not None
    copy = Path(tmp_path) / "large-v2"
    shutil.copytree(old.uri, copy)
    (copy / "note.json").write_text("{}")
    with session_scope(settings) as session:
        expert = expert_by_name(session, "large")
        assert expert is not None
        ensure_base_version(session, expert)
        register_candidate(session, expert, 2, copy, content_hash(copy), {}, {})
    cache = ExpertCache()
    before = cache.get(old.name, str(old.kind), old.uri, 1)
    with session_scope(settings) as session:
        approve(session, "large", 2, actor="tester")
    holder.load_active()
    now = holder.current
    assert now is not None and now is not in_flight and now.version_id == in_flight.version_id  # same router
    new = now.expert("large")
    assert new is not None and (new.version, new.uri) == (2, str(copy))
    assert in_flight.expert("large") == old  # the request's bundle is unchanged
    assert cache.get(old.name, str(old.kind), old.uri, 1) is before  # and so is its model
    after = cache.get(new.name, str(new.kind), str(new.uri), 2)
    assert after is not before and after.infer("the [MASK] sat")["kind"] == "fill-mask"
