"""API-key authentication, scopes and per-key rate limits: one app-level dependency, ``authenticate``.

Every endpoint needs a key (``Authorization: Bearer thk_...``) except ``/healthz``, the OpenAPI
document and, while ``THALAMUS_METRICS_PUBLIC=on``, ``/metrics``. The scope an endpoint needs comes
from its path (``required_scope``): ``/v1/admin/...`` needs ``admin``, ``/v1/feedback`` needs
``feedback``, ``/v1/status`` any valid key, everything else ``route`` (a new router is closed by
default). The caller's application id is the key's ``app``. Keys are cached for
``THALAMUS_AUTH_CACHE_SECONDS``; during a database outage the last state read keeps serving.

Failures are 401 (no key, not valid, revoked, expired) or 403 (scope), one sentence, counted in
``thalamus_auth_failures{reason}``; the key itself is never logged, only its public ``key_id``.
With ``THALAMUS_AUTH=off`` (loopback only: ``check_binding``) every caller is an anonymous admin
and the application id comes from the request body as before.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import threading
import time
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from daemon.errors import DATABASE_ERRORS
from daemon.metrics import Metrics
from store.keys import KeyInfo, find_key, split_key
from store.schema import utcnow
from store.settings import Settings

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
ANY_SCOPE = "any"


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: the key's app and scopes, or (auth off) an anonymous caller with every scope."""

    app: str | None
    scopes: tuple[str, ...]
    key_id: str | None = None

    @property
    def authenticated(self) -> bool:
        return self.key_id is not None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def allows(self, scope: str) -> bool:
        return scope == ANY_SCOPE or self.is_admin or scope in self.scopes

    def app_or(self, given: str | None) -> str | None:
        """The application id to record: the key's, or (auth off) the one the request body gave."""
        return self.app if self.authenticated else given

    @property
    def actor(self) -> str:
        """Who the activation/audit log names for an admin action."""
        return f"app:{self.app}" if self.authenticated else "admin"


ANONYMOUS = Principal(app=None, scopes=("admin",))


def required_scope(path: str, settings: Settings) -> str | None:
    """The scope a path needs; None for the open ones."""
    if path in OPEN_PATHS or (path == "/metrics" and settings.metrics_public):
        return None
    if path == "/metrics" or path.startswith("/v1/admin/"):
        return "admin"
    if path == "/v1/feedback":
        return "feedback"
    if path == "/v1/status":
        return ANY_SCOPE
    return "route"


def document_open_paths(schema: dict[str, Any], settings: Settings) -> None:
    """The served document: no key, 401, 403 or 429 on the endpoints that need no key."""
    for path, operations in schema.get("paths", {}).items():
        if required_scope(path, settings) is not None:
            continue
        for operation in operations.values():
            operation.pop("security", None)
            for status in ("401", "403", "429"):
                operation.get("responses", {}).pop(status, None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(settings: Settings) -> None:
    """Refuse (ValueError, one sentence) to serve without authentication on a non-loopback address."""
    if not settings.auth and not is_loopback(settings.host):
        raise ValueError(f"THALAMUS_AUTH=off is for loopback-only development, but THALAMUS_HOST is "
                         f"{settings.host}; turn auth on (create keys with `thalamus admin keys create`) "
                         "or bind 127.0.0.1")


class KeyCache:
    """Key rows by ``key_id``, re-read from the database at most every ``ttl`` seconds.

    A key unknown to the database is cached as None too, so a flood of wrong keys costs one read per
    key id per ``ttl``. When the database cannot be read, a stale entry keeps serving.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings, self.ttl = settings, settings.auth_cache_seconds
        self._entries: dict[str, tuple[float, KeyInfo | None]] = {}
        self._lock = threading.Lock()

    def cached(self, key_id: str) -> tuple[bool, KeyInfo | None]:
        """(fresh, info): fresh is False when the entry is missing or older than ``ttl``."""
        with self._lock:
            entry = self._entries.get(key_id)
        if entry is None:
            return False, None
        return time.monotonic() - entry[0] < self.ttl, entry[1]

    def load(self, key_id: str) -> KeyInfo | None:
        """Read the key from the database (blocking); on an outage fall back to a stale entry."""
        from store.db import session_scope

        try:
            with session_scope(self.settings) as session:
                info = find_key(session, key_id)
        except DATABASE_ERRORS:
            with self._lock:
                entry = self._entries.get(key_id)
            if entry is None:
                raise
            log.warning("database unreachable: key %s checked against its state as last read", key_id)
            return entry[1]
        with self._lock:
            if len(self._entries) > 100_000:  # bounded whatever callers send
                self._entries.clear()
            self._entries[key_id] = (time.monotonic(), info)
        return info


class RateLimits:
    """Per-key limits with the ``limits`` library (moving window), in memory or in a shared store."""

    def __init__(self, settings: Settings) -> None:
        from limits.storage import storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        self.default = settings.rate_limit
        self.limiter = MovingWindowRateLimiter(storage_from_string(settings.rate_limit_storage))
        self._parsed: dict[str, list[object]] = {}

    def retry_after(self, key_id: str, limit: str | None) -> int | None:
        """Count one request; None when allowed, else the whole seconds until the window frees a slot."""
        from limits import RateLimitItem, parse_many

        text = limit or self.default
        if not text:
            return None
        items = self._parsed.get(text)
        if items is None:
            items = self._parsed[text] = list(parse_many(text))
        for item in items:
            assert isinstance(item, RateLimitItem)
            if not self.limiter.hit(item, key_id):
                reset = self.limiter.get_window_stats(item, key_id).reset_time
                return max(1, math.ceil(reset - time.time()))
        return None


_bearer = HTTPBearer(auto_error=False, description="an API key from `thalamus admin keys create`")


def _refuse(metrics: Metrics, status: int, reason: str, detail: str) -> HTTPException:
    metrics.auth_failures.labels(reason).inc()
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return HTTPException(status, detail, headers=headers)


async def authenticate(request: Request,
                       credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    """The caller of this request, checked against the scope its path needs (401/403/429 otherwise)."""
    state = request.app.state
    settings: Settings = state.settings
    scope = required_scope(request.url.path, settings)
    if not settings.auth:
        return ANONYMOUS
    if scope is None:  # an open endpoint: whatever key is sent is not looked at
        return Principal(None, ())
    metrics: Metrics = state.metrics
    if credentials is None:
        raise _refuse(metrics, 401, "missing", "this endpoint needs an API key: send 'Authorization: Bearer <key>' "
                                               "(an admin creates one with `thalamus admin keys create`)")
    parts = split_key(credentials.credentials.strip())
    if parts is None:
        raise _refuse(metrics, 401, "malformed", "the API key is not valid")
    key_id, secret = parts
    cache: KeyCache = state.keys
    fresh, info = cache.cached(key_id)
    if not fresh:
        info = await run_in_threadpool(cache.load, key_id)
    if info is None:
        raise _refuse(metrics, 401, "unknown", "the API key is not valid")
    if not info.matches(secret):
        raise _refuse(metrics, 401, "wrong", "the API key is not valid")
    status = info.state(utcnow())
    if status == "revoked":
        raise _refuse(metrics, 401, "revoked", f"the API key {key_id} was revoked")
    if status == "expired":
        assert info.expires_at is not None
        raise _refuse(metrics, 401, "expired", f"the API key {key_id} expired at {info.expires_at.isoformat()}")
    principal = Principal(app=info.app, scopes=info.scopes, key_id=key_id)
    if scope is not None and not principal.allows(scope):
        raise _refuse(metrics, 403, "scope", f"the API key {key_id} (app {info.app!r}) lacks the {scope!r} scope "
                                             "this endpoint needs")
    limits: RateLimits = state.rate_limits
    wait = limits.retry_after(key_id, info.rate_limit)
    if wait is not None:
        metrics.rate_limited.inc()
        raise HTTPException(429, f"the API key {key_id} exceeded its rate limit "
                                 f"({info.rate_limit or limits.default}); retry in {wait} s",
                            headers={"Retry-After": str(wait)})
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]
"""What an endpoint annotates a parameter with to learn its caller (resolved once per request)."""
