"""The benchmark data lives beside the repository, as CI has it: ``<repo>/../shared/data``."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def dcrouter() -> Path:
    """The dcrouter-shaped routing dataset; its absence fails the test (tests never skip)."""
    path = SHARED_DATA / "dcrouter"
    if not any(path.glob("train.*")) or not any(path.glob("test.*")):
        pytest.fail(f"benchmark data not found at {path}: put the shared folder next to the repository "
                    f"root (../shared/data/dcrouter with train.* and test.*), as CI has it")
    return path
