"""Immutable router bundles: one directory per router version.

Layout::

    config.json          RouterConfig
    tokenizer/...        tokenizer files
    adapter.safetensors  LoRA + head + normalisation buffers (the trainable diff)
    inference.onnx       optional: what the daemon serves (router/export.py), checked at export
    manifest.json        format, expert order, base path + sha256, {file: sha256}, extra, bundle_sha256

The frozen base encoder is referenced by path and checksum, not copied. The bundle sha256 is
the sha256 of the canonical JSON of the manifest without its own ``bundle_sha256`` field —
i.e. over every file hash, the expert order, the base checksum and ``extra``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch and transformers load only when a bundle is written or read
    from router.model import Router

FORMAT = "thalamus-router-bundle"
FORMAT_VERSION = 1
WEIGHTS = "adapter.safetensors"
_BASE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_base_cache: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


class BundleError(RuntimeError):
    """A bundle is missing, incomplete, tampered with, or does not match what the caller expects."""


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_sha256(path: str | Path) -> str:
    """Checksum of a frozen base encoder: config.json and its weight files, in name order.

    Cached per path and each file's (size, mtime_ns), since the weights are ~90 MB.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"base encoder {str(root)!r} is not a directory")
    files = sorted(p for p in root.iterdir() if p.is_file() and (p.name == "config.json" or p.suffix in _BASE_SUFFIXES))
    if not any(p.suffix in _BASE_SUFFIXES for p in files):
        raise BundleError(f"base encoder {str(root)!r} has no weight files")
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(root.resolve()), stamp)
    if key not in _base_cache:
        digest = hashlib.sha256()
        for p in files:
            digest.update(f"{p.name}:{_file_sha256(p)}\n".encode())
        _base_cache[key] = digest.hexdigest()
    return _base_cache[key]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON (PostgreSQL json rejects NaN)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"extra holds a value that is not JSON-serialisable: {value!r}")


def _canonical(manifest: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "bundle_sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def fsync_dir(path: Path) -> None:
    """Make the entries of a directory (a new or renamed file in it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


Exporter = Callable[["Router", Path], Mapping[str, Any]]
"""Writes inference files into a bundle being written and returns what the manifest records of them."""


def save_bundle(router: Router, directory: Path, extra: Mapping[str, Any] | None = None,
                export: Exporter | None = None) -> str:
    """Write ``router`` as a bundle at ``directory`` atomically; return the bundle sha256.

    ``export`` (e.g. :func:`router.export.export_inference`) adds the inference files before the
    bundle is hashed, so their checksums are in the manifest; if it raises, nothing is written.

    Files go to a temporary sibling directory, are fsynced, and the directory is renamed into
    place, so a half-written bundle can never be found at ``directory``. Refuses (BundleError)
    to overwrite an existing path.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists():
        raise BundleError(f"refusing to overwrite existing path {str(directory)!r}: bundles are immutable")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_bytes(tmp / "config.json", json.dumps(router.config.to_dict(), indent=2, sort_keys=True).encode())
        router.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        save_file(router.trainable_state_dict(), str(tmp / WEIGHTS), metadata={"format": FORMAT})
        inference = dict(export(router, tmp)) if export is not None else None
        files: dict[str, str] = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
            files[path.relative_to(tmp).as_posix()] = _file_sha256(path)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "expert_names": list(router.expert_names),
            "base_path": str(router.config.backbone),
            "base_sha256": base_sha256(router.config.backbone),
            "files": files,
            "extra": _jsonable(dict(extra or {})),
        }
        if inference is not None:
            manifest["inference"] = _jsonable(inference)
        manifest["bundle_sha256"] = hashlib.sha256(_canonical(manifest)).hexdigest()
        _write_bytes(tmp / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
        fsync_dir(tmp / "tokenizer")
        fsync_dir(tmp)
        if directory.exists():
            raise BundleError(f"refusing to overwrite existing path {str(directory)!r}: bundles are immutable")
        os.rename(tmp, directory)
        fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(manifest["bundle_sha256"])


def read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed manifest.json of a bundle (not verified)."""
    path = Path(directory) / "manifest.json"
    if not Path(directory).is_dir():
        raise BundleError(f"bundle {str(directory)!r} does not exist")
    if not path.is_file():
        raise BundleError(f"bundle {str(directory)!r} has no manifest.json (incomplete or not a bundle)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"bundle {str(directory)!r}: manifest.json is unreadable: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"bundle {str(directory)!r}: manifest.json is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"bundle {str(directory)!r}: format version {manifest.get('format_version')!r} "
                          f"is not supported (this code reads {FORMAT_VERSION})")
    return manifest


def bundle_sha256(directory: Path) -> str:
    """The bundle sha256 recomputed from the manifest (file contents are not re-hashed here)."""
    return hashlib.sha256(_canonical(read_manifest(Path(directory)))).hexdigest()


def verify_bundle(directory: Path, expected_sha256: str | None = None,
                  expected_experts: Sequence[str] | None = None) -> dict[str, Any]:
    """Check every file hash, the bundle hash, the expert order and the base checksum; return the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    files = manifest.get("files")
    if not isinstance(files, dict) or "config.json" not in files or WEIGHTS not in files:
        raise BundleError(f"bundle {str(directory)!r}: manifest lists no config.json/{WEIGHTS}")
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise BundleError(f"bundle {str(directory)!r}: file {name!r} is missing")
        actual = _file_sha256(path)
        if actual != expected:
            raise BundleError(f"bundle {str(directory)!r}: file {name!r} has sha256 {actual[:12]}…, "
                              f"manifest says {str(expected)[:12]}… (tampered or corrupt)")
    computed = hashlib.sha256(_canonical(manifest)).hexdigest()
    if manifest.get("bundle_sha256") != computed:
        raise BundleError(f"bundle {str(directory)!r}: manifest bundle_sha256 does not match its content")
    if expected_sha256 is not None and computed != expected_sha256:
        raise BundleError(f"bundle {str(directory)!r} has sha256 {computed[:12]}…, expected {expected_sha256[:12]}…")
    config = json.loads((directory / "config.json").read_text())
    names = list(manifest.get("expert_names") or [])
    if list(config.get("expert_names") or []) != names:
        raise BundleError(f"bundle {str(directory)!r}: config and manifest disagree on the expert order")
    if expected_experts is not None and list(expected_experts) != names:
        raise BundleError(f"bundle {str(directory)!r}: expert order {names} differs from expected "
                          f"{list(expected_experts)}")
    base = config.get("backbone")
    try:
        actual_base = base_sha256(base)
    except (BundleError, OSError) as exc:
        raise BundleError(f"bundle {str(directory)!r}: base encoder {base!r} cannot be checked: {exc}") from exc
    if actual_base != manifest.get("base_sha256"):
        raise BundleError(f"bundle {str(directory)!r}: base encoder at {base!r} has sha256 {actual_base[:12]}…, "
                          f"the bundle was trained on {str(manifest.get('base_sha256'))[:12]}…")
    return manifest


def load_bundle(directory: Path, expected_sha256: str | None = None,
                expected_experts: Sequence[str] | None = None) -> Router:
    """Verify and load a bundle; returns a :class:`router.model.Router` in eval mode."""
    from safetensors.torch import load_file

    from router.model import Router, RouterConfig

    directory = Path(directory)
    verify_bundle(directory, expected_sha256, expected_experts)
    try:
        config = RouterConfig.from_dict(json.loads((directory / "config.json").read_text()))
        router = Router.from_config(config, tokenizer_path=directory / "tokenizer")
        router.load_trainable_state_dict(load_file(str(directory / WEIGHTS)))
    except (ValueError, KeyError, OSError) as exc:
        raise BundleError(f"bundle {str(directory)!r} cannot be loaded: {exc}") from exc
    router.eval()
    return router
