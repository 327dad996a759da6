"""Job fixtures: real router bundles on the tiny encoder (shared with the daemon tests' builder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon.conftest import EXPERTS, LOSSES_A, Bundle, _build_bundle


@pytest.fixture(scope="session")
def router_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: str) -> Bundle:
    """One valid bundle routing over ``EXPERTS``; version rows may share it (bundles are immutable)."""
    return _build_bundle(tmp_path_factory.mktemp("job-bundles") / "a", tiny_backbone, LOSSES_A, noise=0.0, seed=1)


def tamper(bundle_dir: Path) -> None:
    """Flip the last bytes of the weights: the checksum no longer matches."""
    weights = max(bundle_dir.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    weights.write_bytes(bytes(data))


__all__ = ["EXPERTS", "Bundle", "tamper"]
