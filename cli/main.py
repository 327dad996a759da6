"""The ``thalamus`` command: the parser, built from the verb groups, and the error handling.

Each module of this package declares a :class:`cli._common.Group` of typed verb functions; this
module turns them into argparse subcommands, calls the chosen function with ``get_settings()``
and the parsed arguments, and prints its result. Bad input ends with one sentence on stderr and
exit code 2, and changes nothing.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from cli import admin, bench, db, demo, experts, ingest, jobs, keys, services
from cli._common import CliError, Group, Verb
from store.settings import get_settings, settings_problem

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1

GROUPS: tuple[Group, ...] = (services.GROUP, db.GROUP, experts.GROUP, ingest.GROUP, jobs.GROUP, admin.GROUP,
                             demo.GROUP, bench.GROUP)
SUBGROUPS: dict[str, tuple[Group, ...]] = {"admin": (keys.GROUP,)}
"""Groups nested in a group: ``thalamus admin keys create``."""

DESCRIPTION = """\
thalamus is a continual-learning routing daemon: it sends every prompt to the expert model that
will do it best under the caller's constraints (size, cost, latency, recency), learns from its
own traffic and from application feedback, and hot-swaps a better router without dropping a
request."""

EPILOG = """\
Settings come from THALAMUS_* environment variables (THALAMUS_HOME, THALAMUS_DATABASE_URL,
THALAMUS_BROKER_URL, ...; see the README). `thalamus COMMAND --help` describes each command."""


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end like every other bad input: one sentence on stderr, exit code 2 (``-h`` shows usage).

    Subparsers are made with the parent's class, so every verb gets this too.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=28)


def _add_verb(commands: argparse._SubParsersAction[_Parser], verb: Verb) -> None:
    """One subcommand; every argument fills a parameter of the verb's function, checked here."""
    parser = commands.add_parser(verb.name, help=verb.help, description=inspect.getdoc(verb.func),
                                 epilog=verb.epilog() if verb.epilog else None, formatter_class=_formatter)
    dests = tuple(parser.add_argument(*a.flags, **a.options).dest for a in verb.args)
    params = inspect.signature(verb.func).parameters
    names = list(params)
    if not names or names[0] != "settings":
        raise TypeError(f"verb {verb.name}: {verb.func.__qualname__} must take settings first")
    given = set(dests) | set(verb.cli_kwargs)
    unknown = given - set(names)
    missing = {n for n, p in params.items() if n != "settings" and p.default is inspect.Parameter.empty} - given
    if unknown or missing:
        raise TypeError(f"verb {verb.name}: arguments {sorted(unknown)} are not parameters of "
                        f"{verb.func.__qualname__}, and parameters {sorted(missing)} have no argument")
    parser.set_defaults(_verb=verb, _dests=dests)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="thalamus", description=DESCRIPTION, epilog=EPILOG, formatter_class=_formatter)
    commands = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        if group.name is None:
            for verb in group.verbs:
                _add_verb(commands, verb)
            continue
        sub = commands.add_parser(group.name, help=group.help, description=group.help, formatter_class=_formatter)
        group_commands = sub.add_subparsers(title="commands", dest=f"{group.name}_command", required=True,
                                            metavar="COMMAND")
        for verb in group.verbs:
            _add_verb(group_commands, verb)
        for nested in SUBGROUPS.get(group.name, ()):
            assert nested.name is not None, "a nested group has a name"
            inner = group_commands.add_parser(nested.name, help=nested.help, description=nested.help,
                                              formatter_class=_formatter)
            inner_commands = inner.add_subparsers(title="commands", dest=f"{group.name}_{nested.name}_command",
                                                  required=True, metavar="COMMAND")
            for verb in nested.verbs:
                _add_verb(inner_commands, verb)
    return parser


def run(args: argparse.Namespace) -> int:
    """Call the parsed verb with the process settings, show its result; returns the exit status."""
    verb: Verb = args._verb
    kwargs = {dest: getattr(args, dest) for dest in args._dests}
    result = verb.func(get_settings(), **kwargs, **verb.cli_kwargs)
    if verb.show is not None:
        verb.show(result)
    return EXIT_FAILED if verb.fails is not None and verb.fails(result) else 0


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    from jobs.errors import JobInputError, JobLocked

    try:
        code = run(args)
    except ValidationError as exc:  # a THALAMUS_* setting is invalid: every verb reads them first
        if exc.title != "Settings":
            raise
        print(f"thalamus: error: {settings_problem(exc)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except (CliError, JobInputError, JobLocked, ValueError, LookupError) as exc:
        print(f"thalamus: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
