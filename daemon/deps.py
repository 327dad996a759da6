"""What an endpoint may ask for: the daemon's parts, read from ``app.state`` (filled once by ``create_app``).

Each is an ``async`` dependency so resolving it costs no threadpool hop; the ``...Dep`` aliases are
what endpoints annotate their parameters with, e.g. ``def route(body: RouteRequest, holder: HolderDep)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from daemon.health import DatabaseProbe
from daemon.holder import RouterHolder
from daemon.logwriter import RequestLogWriter
from daemon.metrics import Metrics
from daemon.shadow import ShadowRunner
from store.settings import Settings

if TYPE_CHECKING:  # experts.local imports torch: ``create_app`` imports it when it builds the cache
    from experts.local import ExpertCache


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_holder(request: Request) -> RouterHolder:
    holder: RouterHolder = request.app.state.holder
    return holder


async def get_writer(request: Request) -> RequestLogWriter:
    writer: RequestLogWriter = request.app.state.writer
    return writer


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_shadows(request: Request) -> ShadowRunner:
    shadows: ShadowRunner = request.app.state.shadows
    return shadows


async def get_probe(request: Request) -> DatabaseProbe:
    probe: DatabaseProbe = request.app.state.probe
    return probe


async def get_experts(request: Request) -> ExpertCache:
    experts: ExpertCache = request.app.state.experts
    return experts


SettingsDep = Annotated[Settings, Depends(get_settings)]
HolderDep = Annotated[RouterHolder, Depends(get_holder)]
WriterDep = Annotated[RequestLogWriter, Depends(get_writer)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ProbeDep = Annotated[DatabaseProbe, Depends(get_probe)]
ShadowsDep = Annotated[ShadowRunner, Depends(get_shadows)]
if TYPE_CHECKING:
    ExpertsDep = Annotated[ExpertCache, Depends(get_experts)]
else:  # FastAPI evaluates the annotation at import time, when ExpertCache is not imported
    ExpertsDep = Annotated[Any, Depends(get_experts)]
