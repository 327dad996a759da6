"""A real ``thalamus serve`` process on PostgreSQL for fault tests (kill -9, database outage)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from cli.embedded import stop_process


def start_daemon(log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``python -m cli serve`` with the test's THALAMUS_* settings, plus ``env`` overrides."""
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               **{f"THALAMUS_{k.upper()}": v for k, v in env.items()}}
    with open(log, "ab") as handle:
        return subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=environ,
                                stdout=handle, stderr=subprocess.STDOUT)


def wait_healthy(base: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> dict[str, Any]:
    """Wait until /healthz answers 200 (a router is loaded); returns its body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"daemon exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            response = httpx.get(f"{base}/healthz", timeout=5)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"daemon not healthy after {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


__all__ = ["start_daemon", "stop_process", "wait_healthy"]
