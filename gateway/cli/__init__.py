"""`peel`: the command line. Local commands use the settings and the store; rule commands go
through the admin API so an operator can run them from anywhere.

Exit codes: 0 success, 2 usage error (argparse), 1 failure with one line `peel: <reason>` on stderr.

One module per command group (`local`, `rules`, `config`), each with a `register()` that the
registry in `parser.py` calls; `main` only parses, runs the chosen handler and maps errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.cli.output import error_line
from gateway.cli.parser import build_parser
from routes.errors import PeelError

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        code: int = args.handler(args)
        return code
    except PeelError as exc:
        print(error_line(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line's arguments (argparse exits with a usage error where they are wrong).

    Apart from `main` so that the parser, some 0.4 MiB of objects for all the commands, is freed
    before the command runs: `peel serve` runs for months.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    # Checks argparse cannot express (flags that exclude each other across groups) are usage errors.
    check = getattr(args, "usage_check", None)
    if check is not None:
        problem = check(args)
        if problem:
            parser.error(problem)
    return args
