"""The typed schema of expert attributes, checked on every registration path.

The known attributes are the ones routing reads (``router.constraints.ATTRIBUTES``) plus
``license``; a value that the constraint matrix would refuse is refused here, at registration,
so that no router trained over the library can fail to load in a daemon because of it. Any other
attribute is kept as given, as long as it is plain JSON (finite numbers).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import numbers
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError, model_validator

from experts.local import ExpertError


def _number(value: Any, *, positive: bool) -> int | float:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"must be a number, not {value!r}") from None
    if not isinstance(value, numbers.Real):
        raise ValueError(f"must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"must be a finite number, not {value!r}")
    if positive and number <= 0:
        raise ValueError(f"must be a number > 0, not {value!r}")
    if number < 0:
        raise ValueError(f"must be a number >= 0, not {value!r}")
    return int(value) if isinstance(value, numbers.Integral) else number


def _positive(value: Any) -> int | float:
    return _number(value, positive=True)


def _non_negative(value: Any) -> int | float:
    return _number(value, positive=False)


def _iso_date(value: Any) -> str:
    """An ISO 8601 date (``YYYY-MM-DD``; a datetime is cut to its date), stored as ``YYYY-MM-DD``."""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        text = value.strip()
        for parse in (dt.date.fromisoformat, lambda s: dt.datetime.fromisoformat(s).date()):
            try:
                return parse(text).isoformat()
            except ValueError:
                continue
    raise ValueError(f"must be an ISO date (YYYY-MM-DD), not {value!r}")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, not {value!r}")
    return value.strip()


def _base_url(value: Any) -> str:
    from urllib.parse import urlsplit

    text = _text(value).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL such as https://api.example.com/v1, not {value!r}")
    if parts.username or parts.password:
        raise ValueError("must not carry a credential; name it with api_key_env or api_key_file")
    return text


def _env_name(value: Any) -> str:
    text = _text(value)
    if not text.replace("_", "").isalnum() or text[0].isdigit():
        raise ValueError(f"must be the name of an environment variable, not {value!r}")
    return text


CREDENTIAL_NAMES = frozenset({"api_key", "apikey", "key", "token", "secret", "password", "authorization",
                              "bearer", "access_token"})
"""Attribute names that would hold a credential in clear: refused (the database is not a secret store)."""

PositiveNumber = Annotated[int | float, PlainValidator(_positive)]
NonNegativeNumber = Annotated[int | float, PlainValidator(_non_negative)]
IsoDate = Annotated[str, PlainValidator(_iso_date)]
Text = Annotated[str, PlainValidator(_text)]


class ExpertAttributes(BaseModel):
    """Known attributes are typed (None means unknown); others must be plain JSON values."""

    model_config = ConfigDict(extra="allow")

    params: PositiveNumber | None = None
    cost: NonNegativeNumber | None = None
    latency_ms: PositiveNumber | None = None
    release_date: IsoDate | None = None
    license: Text | None = None
    max_loss: PositiveNumber | None = None  # the largest loss accepted for this expert (store/loss_bounds.py)
    # What an upstream charges per 1000 tokens, in any one currency used for every expert: `thalamus experts
    # usage --apply` turns them and the observed token counts into ``cost`` (mean cost of an answer).
    price_per_1k_prompt_tokens: NonNegativeNumber | None = None
    price_per_1k_completion_tokens: NonNegativeNumber | None = None
    # An OpenAI-compatible endpoint the gateway forwards to (daemon/gateway.py): its base URL, the model name
    # it knows the expert by (default: the expert's name), where its credential is read from (an environment
    # variable or a file of the daemon's machine, never the database), and its own timeout.
    base_url: Annotated[str, PlainValidator(_base_url)] | None = None
    model: Text | None = None
    api_key_env: Annotated[str, PlainValidator(_env_name)] | None = None
    api_key_file: Text | None = None
    timeout_seconds: PositiveNumber | None = None

    @model_validator(mode="after")
    def _plain_json_extras(self) -> ExpertAttributes:
        for key, value in (self.model_extra or {}).items():
            if key.strip().lower().replace("-", "_") in CREDENTIAL_NAMES:
                raise ValueError(f"attribute {key} would store a credential in clear; put it in an environment "
                                 "variable or a file and name that with api_key_env or api_key_file")
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise ValueError(f"attribute {key} must be a plain JSON value with finite numbers, "
                                 f"not {value!r}") from None
        return self


def validate_attributes(name: str, attributes: Any) -> dict[str, Any]:
    """The attributes normalised (numbers as numbers, dates as ``YYYY-MM-DD``), or ExpertError in one sentence."""
    if not isinstance(attributes, Mapping):
        raise ExpertError(f"expert {name!r}: attributes must be a mapping")
    if any(not isinstance(key, str) or not key.strip() for key in attributes):
        raise ExpertError(f"expert {name!r}: attribute names must be non-empty strings")
    try:
        model = ExpertAttributes.model_validate(dict(attributes))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
            key = ".".join(str(part) for part in error.get("loc", ()))
            problems.append(f"attribute {key} {message}" if key else message)
        raise ExpertError(f"expert {name!r}: {'; '.join(problems)}") from None
    return {key: value for key, value in model.model_dump().items() if key in attributes}
