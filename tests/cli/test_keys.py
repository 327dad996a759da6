"""``thalamus admin keys``: create (shown once, stored hashed), list, revoke; bad input exits 2, writes nothing."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from sqlalchemy import select

from cli.keys import parse_expiry
from cli.main import main
from store.db import session_scope
from store.keys import split_key
from store.schema import ApiKey
from tests.helpers import row_counts


def test_create_list_revoke(sqlite_settings, capsys) -> None:  # type: ignore[no-untyped-def]
    main(["admin", "keys", "create", "--app", "shop", "--scope", "route,feedback", "--expires", "30d",
          "--rate-limit", "10/second"])
    out, err = capsys.readouterr()
    key = out.strip()
    key_id, secret = split_key(key)  # type: ignore[misc]
    assert "not shown again" in err and key not in err
    with session_scope(sqlite_settings) as session:
        row = session.scalars(select(ApiKey)).one()
        assert (row.key_id, row.app, row.scopes, row.rate_limit) == (key_id, "shop", ["route", "feedback"], "10/second")
        assert row.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest() and secret not in repr(vars(row))
        expires = row.expires_at.replace(tzinfo=dt.UTC)
    assert dt.timedelta(days=29) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(days=30)

    main(["admin", "keys", "list"])
    listing = capsys.readouterr().out
    assert key_id in listing and "active" in listing and secret not in listing
    main(["admin", "keys", "revoke", key_id])
    assert capsys.readouterr().out == f"key {key_id} of app 'shop' revoked\n"
    main(["admin", "keys", "list", "--app", "shop"])
    assert "revoked" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["create", "--app", "x", "--scope", "root"], "unknown scope 'root'"),
    (["create", "--app", "x", "--scope", ","], "at least one scope"),
    (["create", "--app", "x", "--scope", "route", "--expires", "soon"], "neither a duration"),
    (["create", "--app", "x", "--scope", "route", "--expires", "2001-01-01"], "in the past"),
    (["create", "--app", "x", "--scope", "route", "--rate-limit", "lots"], "is not of the form"),
    (["create", "--app", " ", "--scope", "route"], "application name"),
    (["revoke", "abcdef123456"], "no key has the id"),
])
def test_bad_input_exits_2_and_writes_nothing(sqlite_settings, capsys, args, message) -> None:  # type: ignore[no-untyped-def]
    before = row_counts(sqlite_settings)
    with pytest.raises(SystemExit) as exit_info:
        main(["admin", "keys", *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert row_counts(sqlite_settings) == before


def test_parse_expiry() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert parse_expiry("12h", now) == now + dt.timedelta(hours=12)
    assert parse_expiry("2w", now) == now + dt.timedelta(weeks=2)
    assert parse_expiry("2027-03-04", now) == dt.datetime(2027, 3, 4, tzinfo=dt.UTC)
    assert parse_expiry(None, now) is None
