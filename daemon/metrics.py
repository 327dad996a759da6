"""Prometheus metrics of one daemon, kept in their own registry (so tests can make fresh ones)."""

from __future__ import annotations

import threading

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "default_metrics"]

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    """Every metric the daemon exports; one instance per registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("thalamus_http_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.route_latency = Histogram("thalamus_route_latency_seconds", "Time to encode a prompt and choose an expert",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.route_batch_size = Histogram("thalamus_route_batch_size", "Prompts per micro-batched forward pass",
                                          buckets=(1, 2, 4, 8, 16, 32), registry=r)
        self.chosen = Counter("thalamus_chosen_expert", "Routing decisions by chosen expert", ["expert"], registry=r)
        self.swaps = Counter("thalamus_router_swaps", "Router bundles swapped in", registry=r)
        self.swap_failures = Counter("thalamus_router_swap_failures", "Router bundle loads that failed", registry=r)
        self.router_version = Gauge("thalamus_router_version", "Id of the router version being served", registry=r)
        self.router_fallback = Gauge("thalamus_router_fallback",
                                     "1 while an older version serves because the active one cannot be loaded",
                                     registry=r)
        self.queue_depth = Gauge("thalamus_log_queue_depth", "Request log rows waiting to be written", registry=r)
        self.log_dropped = Counter("thalamus_log_dropped", "Request log rows dropped (queue full or unwritable)",
                                   registry=r)
        self.log_written = Counter("thalamus_log_written", "Request log rows written", registry=r)
        spool_buckets = (0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01,
                         0.02, 0.05, 0.1)
        self.spool_commit = Histogram("thalamus_spool_commit_seconds",
                                      "Time to write and fdatasync one group commit of the request spool",
                                      buckets=spool_buckets, registry=r)
        self.spool_wait = Histogram("thalamus_spool_wait_seconds",
                                    "Time a routed request waits for its row to be durable in the spool",
                                    buckets=spool_buckets, registry=r)
        self.spool_batch = Histogram("thalamus_spool_commit_rows", "Request rows per spool group commit",
                                     buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.spool_depth = Gauge("thalamus_spool_depth", "Spooled request rows not yet in the database",
                                 registry=r)
        self.shadow_decisions = Counter("thalamus_shadow_decisions",
                                        "Shadow routings by outcome (routed and written, dropped on a full queue, "
                                        "failed)", ["outcome"], registry=r)
        self.log_failures = Counter("thalamus_log_batch_failures", "Request log batch writes that failed", registry=r)
        # API keys, rate limits and the OpenAI-compatible gateway (daemon/auth.py, daemon/gateway.py)
        self.auth_failures = Counter("thalamus_auth_failures",
                                     "Requests refused by authentication (401) or authorisation (403), by reason",
                                     ["reason"], registry=r)
        self.rate_limited = Counter("thalamus_rate_limited", "Requests refused with 429 by a key's rate limit",
                                    registry=r)
        self.upstream = Counter("thalamus_upstream_calls", "Calls to an expert by the gateway, by outcome",
                                ["expert", "outcome"], registry=r)
        self.upstream_latency = Histogram("thalamus_upstream_seconds", "Time an expert took to answer the gateway",
                                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                          registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


_default: Metrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> Metrics:
    """The process-wide metrics, shared by the holder, the log writer and the app unless told otherwise."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Metrics()
        return _default
