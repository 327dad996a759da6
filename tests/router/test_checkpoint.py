import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from router.checkpoint import BundleError, bundle_sha256, load_bundle, save_bundle
from router.model import Router, RouterConfig, expand_experts

TEXTS = ["route me", "another prompt that is a bit longer than the first"]


@pytest.fixture
def trained(tiny_bert: str) -> Router:
    router = Router.from_config(RouterConfig(backbone=tiny_bert, expert_names=["a", "b"]))
    with torch.no_grad():
        for name, p in router.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)  # non-trivial LoRA B and head so a lost weight would show
        router.loss_mean.copy_(torch.tensor([1.0, 3.0]))
    return router


def test_round_trip_gives_identical_predictions(trained: Router, tmp_path: Path) -> None:
    sha = save_bundle(trained, tmp_path / "v1", extra={"metrics": {"x": np.float32(0.5), "n": float("nan")}})
    assert sha == bundle_sha256(tmp_path / "v1")
    loaded = load_bundle(tmp_path / "v1", expected_sha256=sha, expected_experts=["a", "b"])
    assert not loaded.training and loaded.expert_names == ["a", "b"]
    np.testing.assert_array_equal(loaded.predict(TEXTS), trained.predict(TEXTS))
    manifest = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    assert manifest["extra"] == {"metrics": {"x": 0.5, "n": None}}
    assert {"config.json", "adapter.safetensors"} <= set(manifest["files"])
    assert any(name.startswith("tokenizer/") for name in manifest["files"])
    # only the diff is stored: far smaller than the base weights
    assert (tmp_path / "v1" / "adapter.safetensors").stat().st_size < 200_000


def test_refuses_to_overwrite(trained: Router, tmp_path: Path) -> None:
    save_bundle(trained, tmp_path / "v1")
    with pytest.raises(BundleError, match="overwrite"):
        save_bundle(trained, tmp_path / "v1")


@pytest.mark.parametrize("victim", ["adapter.safetensors", "config.json", "tokenizer/tokenizer_config.json"])
def test_tampered_file_is_refused(trained: Router, tmp_path: Path, victim: str) -> None:
    save_bundle(trained, tmp_path / "v1")
    path = tmp_path / "v1" / victim
    path.write_bytes(path.read_bytes() + b" ")
    with pytest.raises(BundleError, match="tampered"):
        load_bundle(tmp_path / "v1")


def test_missing_file_and_tampered_manifest_are_refused(trained: Router, tmp_path: Path) -> None:
    sha = save_bundle(trained, tmp_path / "v1", extra={"note": "x"})
    shutil.copytree(tmp_path / "v1", tmp_path / "v2")
    (tmp_path / "v1" / "adapter.safetensors").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(tmp_path / "v1")
    manifest_path = tmp_path / "v2" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["extra"]["note"] = "y"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(tmp_path / "v2")
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "v2", expected_sha256=sha)


def test_wrong_expert_order_or_sha_is_refused(trained: Router, tmp_path: Path) -> None:
    sha = save_bundle(trained, tmp_path / "v1")
    with pytest.raises(BundleError, match="expert order"):
        load_bundle(tmp_path / "v1", expected_experts=["b", "a"])
    with pytest.raises(BundleError, match="expected"):
        load_bundle(tmp_path / "v1", expected_sha256="0" * 64)
    np.testing.assert_array_equal(load_bundle(tmp_path / "v1", expected_sha256=sha).predict(TEXTS), trained.predict(TEXTS))


def test_half_written_bundle_is_never_found(trained: Router, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(src: str, dst: str) -> None:
        raise OSError("disk unplugged")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="unplugged"):
        save_bundle(trained, tmp_path / "v1")
    monkeypatch.undo()
    assert not (tmp_path / "v1").exists()
    assert list(tmp_path.iterdir()) == []  # the temporary directory was cleaned up
    # a directory left by a crash (files but no manifest) is refused
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text("{}")
    with pytest.raises(BundleError, match="no manifest"):
        load_bundle(tmp_path / "partial")
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")


def test_changed_base_is_refused(trained: Router, tiny_bert: str, tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(tiny_bert, base)
    router = Router.from_config(RouterConfig(backbone=str(base), expert_names=["a", "b"]))
    save_bundle(router, tmp_path / "v1")
    weights = base / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x00" * 8
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="base encoder"):
        load_bundle(tmp_path / "v1")


def test_expanded_router_round_trips(trained: Router, tmp_path: Path) -> None:
    bigger = expand_experts(trained, ["a", "b", "c"], [None, None, 2.0])
    sha = save_bundle(bigger, tmp_path / "v2")
    loaded = load_bundle(tmp_path / "v2", expected_sha256=sha, expected_experts=["a", "b", "c"])
    np.testing.assert_array_equal(loaded.predict(TEXTS), bigger.predict(TEXTS))
