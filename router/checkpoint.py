"""Router bundles: one immutable directory per version (config, tokenizer, trainable weights, manifest).

The frozen base encoder is referenced by path and sha256, so each version is a small diff on it.
A bundle is written to a temporary sibling and renamed into place: a half-written bundle is never
found at its final path.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from router.config import RouterConfig
from router.model import Router

FORMAT_VERSION = 1
WEIGHTS = "trainable.safetensors"


class BundleError(RuntimeError):
    """A bundle that is missing, tampered with, or does not match what the caller expects."""


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=16)
def _base_sha256_cached(path: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in stamp:
        digest.update(name.encode())
        digest.update(_sha256_file(Path(path) / name).encode())
    return digest.hexdigest()


def base_sha256(path: str) -> str:
    """Hash of the base encoder's config and weight files (cached per path, size and mtime)."""
    root = Path(path)
    names = sorted(p.name for p in root.iterdir()
                   if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    if not names:
        raise BundleError(f"base encoder at {path} has no config or weights")
    stamp = tuple((n, (root / n).stat().st_size, int((root / n).stat().st_mtime)) for n in names)
    return _base_sha256_cached(str(root), stamp)


def _bundle_hash(files: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def save_bundle(router: Router, directory: Path, extra: Mapping[str, Any] | None = None) -> str:
    """Write the bundle atomically and return its sha256. Refuses to overwrite."""
    directory = Path(directory)
    if directory.exists():
        raise BundleError(f"{directory} already exists; bundles are immutable")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(router.config.to_dict(), indent=2))
        router.tokenizer.save_pretrained(tmp / "tokenizer")
        save_file({k: v.contiguous() for k, v in router.trainable_state().items()}, str(tmp / WEIGHTS))
        files = {str(p.relative_to(tmp)): _sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "format_version": FORMAT_VERSION, "expert_order": router.expert_names,
            "base_encoder": router.config.backbone, "base_sha256": base_sha256(router.config.backbone),
            "files": files, "bundle_sha256": _bundle_hash(files), "extra": dict(extra or {}),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        _fsync_tree(tmp)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest["bundle_sha256"]


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{directory} is not a router bundle (no manifest.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None


def bundle_sha256(directory: Path) -> str:
    return read_manifest(directory)["bundle_sha256"]


def verify_bundle(directory: Path, expected_sha256: str | None = None,
                  expected_experts: Sequence[str] | None = None) -> dict[str, Any]:
    """Check every file hash, the bundle hash, the expert order and the base; return the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    files: dict[str, str] = manifest.get("files", {})
    for name, digest in files.items():
        path = directory / name
        if not path.is_file():
            raise BundleError(f"bundle {directory} lacks {name}")
        if _sha256_file(path) != digest:
            raise BundleError(f"bundle {directory}: {name} does not match its checksum")
    if _bundle_hash(files) != manifest.get("bundle_sha256"):
        raise BundleError(f"bundle {directory}: manifest checksum mismatch")
    if expected_sha256 is not None and manifest["bundle_sha256"] != expected_sha256:
        raise BundleError(f"bundle {directory} has sha256 {manifest['bundle_sha256'][:12]}…, "
                          f"expected {expected_sha256[:12]}…")
    if expected_experts is not None and list(manifest["expert_order"]) != list(expected_experts):
        raise BundleError(f"bundle {directory} routes to {manifest['expert_order']}, expected {list(expected_experts)}")
    if base_sha256(manifest["base_encoder"]) != manifest["base_sha256"]:
        raise BundleError(f"base encoder {manifest['base_encoder']} changed since the bundle was written")
    return manifest


def load_bundle(directory: Path, expected_sha256: str | None = None,
                expected_experts: Sequence[str] | None = None) -> Router:
    """Verify and load a bundle into an eval-mode Router."""
    from transformers import AutoModel, AutoTokenizer

    directory = Path(directory)
    manifest = verify_bundle(directory, expected_sha256, expected_experts)
    config = RouterConfig.from_dict(json.loads((directory / "config.json").read_text()))
    if config.expert_names != list(manifest["expert_order"]):
        raise BundleError(f"bundle {directory}: config and manifest disagree on the expert order")
    router = Router(config, AutoModel.from_pretrained(config.backbone), AutoTokenizer.from_pretrained(directory / "tokenizer"))
    state = load_file(str(directory / WEIGHTS))
    missing = set(router.trainable_state()) - set(state)
    if missing:
        raise BundleError(f"bundle {directory} lacks weights: {sorted(missing)[:5]}")
    router.load_state_dict(state, strict=False)
    router.eval()
    return router
