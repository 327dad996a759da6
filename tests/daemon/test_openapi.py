"""The OpenAPI document tells the truth: checked statically, then by schemathesis against a live daemon."""

from __future__ import annotations

from typing import Any

import hypothesis
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.daemon.conftest import LiveDaemon

MAX_EXAMPLES = 25  # per operation and generation mode, for the routing and feedback endpoints
MAX_EXAMPLES_MORE = 10  # for the gateway's and the admin API's (their bodies are checked by their own tests)
CORE = {"/v1/route", "/v1/infer", "/v1/feedback", "/v1/status", "/healthz", "/metrics"}
PHASES = [hypothesis.Phase.explicit, hypothesis.Phase.generate]  # no shrinking: report the first failure fast


def _json_schema(document: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    return document["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]


def test_the_document_matches_what_the_endpoints_do(client) -> None:  # type: ignore[no-untyped-def]
    document = client.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    expected = {("/v1/route", "post"): ("400", "422", "503"), ("/v1/infer", "post"): ("400", "409", "422", "503"),
                ("/v1/feedback", "post"): ("400", "404", "422", "503"), ("/v1/status", "get"): ("503",)}
    for (path, method), statuses in expected.items():
        for status in statuses:
            assert _json_schema(document, path, method, status) == error, (path, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]
    detail = document["components"]["schemas"]["ErrorResponse"]["properties"]["detail"]
    assert detail["type"] == "string"
    assert list(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")

    schemas = document["components"]["schemas"]
    prompt = schemas["RouteRequest"]["properties"]["prompt"]
    assert (prompt["minLength"], prompt["maxLength"]) == (1, client.app.state.settings.max_prompt_chars)
    request_id = schemas["FeedbackRequest"]["properties"]["request_id"]
    assert (request_id["minLength"], request_id["maxLength"]) == (36, 36) and "pattern" in request_id

    # What the document promised above is what the app answers.
    bad = client.post("/v1/route", json={"prompt": ""})
    assert bad.status_code == 422 and isinstance(bad.json()["detail"], str) and bad.json()["errors"]
    assert client.post("/v1/feedback", json={"request_id": "x", "loss": 1}).status_code == 422
    malformed = client.post("/v1/route", content=b"{", headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and isinstance(malformed.json()["detail"], str)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]


def test_api_conforms_to_its_schema(live_pg_daemon: LiveDaemon) -> None:
    """Zero 5xx, every status/content type/body as documented, and schema-invalid input refused with 4xx.

    Driven through schemathesis' strategies rather than its pytest plugin, whose lazy
    ``from_fixture`` does not work with pytest 9 (it sets ``Function._nodeid``); one live daemon on
    PostgreSQL serves every operation.
    """
    from store.db import session_scope
    from store.keys import create_key

    # The production default: auth on; the fuzzer calls with an admin key (every scope), so it reaches every
    # endpoint's own checks. The fixture's daemon runs with the tests' auth off; endpoints read settings per request.
    settings = live_pg_daemon.settings
    live_pg_daemon.app.state.settings = settings.model_copy(update={"auth": True})
    with session_scope(settings) as session:
        key = create_key(session, "fuzzer", ["admin"], rate_limit="100000/second").key
    headers = {"Authorization": f"Bearer {key}"}
    schema = schemathesis.openapi.from_url(f"{live_pg_daemon.base_url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/route", "/v1/infer", "/v1/feedback", "/v1/status", "/metrics",
                                              "/v1/chat/completions", "/v1/completions", "/v1/models",
                                              "/v1/admin/versions", "/v1/admin/versions/{version_id}/approve",
                                              "/v1/admin/jobs/{name}", "/v1/admin/experts"}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not operation.body and not list(operation.iter_parameters()):
                continue  # nothing to make invalid

            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(max_examples=MAX_EXAMPLES if operation.path in CORE else MAX_EXAMPLES_MORE, deadline=None, derandomize=True, database=None,
                                 suppress_health_check=list(hypothesis.HealthCheck), phases=PHASES)
            def run(case: Any) -> None:
                case.call_and_validate(checks=CHECKS, timeout=30, headers=headers)

            try:
                run()
            except Exception as exc:  # one line per failing operation and mode, all of them reported
                failures.append(f"{operation.method.upper()} {operation.path} [{mode.value}]: {exc}")
    assert failures == [], "\n\n".join(failures)
