from __future__ import annotations

import pytest

from jobs.errors import JobLocked
from jobs.locks import exclusive


@pytest.mark.parametrize("backend", ["sqlite_settings", "pg_settings"])
def test_a_second_holder_is_refused_until_release(request, backend: str) -> None:
    settings = request.getfixturevalue(backend)
    with exclusive(settings, "train_router"):
        with pytest.raises(JobLocked, match="another train_router run"):
            with exclusive(settings, "train_router"):
                pass
        with exclusive(settings, "other"):
            pass
    with exclusive(settings, "train_router"):
        pass


HOLD = """
import sys, time
from jobs.locks import exclusive
from store.settings import Settings
with exclusive(Settings(), "train_router"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("backend", ["sqlite_settings", "pg_settings"])
def test_a_sigkilled_holder_releases_the_lock(request, backend: str) -> None:
    """A worker killed outright leaves no lock behind: the flock dies with its fd, the advisory lock
    with its PostgreSQL session, so the re-run of a lost job can take it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    settings = request.getfixturevalue(backend)
    holder = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, env=os.environ.copy())
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(JobLocked):
            with exclusive(settings, "train_router"):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 10  # PostgreSQL ends the backend when it sees the socket close
        while True:
            try:
                with exclusive(settings, "train_router"):
                    break
            except JobLocked:
                assert time.monotonic() < deadline, "the killed holder's lock was never released"
                time.sleep(0.1)
    finally:
        holder.kill()
        holder.wait(10)
