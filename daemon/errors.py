"""Every error handler of the HTTP API, installed by ``install_error_handlers``.

- Validation errors: one readable sentence in ``detail`` (plus the structured errors); 400 for
  malformed JSON, 422 otherwise.
- Database outages (and a spool that cannot write): 503 with one sentence and ``Retry-After``.
  Routing needs no database (the router is in memory and answered requests are spooled), so an
  outage makes only the endpoints that read or write the database answer 503.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from daemon.spool import SpoolError
from store.text import printable

RETRY_AFTER_SECONDS = 5
DATABASE_ERRORS: tuple[type[BaseException], ...] = (sa_exc.DBAPIError, sa_exc.TimeoutError, sa_exc.DisconnectionError)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    for error in (*DATABASE_ERRORS, SpoolError):
        app.add_exception_handler(error, unavailable_response)


def database_unavailable(exc: BaseException) -> bool:
    """True for errors of the connection (refused, lost, pool timed out), not of the data."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError,
                            sa_exc.DisconnectionError))


async def unavailable_response(_: Request, exc: Exception) -> JSONResponse:
    """503 with one sentence and ``Retry-After`` when the database (or the spool) cannot be reached."""
    if isinstance(exc, SpoolError):
        detail = "the request could not be made durable on this daemon's disk, so it was not answered; retry shortly"
    elif database_unavailable(exc):
        detail = "the database is unreachable right now; retry in a few seconds"
    else:
        raise exc  # a data error: Starlette's server-error handler answers 500 as before
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    """One readable sentence in ``detail`` (plus the structured errors); 400 for malformed JSON."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    parts, malformed = [], False
    for error in errors:
        loc = [printable(p) for p in error.get("loc", ()) if p != "body"]
        message = printable(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            malformed = True
            message = f"malformed JSON: {error.get('ctx', {}).get('error', message)}"
            loc = []
        elif error.get("type") == "missing" and not loc:
            message = "a JSON object body is required"
        parts.append(f"{'.'.join(loc)}: {message}" if loc else message)
    brief = [{"type": str(e.get("type")), "loc": [printable(p) for p in e.get("loc", ())],
              "msg": printable(e.get("msg", ""))} for e in errors]
    body = {"detail": "; ".join(parts) or "invalid request", "errors": brief}
    return JSONResponse(body, status_code=400 if malformed else 422)
