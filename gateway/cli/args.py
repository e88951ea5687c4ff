"""Building blocks every command group uses to declare its commands: sub-parsers that accept the
global options, the options of a write, and argument types whose errors are usage errors."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeAlias

from gateway.cli.client import DEFAULT_ADMIN_URL

Handler = Callable[[argparse.Namespace], int]
#: A usage check argparse cannot express: the problem as text, or None when the arguments are fine.
Check = Callable[[argparse.Namespace], str | None]
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def worker_count(text: str) -> int:
    """`--workers`: a whole number of at least 1, or `auto` (one per core this process may use)."""
    from gateway.core.settings import available_cores

    if text == "auto":
        return available_cores()
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1, nor auto")
    return int(text)


def reason_arg(text: str) -> str:
    """A reason for a config version: no control characters (the admin API refuses them too)."""
    from routes.changes import check_reason
    from routes.errors import RuleError

    try:
        return check_reason(text)
    except RuleError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def header_arg(text: str) -> tuple[str, str]:
    """`'Name: value'` as (name, value), both stripped."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not 'Name: value'")
    return name.strip(), value.strip()


def cookie_arg(text: str) -> tuple[str, str]:
    """`name=value` as (name, value), the name stripped."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name.strip(), value


def global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The global options, accepted before or after the command (SUPPRESS keeps the top's value)."""
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    g = parser.add_argument_group("global options")
    g.add_argument("--config", metavar="FILE", default=default(None),
                   help="settings file (default: $PEEL_CONFIG)")
    g.add_argument("--admin", metavar="URL", default=default(None),
                   help=f"admin API (default: $PEEL_ADMIN_URL, the settings' admin listener, "
                        f"or {DEFAULT_ADMIN_URL})")
    g.add_argument("--token", default=default(None), help="admin API token (default: $PEEL_ADMIN_TOKEN)")
    g.add_argument("--cacert", metavar="FILE", default=default(None),
                   help="CA certificate(s) that signed an https admin listener's certificate "
                        "(default: $PEEL_ADMIN_CA, else the system's trust store)")
    g.add_argument("--json", action="store_true", default=default(False), help="print JSON")


def write_options(parser: argparse.ArgumentParser) -> None:
    """The options of a command that makes a new config version."""
    parser.add_argument("--reason", type=reason_arg, help="why: recorded with the new config version")
    parser.add_argument("--if-match", type=int, metavar="VERSION",
                        help="refuse unless VERSION is still the latest config version")


def add_command(group: Commands, name: str, handler: Handler | None, help_text: str, *,
                check: Check | None = None) -> argparse.ArgumentParser:
    """A command (or a group of actions when `handler` is None) that takes the global options.

    `check`, when given, runs after parsing; a problem it reports is a usage error (exit 2).
    """
    sub = group.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
    global_options(sub, top=False)
    if handler is not None:
        sub.set_defaults(handler=handler)
    if check is not None:
        sub.set_defaults(usage_check=check)
    return sub


def actions(command: argparse.ArgumentParser) -> Commands:
    """The actions of a command group, such as `list` and `set` under `routes`."""
    return command.add_subparsers(dest="action", required=True, metavar="ACTION")
