"""API keys: create (shown once), list, revoke, and check a presented key.

A key reads ``thk_<key_id>_<secret>``: ``key_id`` (12 hex characters) finds the row, ``secret`` is 32
random bytes (``secrets.token_urlsafe``) of which only the sha256 is stored. A 256-bit random secret
cannot be guessed, so a fast hash is enough (a password KDF protects low-entropy secrets); the stored
hash is compared in constant time (``hmac.compare_digest``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.schema import ApiKey, utcnow

SCOPES: tuple[str, ...] = ("route", "feedback", "admin")
"""``route``: routing and completions; ``feedback``: post feedback for the app's own requests; ``admin``: all."""

PREFIX = "thk_"
_KEY = re.compile(r"^thk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class KeyProblem(ValueError):
    """A key cannot be created or revoked as asked (one sentence)."""


@dataclass(frozen=True)
class KeyInfo:
    """A stored key without its secret."""

    key_id: str
    app: str
    scopes: tuple[str, ...]
    rate_limit: str | None
    created_at: dt.datetime
    created_by: str | None
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    secret_sha256: str

    @classmethod
    def of(cls, row: ApiKey) -> KeyInfo:
        return cls(row.key_id, row.app, tuple(row.scopes or ()), row.rate_limit, as_utc(row.created_at),
                   row.created_by, None if row.expires_at is None else as_utc(row.expires_at),
                   None if row.revoked_at is None else as_utc(row.revoked_at), row.secret_sha256)

    def state(self, now: dt.datetime | None = None) -> str:
        """``active``, ``revoked`` or ``expired``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return "expired"
        return "active"

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_sha256, _digest(secret))


@dataclass(frozen=True)
class NewKey:
    """A key just created: ``key`` is its only appearance in clear."""

    key: str
    info: KeyInfo


def as_utc(moment: dt.datetime) -> dt.datetime:
    """SQLite returns naive datetimes; every stored time is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def split_key(key: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    match = _KEY.match(key)
    return None if match is None else (match.group(1), match.group(2))


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(s.strip() for s in scopes if s.strip()))
    if not chosen:
        raise KeyProblem(f"a key needs at least one scope: {', '.join(SCOPES)}")
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown:
        raise KeyProblem(f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}")
    return chosen


def check_rate_limit(limit: str | None) -> str | None:
    """A limit in the ``limits`` notation ("10/second", "600/minute;10000/day"), or KeyProblem."""
    if limit is None or not limit.strip():
        return None
    from limits import parse_many

    try:
        parse_many(limit)
    except ValueError:
        raise KeyProblem(f"rate limit {limit!r} is not of the form N/second, N/minute, N/hour or N/day "
                        "(several joined by ';')") from None
    return limit.strip()


def create_key(session: Session, app: str, scopes: Iterable[str], *, expires_at: dt.datetime | None = None,
               rate_limit: str | None = None, created_by: str | None = None) -> NewKey:
    """Store a new key for ``app``; the returned ``key`` is never stored or shown again."""
    app = app.strip()
    if not app or len(app) > 200:
        raise KeyProblem("a key needs an application name of 1 to 200 characters")
    chosen = check_scopes(scopes)
    if expires_at is not None and as_utc(expires_at) <= utcnow():
        raise KeyProblem(f"the expiry {expires_at.isoformat()} is in the past")
    limit = check_rate_limit(rate_limit)
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    row = ApiKey(key_id=key_id, secret_sha256=_digest(secret), app=app, scopes=list(chosen), rate_limit=limit,
                 created_at=utcnow(), created_by=created_by, expires_at=expires_at)
    session.add(row)
    session.flush()
    return NewKey(f"{PREFIX}{key_id}_{secret}", KeyInfo.of(row))


def list_keys(session: Session, app: str | None = None) -> list[KeyInfo]:
    query = select(ApiKey).order_by(ApiKey.id)
    if app is not None:
        query = query.where(ApiKey.app == app)
    return [KeyInfo.of(row) for row in session.scalars(query)]


def find_key(session: Session, key_id: str) -> KeyInfo | None:
    row = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).first()
    return None if row is None else KeyInfo.of(row)


def revoke_key(session: Session, key_id: str) -> KeyInfo:
    """Revoke a key by its id (the part after ``thk_``, as ``keys list`` shows it); a full key works too."""
    parts = split_key(key_id.strip())
    key_id = parts[0] if parts is not None else key_id.strip()
    row = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).first()
    if row is None:
        raise KeyProblem(f"no key has the id {key_id!r}; `thalamus admin keys list` shows them")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return KeyInfo.of(row)
