"""The Celery application. Job logic lives in ``jobs/``; its tasks and routes come from ``jobs.registry``."""

from __future__ import annotations

from celery import Celery

from jobs.registry import JOBS
from store.settings import Settings, get_settings


def task_name(kind: str) -> str:
    """The Celery task that runs job ``kind``."""
    return f"thalamus.{kind}"


def _transport_options(broker_url: str, visibility: int) -> dict[str, object]:
    """Redis redelivers an unacked task after its visibility timeout: set it above the longest job.

    RabbitMQ's ``consumer_timeout`` is a server setting (rabbitmq.conf) and must likewise exceed the
    longest job; the SQLAlchemy transport hands its options to ``create_engine`` and never redelivers.
    """
    if broker_url.startswith("redis"):
        return {"visibility_timeout": visibility}
    return {}


def make_celery(settings: Settings) -> Celery:
    from workers.tasks import register_tasks

    app = Celery("thalamus", broker=settings.celery_broker_url, include=["workers.liveness"])
    visibility = settings.job_timeout_seconds + 600  # above the longest job: no redelivery mid-run
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_routes={task_name(spec.name): {"queue": spec.queue} for spec in JOBS.values()},
        task_default_queue="losses",
        broker_transport_options=_transport_options(settings.celery_broker_url, visibility),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_max_tasks_per_child=20,
        task_time_limit=settings.job_timeout_seconds,
    )
    register_tasks(app)
    return app


_APPS: dict[tuple[str, int], Celery] = {}


def celery_for(settings: Settings) -> Celery:
    """A client app for these settings' broker (producers: the CLI, the scheduler, tests)."""
    key = (settings.celery_broker_url, settings.job_timeout_seconds)
    if key not in _APPS:
        _APPS[key] = make_celery(settings)
    return _APPS[key]


app = make_celery(get_settings())  # the worker's app: ``thalamus worker`` reads settings from the env
