"""Bad input on every endpoint: a 4xx with a readable ``detail`` and not one row written anywhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.daemon.conftest import new_id, row_counts

LONG = "x" * 20_001  # default max_prompt_chars is 20 000

# (case id, body: dict → JSON, str → raw content, None → no body, status, fragment of detail)
ROUTE_CASES: list[tuple[str, Any, int, str]] = [
    ("malformed-json", '{"prompt": "hi"', 400, "malformed JSON"),
    ("no-body", None, 422, "JSON object body is required"),
    ("not-an-object", '["hi"]', 422, "valid dictionary"),
    ("missing-prompt", {}, 422, "prompt: Field required"),
    ("prompt-not-string", {"prompt": 1}, 422, "prompt: Input should be a valid string"),
    ("prompt-null", {"prompt": None}, 422, "prompt: Input should be a valid string"),
    ("empty-prompt", {"prompt": ""}, 422, "prompt: String should have at least 1 character"),
    ("whitespace-prompt", {"prompt": " \n\t "}, 422, "prompt is empty"),
    ("too-long", {"prompt": LONG}, 422, "the limit is 20000"),
    ("unknown-field", {"prompt": "hi", "lamdbas": {"size": 1}}, 422, "lamdbas: Extra inputs are not permitted"),
    ("unknown-constraint", {"prompt": "hi", "lambdas": {"quality": 1}}, 422, "unknown constraint 'quality'"),
    ("negative-lambda", {"prompt": "hi", "lambdas": {"size": -1}}, 422, "'size' must be >= 0"),
    ("nan-lambda", '{"prompt": "hi", "lambdas": {"size": NaN}}', 422, "finite"),
    ("infinite-lambda", '{"prompt": "hi", "lambdas": {"cost": Infinity}}', 422, "finite"),
    ("huge-lambda", {"prompt": "hi", "lambdas": {"cost": 1e308}}, 422, "'cost' must be <= 1e+06"),
    ("string-lambda", {"prompt": "hi", "lambdas": {"size": "1"}}, 422, "lambdas.size: Input should be a valid number"),
    ("bool-lambda", {"prompt": "hi", "lambdas": {"size": True}}, 422, "lambdas.size: Input should be a valid number"),
    ("lambdas-not-object", {"prompt": "hi", "lambdas": [1]}, 422, "lambdas: Input should be a valid dictionary"),
    ("app-not-string", {"prompt": "hi", "app": 5}, 422, "app: Input should be a valid string"),
    ("unknown-flag", {"prompt": "[Flag: biggest model] hi"}, 422, "unknown flag"),
    ("flag-unknown-constraint", {"prompt": "[Flag: quality=2] hi"}, 422, "unknown constraint"),
    ("flag-negative", {"prompt": "[Flag: size=-1] hi"}, 422, ">= 0"),
    ("flag-not-number", {"prompt": "[Flag: size=big] hi"}, 422, "is not a number"),
    ("only-flags", {"prompt": "[Flag: smallest model]"}, 422, "empty once its flags are removed"),
]
INFER_ONLY: list[tuple[str, Any, int, str]] = [
    ("max-new-tokens-string", {"prompt": "hi", "max_new_tokens": "5"}, 422, "max_new_tokens: Input should be a valid integer"),
    ("max-new-tokens-zero", {"prompt": "hi", "max_new_tokens": 0}, 422, "max_new_tokens: Input should be greater than or equal to 1"),
]
FEEDBACK_CASES: list[tuple[str, Any, int, str]] = [
    ("malformed-json", '{"request_id": ', 400, "malformed JSON"),
    ("no-body", None, 422, "JSON object body is required"),
    ("missing-request-id", {"loss": 0.2}, 422, "request_id: Field required"),
    ("request-id-not-string", {"request_id": 7, "loss": 0.2}, 422, "request_id: Input should be a valid string"),
    ("neither", {"request_id": "{rid}"}, 422, "exactly one of 'loss' or 'score'"),
    ("both", {"request_id": "{rid}", "loss": 0.2, "score": 0.8}, 422, "exactly one of 'loss' or 'score'"),
    ("negative-loss", {"request_id": "{rid}", "loss": -0.1}, 422, "loss: Input should be greater than or equal to 0"),
    ("nan-loss", '{"request_id": "{rid}", "loss": NaN}', 422, "loss: Input should be a finite number"),
    ("infinite-loss", '{"request_id": "{rid}", "loss": Infinity}', 422, "loss: Input should be a finite number"),
    ("huge-loss", {"request_id": "{rid}", "loss": 1e308}, 422, "loss 1e+308 is outside the allowed range [0, 100]"),
    ("loss-over-default-bound", {"request_id": "{rid}", "loss": 100.5}, 422, "outside the allowed range [0, 100]"),
    ("score-above-one", {"request_id": "{rid}", "score": 1.5}, 422, "score: Input should be less than or equal to 1"),
    ("score-below-zero", {"request_id": "{rid}", "score": -0.1}, 422, "score: Input should be greater than or equal to 0"),
    ("nan-score", '{"request_id": "{rid}", "score": NaN}', 422, "score: Input should be a finite number"),
    ("short-request-id", {"request_id": "x", "loss": 0.2}, 422, "request_id: String should have at least 36 characters"),
    ("request-id-not-uuid", {"request_id": "x" * 36, "loss": 0.2}, 422, "request_id: String should match pattern"),
    ("score-string", {"request_id": "{rid}", "score": "0.5"}, 422, "score: Input should be a valid number"),
    ("loss-bool", {"request_id": "{rid}", "loss": True}, 422, "loss: Input should be a valid number"),
    ("expert-not-string", {"request_id": "{rid}", "loss": 0.2, "expert": 3}, 422, "expert: Input should be a valid string"),
    ("empty-key", {"request_id": "{rid}", "loss": 0.2, "idempotency_key": ""}, 422, "idempotency_key: String should have at least 1 character"),
    ("unknown-field", {"request_id": "{rid}", "loss": 0.2, "los": 1}, 422, "los: Extra inputs are not permitted"),
    ("unknown-request", {"request_id": "{new}", "loss": 0.2}, 404, "unknown request_id"),
    ("unknown-expert", {"request_id": "{rid}", "loss": 0.2, "expert": "nobody"}, 422, "unknown expert 'nobody'"),
]

# The one text rule (store/text.py) on every text field: (case, value, fragment of the sentence).
BAD_TEXT: list[tuple[str, str, str]] = [
    ("surrogate", "a\ud800b", "holds a lone surrogate U+D800 at character 1"),
    ("low-surrogate", "\udfff", "holds a lone surrogate U+DFFF at character 0"),
    ("nul", "a\x00b", "holds the control character U+0000 (NUL) at character 1"),
    ("escape", "\x1b[31mred", "holds the control character U+001B at character 0"),
    ("delete", "a\x7f", "holds the control character U+007F at character 1"),
]


def _text_cases(base: dict[str, Any], fields: tuple[str, ...]) -> list[tuple[str, Any, int, str]]:
    """Each bad text in each field, sent as ASCII-escaped JSON (a client cannot UTF-8-encode a surrogate)."""
    return [(f"{field}-{case}", json.dumps({**base, field: value}), 422, f"{field}: {fragment}")
            for field in fields for case, value, fragment in BAD_TEXT]


ROUTE_CASES += _text_cases({"prompt": "hi"}, ("prompt", "app"))
FEEDBACK_CASES += _text_cases({"request_id": "{rid}", "loss": 0.2}, ("request_id", "expert", "idempotency_key", "app"))


@pytest.fixture
def primed(any_client: TestClient) -> Iterator[tuple[TestClient, str]]:
    """A client (SQLite, then PostgreSQL) with one routed, logged request to give feedback on."""
    client = any_client
    routed = client.post("/v1/route", json={"prompt": "a real request"})
    assert routed.status_code == 200
    assert client.app.state.writer.flush(10)
    yield client, routed.json()["request_id"]


def _send(client: TestClient, path: str, body: Any, request_id: str) -> Any:
    if body is None:
        return client.post(path)
    if isinstance(body, str):
        content = body.replace("{rid}", request_id).replace("{new}", new_id())
        return client.post(path, content=content, headers={"content-type": "application/json"})
    body = {k: (v.replace("{rid}", request_id).replace("{new}", new_id()) if isinstance(v, str) else v)
            for k, v in body.items()}
    return client.post(path, json=body)


def _failures(client: TestClient, path: str, cases: list[tuple[str, Any, int, str]], request_id: str) -> list[str]:
    """Send every case; return a line per case that did not get its status, its message, or wrote a row."""
    settings = client.app.state.settings
    failures = []
    for case, body, status, fragment in cases:
        before = row_counts(settings)
        response = _send(client, path, body, request_id)
        detail = response.json().get("detail") if response.headers.get("content-type") == "application/json" else None
        assert client.app.state.writer.flush(10)
        after = row_counts(settings)
        if response.status_code != status:
            failures.append(f"{case}: HTTP {response.status_code}, expected {status}: {response.text[:200]}")
        elif not isinstance(detail, str) or fragment not in detail:
            failures.append(f"{case}: detail {detail!r} lacks {fragment!r}")
        if after != before:
            failures.append(f"{case}: rows changed {before} -> {after}")
    return failures


def test_route_rejects_bad_input(primed) -> None:  # type: ignore[no-untyped-def]
    client, request_id = primed
    failures = _failures(client, "/v1/route", ROUTE_CASES, request_id)
    assert failures == [], "\n".join(failures)


def test_infer_rejects_bad_input(primed) -> None:  # type: ignore[no-untyped-def]
    client, request_id = primed
    failures = _failures(client, "/v1/infer", ROUTE_CASES + INFER_ONLY, request_id)
    assert failures == [], "\n".join(failures)


def test_feedback_rejects_bad_input(primed) -> None:  # type: ignore[no-untyped-def]
    client, request_id = primed
    failures = _failures(client, "/v1/feedback", FEEDBACK_CASES, request_id)
    assert failures == [], "\n".join(failures)


def test_wrong_method_and_unknown_path(client: TestClient) -> None:
    assert client.get("/v1/route").status_code == 405
    assert client.post("/v1/status", json={}).status_code == 405
    assert client.get("/v1/nothing").status_code == 404
