"""Save router bundles under THALAMUS_HOME and register them as versions."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from router.checkpoint import load_bundle, save_bundle
from router.model import Router
from store.schema import RouterVersion
from store.settings import Settings


def save_version(session: Session, settings: Settings, router: Router, *, parent_id: int | None,
                 status: str, metrics: dict[str, Any], training_window: dict[str, Any]) -> RouterVersion:
    """Write the bundle atomically, then insert the version row pointing at it."""
    settings.ensure_home()
    next_id = (session.scalar(select(func.max(RouterVersion.id))) or 0) + 1
    directory = settings.routers_dir / f"v{next_id:04d}-{uuid.uuid4().hex[:8]}"
    sha = save_bundle(router, directory, extra={"parent_id": parent_id, "metrics": metrics})
    version = RouterVersion(
        parent_id=parent_id, base_encoder=router.config.backbone, checkpoint_uri=str(directory),
        checkpoint_sha256=sha, expert_order=list(router.expert_names), training_window=training_window,
        metrics=metrics, status=status,
    )
    session.add(version)
    session.flush()
    return version


def load_version(version: RouterVersion) -> Router:
    return load_bundle(Path(version.checkpoint_uri), expected_sha256=version.checkpoint_sha256,
                       expected_experts=list(version.expert_order))
