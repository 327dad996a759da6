"""Odd text on every text field, against a live daemon on PostgreSQL over one keep-alive connection.

Every answer is a 2xx whose row is written, or a 4xx with a sentence that writes nothing; no answer
is a 5xx, and the connection survives each one (the same socket serves the next request).
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select

from store.db import session_scope
from store.schema import Expert, Feedback, Prompt, Request
from tests.daemon.conftest import LiveDaemon

ODD_NAME = "ëxpert 😀 \u200b مرحبا"  # a registered expert whose name is odd but acceptable

ACCEPTED: dict[str, str] = {
    "emoji": "hi 😀🎉👩‍👩‍👧",
    "rtl": "שלום مرحبا بالعالم",
    "bidi-controls": "\u202eabc\u202c \u2067x\u2069",
    "combining": "e\u0301\u0308 n\u0303 Z\u0351\u0352\u0353",
    "zero-width": "a\u200bb\u200cc\u200dd\ufeff",
    "astral": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd \U0001f600",
    "whitespace-controls": "tab\there\nnew line\r\n",
    "private-use": "\ue000\uf8ff",
    "c1-controls": "next\x85line \x9b",  # NEL and CSI: real corpora carry them, and they store fine
}
REFUSED: dict[str, tuple[str, str]] = {
    "surrogate": ("x\ud800", "lone surrogate U+D800"),
    "surrogate-low": ("\udc00y", "lone surrogate U+DC00"),
    "nul": ("a\x00b", "U+0000 (NUL)"),
    "escape": ("\x1b[0m", "U+001B"),
    "delete": ("a\x7f", "U+007F"),
}
OVERSIZE = {"prompt": 20_001, "app": 201, "expert": 201, "idempotency_key": 201, "request_id": 37}


class Connection:
    """One HTTP/1.1 connection; fails the test if the server closes it after any answer."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.http = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self.http.connect()
        self.socket = self.http.sock

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        # json.dumps escapes to ASCII, so a lone surrogate travels as the escape a client would send.
        self.http.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json"})
        response = self.http.getresponse()
        status, payload = response.status, json.loads(response.read() or b"null")
        assert self.http.sock is self.socket, f"the server closed the connection after HTTP {status} on {path}"
        return status, payload


def _cases(fields: tuple[str, ...]) -> list[tuple[str, str, str, str | None]]:
    """(field, case, value, fragment of the refusal or None when accepted)."""
    cases = [(f, name, value, None) for f in fields for name, value in ACCEPTED.items()]
    cases += [(f, name, value, fragment) for f in fields for name, (value, fragment) in REFUSED.items()]
    cases += [(f, "oversize", "x" * OVERSIZE[f], "at most" if f != "prompt" else "the limit is") for f in fields]
    return cases


def test_every_text_field_answers_and_logs_or_refuses(live_pg_daemon: LiveDaemon) -> None:
    settings = live_pg_daemon.settings
    with session_scope(settings) as session:
        session.add(Expert(name=ODD_NAME, kind="external", attributes={"cost": 1.0}))
    connection = Connection(live_pg_daemon.base_url)
    problems: list[str] = []
    routed: dict[str, tuple[str, str | None]] = {}  # request id -> (prompt, app)
    feedback_keys: set[str] = set()

    def check(label: str, status: int, body: Any, fragment: str | None) -> bool:
        detail = body.get("detail") if isinstance(body, dict) else None
        if fragment is None and status not in (200, 202):
            problems.append(f"{label}: expected 2xx, got {status} {body}")
        elif fragment is not None and not (400 <= status < 500 and isinstance(detail, str) and fragment in detail):
            problems.append(f"{label}: expected a 4xx saying {fragment!r}, got {status} {body}")
        return 200 <= status < 300

    def probe(after: str) -> str:
        """The next request on the same connection must work."""
        status, body = connection.post("/v1/route", {"prompt": "a plain prompt after an odd one"})
        if status != 200:
            problems.append(f"the request after {after} got {status} {body}")
            return ""
        routed[body["request_id"]] = ("a plain prompt after an odd one", None)
        return body["request_id"]

    # Route and infer (cost λ picks a local masked-LM expert, so infer really runs one on the text).
    for path, extra in (("/v1/route", {}), ("/v1/infer", {"lambdas": {"cost": 1.0}, "max_new_tokens": 2})):
        for field, case, value, fragment in _cases(("prompt", "app")):
            body = {"prompt": "hello there", **extra, field: value}
            status, answer = connection.post(path, body)
            if check(f"{path} {field}={case}", status, answer, fragment):
                routed[answer["request_id"]] = (body["prompt"], body.get("app"))
            probe(f"{path} {field}={case}")

    # Feedback: every text field, on a real request; an odd but registered expert name is accepted.
    target = probe("routing")
    for field, case, value, fragment in _cases(("request_id", "expert", "idempotency_key", "app")):
        body: dict[str, Any] = {"request_id": target, "loss": 0.25, field: value}
        if field == "request_id" and fragment is None:
            fragment = "request_id: String should"  # only a UUID can name a request
        if field == "expert" and fragment is None:
            fragment = "unknown expert"  # not registered: refused, nothing written
        if field == "idempotency_key" and fragment is None:
            body["expert"] = ODD_NAME
        status, answer = connection.post("/v1/feedback", body)
        if check(f"feedback {field}={case}", status, answer, fragment):
            feedback_keys.add(answer["idempotency_key"])
        probe(f"feedback {field}={case}")
    status, answer = connection.post("/v1/feedback", {"request_id": target, "loss": 0.5, "expert": ODD_NAME,
                                                      "idempotency_key": "odd-expert"})
    if check("feedback expert=odd-registered", status, answer, None):
        feedback_keys.add(answer["idempotency_key"])
    assert problems == [], "\n".join(problems)

    # Every answered request is a logged one, with its text intact; nothing refused was written.
    assert live_pg_daemon.writer.flush(30)
    with session_scope(settings) as session:
        rows = {r.id: (text, r.app) for r, text in session.execute(
            select(Request, Prompt.text).join(Prompt, Prompt.hash == Request.prompt_hash))}
        keys = set(session.scalars(select(Feedback.idempotency_key)))
        request_count = session.scalar(select(func.count()).select_from(Request))
    assert rows == routed
    assert request_count == len(routed)
    assert keys == feedback_keys
    assert {value for value in ACCEPTED.values()} <= {text for text, _ in rows.values()}
    assert {value for value in ACCEPTED.values()} <= {app for _, app in rows.values()}
