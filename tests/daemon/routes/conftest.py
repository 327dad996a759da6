"""What the endpoint tests share (the fixtures themselves are in ``tests/daemon/conftest.py``)."""

from __future__ import annotations

from fastapi.testclient import TestClient

PROMPTS = [f"Summarise the report on topic number {i} in two sentences." for i in range(12)] + [
    "def add(a, b):\n    return a + b", "The capital of France is [MASK].",
]


def flush(client: TestClient) -> None:
    """Wait until the app's log writer has written every answered request."""
    assert client.app.state.writer.flush(10)
