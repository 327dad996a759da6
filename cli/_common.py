"""What every verb module shares: the verb declaration, bad-input errors, argument types, output helpers.

A verb is a typed function ``func(settings, ...)`` plus the argparse arguments that fill its
parameters (each argument's ``dest`` is a parameter name). ``cli.main`` builds the parser from these
declarations and checks that they match the function's signature, so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Progress = Callable[[float, str], None]


class CliError(Exception):
    """A user mistake: printed as one sentence, exit code 2, nothing written."""


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call; its ``dest`` must name a parameter of the verb's function."""

    flags: tuple[str, ...]
    options: Mapping[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Verb:
    """A command: its function, the arguments that fill its parameters, and how its result is shown.

    ``show`` prints the result for a person; ``fails`` says when the result means exit code 1 (a job
    that failed); ``cli_kwargs`` are parameters the command line always passes (progress bars on);
    ``epilog`` writes text shown after the verb's help, when the parser is built (so it reads tables
    such as the job registry as they are then). The help line is the first line of the function's docstring.
    """

    name: str
    func: Callable[..., Any]
    args: tuple[Arg, ...] = ()
    show: Callable[[Any], None] | None = None
    fails: Callable[[Any], bool] | None = None
    cli_kwargs: Mapping[str, Any] = field(default_factory=dict)
    epilog: Callable[[], str] | None = None

    @property
    def help(self) -> str:
        doc = inspect.getdoc(self.func)
        if not doc:
            return self.name
        line = doc.splitlines()[0].rstrip(".")
        return line[0].lower() + line[1:] if line[1:2].islower() else line


def verb(name: str, func: Callable[..., Any], *args: Arg, show: Callable[[Any], None] | None = None,
         fails: Callable[[Any], bool] | None = None, cli: Mapping[str, Any] | None = None,
         epilog: Callable[[], str] | None = None) -> Verb:
    return Verb(name, func, args, show, fails, dict(cli or {}), epilog)


@dataclass(frozen=True)
class Group:
    """A verb group (``thalamus admin ...``); ``name=None`` puts its verbs at the top level."""

    name: str | None
    help: str
    verbs: tuple[Verb, ...]


# --- argument types --------------------------------------------------------------------------

def positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be a positive integer")
    return value


def unit_share(raw: str) -> float:
    """A share in (0, 1]."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
    if not math.isfinite(value) or not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a share in (0, 1]")
    return value


def parse_pair(pair: str) -> tuple[str, Any]:
    """``KEY=VALUE``; a number becomes an int (written without ``.``/``e``) or a float, the rest stays a string."""
    key, sep, raw = pair.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{pair!r} is not of the form KEY=VALUE")
    try:
        number = float(raw)
    except ValueError:
        return key.strip(), raw
    if not math.isfinite(number):
        raise ValueError(f"{key}={raw} is not a finite number")
    whole = number.is_integer() and "." not in raw and "e" not in raw.lower()
    return key.strip(), int(number) if whole else number


class KeyValues(argparse.Action):
    """A repeatable ``--opt KEY=VALUE`` collected into one dict (see :func:`parse_pair`)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        try:
            key, value = parse_pair(str(values))
        except ValueError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        setattr(namespace, self.dest, {**(getattr(namespace, self.dest) or {}), key: value})


# --- output ----------------------------------------------------------------------------------

def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, sort_keys=False))


def say(message: str) -> None:
    """A progress line on stderr (stdout stays the verb's result)."""
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def percent_bar(desc: str, enabled: bool = True) -> Iterator[Progress]:
    """A 0–100 % progress bar on stderr; yields the ``progress(fraction, message)`` callback jobs take."""
    from tqdm import tqdm

    with tqdm(total=100, desc=desc, unit="%", file=sys.stderr, disable=not enabled) as bar:
        def progress(fraction: float, message: str) -> None:
            bar.n = round(100 * fraction)
            bar.set_postfix_str(message[:60])
            bar.refresh()

        yield progress
