"""API keys (``thalamus admin keys ...``): create one (shown once), list them, revoke one."""

from __future__ import annotations

import datetime as dt
import re
import sys
from dataclasses import dataclass

from cli._common import Group, arg, verb
from store.keys import KeyInfo
from store.settings import Settings

_DURATION = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_expiry(raw: str | None, now: dt.datetime | None = None) -> dt.datetime | None:
    """``30d``, ``12h``, ``90m``, ``2w`` from now, or an ISO date/time (UTC unless it says otherwise)."""
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    now = now or dt.datetime.now(dt.UTC)
    match = _DURATION.match(text.lower())
    if match:
        return now + dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--expires {raw!r} is neither a duration (30d, 12h, 90m, 2w) nor an ISO date") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class CreatedKey:
    key: str
    info: KeyInfo


def create(settings: Settings, *, app: str, scope: str, expires: str | None = None, rate_limit: str | None = None,
           actor: str = "admin") -> CreatedKey:
    """Create an API key for an application; the key is printed once and stored only hashed."""
    from store.db import session_scope
    from store.keys import create_key

    expires_at = parse_expiry(expires)
    with session_scope(settings) as session:
        new = create_key(session, app, scope.split(","), expires_at=expires_at, rate_limit=rate_limit,
                         created_by=actor)
    return CreatedKey(new.key, new.info)


def list_keys(settings: Settings, *, app: str | None = None) -> list[KeyInfo]:
    """List API keys (ids, apps, scopes, state), never their secrets."""
    from store.db import session_scope
    from store.keys import list_keys as stored

    with session_scope(settings) as session:
        return stored(session, app)


def revoke(settings: Settings, key_id: str) -> KeyInfo:
    """Revoke an API key by its id; daemons refuse it within THALAMUS_AUTH_CACHE_SECONDS."""
    from store.db import session_scope
    from store.keys import revoke_key

    with session_scope(settings) as session:
        return revoke_key(session, key_id)


def _show_created(created: CreatedKey) -> None:
    info = created.info
    expiry = f", expires {info.expires_at:%Y-%m-%d %H:%M} UTC" if info.expires_at else ""
    print(created.key)
    print(f"key {info.key_id} for app {info.app!r}, scopes {','.join(info.scopes)}{expiry}; "
          "store it now: it is not shown again", file=sys.stderr)


def _show_list(keys: list[KeyInfo]) -> None:
    print(f"{'id':12}  {'app':24} {'scopes':22} {'state':8} {'rate limit':16} {'created':16}  expires")
    for k in keys:
        expires = "-" if k.expires_at is None else f"{k.expires_at:%Y-%m-%d %H:%M}"
        print(f"{k.key_id:12}  {k.app[:24]:24} {','.join(k.scopes)[:22]:22} {k.state():8} {k.rate_limit or '-':16} "
              f"{k.created_at:%Y-%m-%d %H:%M}  {expires}")


GROUP = Group("keys", "API keys (create, list, revoke)", (
    verb("create", create,
         arg("--app", required=True, help="the application the key identifies (its requests and feedback)"),
         arg("--scope", required=True, help="comma-separated: route, feedback, admin (admin implies all)"),
         arg("--expires", default=None, help="a duration (30d, 12h, 90m, 2w) or an ISO date/time"),
         arg("--rate-limit", default=None, help="e.g. 10/second or 600/minute;10000/day "
                                                "(default THALAMUS_RATE_LIMIT)"),
         arg("--actor", default="admin", help="who creates it (recorded with the key)"),
         show=_show_created),
    verb("list", list_keys, arg("--app", default=None, help="only this application's keys"), show=_show_list),
    verb("revoke", revoke, arg("key_id", metavar="KEY_ID", help="the id `keys list` shows"),
         show=lambda info: print(f"key {info.key_id} of app {info.app!r} revoked")),
))
