from __future__ import annotations

import pytest
from pydantic import ValidationError

from store.settings import Settings


def test_job_liveness_defaults_and_lost_after_must_span_two_heartbeats() -> None:
    settings = Settings(_env_file=None)
    assert (settings.job_heartbeat_seconds, settings.job_lost_after_seconds, settings.job_max_attempts) == (30, 150, 3)
    with pytest.raises(ValidationError, match="at least twice"):
        Settings(job_heartbeat_seconds=10, job_lost_after_seconds=15)
    with pytest.raises(ValidationError):
        Settings(job_max_attempts=0)
