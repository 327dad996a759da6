"""Cold start: make sure some router version is active before the first request."""

from __future__ import annotations

from jobs.errors import CandidateRejected, JobInputError
from jobs.locks import exclusive
from jobs.loss_table import load_loss_table
from jobs.promote import activate
from jobs.recipe import TrainRecipe
from jobs.router_store import save_version
from router.model import Router, init_head_cold_start
from store.db import session_scope
from store.queries import active_experts, active_router_version
from store.settings import Settings
from store.states import VersionStatus


def _params(attributes: dict) -> float | None:
    value = attributes.get("params")
    return float(value) if isinstance(value, (int, float)) else None


def ensure_active_router(settings: Settings) -> int:
    """Return the active version id, creating a cold-start router first if there is none.

    The cold-start head outputs each expert's mean observed loss (or, with no data at all,
    prefers the largest expert), so routing is sensible from the first request.
    """
    with session_scope(settings) as session:
        active = active_router_version(session)
        if active is not None:
            return active.id
    with exclusive(settings, "bootstrap"):
        version_id, rejected = _create_cold_start(settings)
    if rejected:
        raise CandidateRejected(f"the cold-start router version {version_id} was recorded as rejected: {rejected}")
    return version_id


def _create_cold_start(settings: Settings) -> tuple[int, str | None]:
    """(version id, None) once a version is active, or (id, reason) when the new bundle failed its load check."""
    with session_scope(settings) as session:
        active = active_router_version(session)
        if active is not None:
            return active.id, None
        experts = active_experts(session)
        if not experts:
            raise JobInputError(
                "no experts are registered: run `thalamus experts build-demo` or `thalamus experts add`"
            )
        table = load_loss_table(session, experts, settings.max_loss)
        router = Router.from_config(TrainRecipe.from_settings(settings).router_config([e.name for e in experts]))
        init_head_cold_start(router, table.mean_losses(), [_params(e.attributes) for e in experts])
        version = save_version(
            session, settings, router, parent_id=None, status=VersionStatus.CANDIDATE,
            metrics={"cold_start": True, "observed_rows": len(table)}, training_window={"rows": len(table)},
        )
        if version.status == VersionStatus.REJECTED:
            return version.id, version.reason
        activate(session, version, actor="system", reason="cold start")
        return version.id, None
