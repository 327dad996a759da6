"""Save router bundles under THALAMUS_HOME and register them as versions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from router.checkpoint import load_bundle, read_manifest, save_bundle
from router.model import Router
from store.schema import Expert, RouterVersion, utcnow
from store.settings import Settings
from store.states import VersionStatus


def save_version(session: Session, settings: Settings, router: Router, *, parent_id: int | None,
                 status: VersionStatus, metrics: dict[str, Any], training_window: dict[str, Any],
                 check_prompts: Sequence[str] = ()) -> RouterVersion:
    """Write the bundle atomically, insert the version row pointing at it, and check it loads.

    With ``settings.export_inference`` (the default) the bundle carries the ONNX export the daemon
    serves, checked against the PyTorch router on ``check_prompts`` (held-out prompts) and a fixed
    set; the check goes into the version's ``metrics["inference"]``. An export that fails its check
    raises :class:`router.export.ExportCheckFailed` and nothing is registered.
    A bundle that a daemon could not load (see :func:`load_problem`) is recorded as ``rejected``
    with the reason, so it can never be approved; the caller looks at ``status``.
    """
    settings.ensure_home()
    next_id = (session.scalar(select(func.max(RouterVersion.id))) or 0) + 1
    directory = settings.routers_dir / f"v{next_id:04d}-{uuid.uuid4().hex[:8]}"
    export = None
    if settings.export_inference:
        from router.export import export_inference

        def export(model: Router, target: Path) -> dict[str, Any]:
            return export_inference(model, target, check_prompts)

    sha = save_bundle(router, directory, extra={"parent_id": parent_id, "metrics": metrics}, export=export)
    inference = read_manifest(directory).get("inference")
    if inference is not None:
        metrics = {**metrics, "inference": inference}
    version = RouterVersion(
        parent_id=parent_id, base_encoder=router.config.backbone, checkpoint_uri=str(directory),
        checkpoint_sha256=sha, expert_order=list(router.expert_names), training_window=training_window,
        metrics=metrics, status=status,
    )
    session.add(version)
    session.flush()
    problem = load_problem(session, version)
    if problem is not None:
        version.status, version.reason = VersionStatus.REJECTED, f"the bundle failed the load check: {problem}"
        version.decided_by, version.decided_at = "system", utcnow()
        session.flush()
    return version


def load_problem(session: Session, version: RouterVersion) -> str | None:
    """Why a daemon could not serve ``version`` now, or None: loads it the way the daemon does.

    The checksum, the expert order, a finite warm-up prediction, and the constraint matrix built
    from the registered attributes of the version's experts are all checked.
    """
    from router.serving import load_for_serving

    order = [str(name) for name in version.expert_order]
    rows = {e.name: dict(e.attributes or {}) for e in session.scalars(select(Expert).where(Expert.name.in_(order)))}
    try:
        load_for_serving(Path(version.checkpoint_uri), version.checkpoint_sha256, order,
                         [rows.get(name, {}) for name in order])
    except Exception as exc:  # anything that would stop a daemon from serving it
        return str(exc) or type(exc).__name__
    return None


def load_version(version: RouterVersion) -> Router:
    return load_bundle(Path(version.checkpoint_uri), expected_sha256=version.checkpoint_sha256,
                       expected_experts=list(version.expert_order))
