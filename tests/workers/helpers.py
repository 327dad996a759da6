"""Start real ``thalamus`` processes for integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from cli.embedded import stop_process


def thalamus_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def start(args: list[str], log: Path, new_session: bool = False) -> subprocess.Popen[bytes]:
    """``thalamus ARGS`` with output in ``log``; ``new_session``: its own process group, to kill it whole."""
    handle = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "cli", *args], env=thalamus_env(),
                            stdout=handle, stderr=subprocess.STDOUT, start_new_session=new_session)


def wait_for_log(log: Path, needle: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and needle in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not in {log} after {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


__all__ = ["start", "stop_process", "thalamus_env", "wait_for_log"]
