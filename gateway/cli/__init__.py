"""`peel`: the command line. Local commands use the settings and the store; rule commands go
through the admin API so an operator can run them from anywhere.

Exit codes: 0 success, 2 usage error (argparse), 1 failure with one line `peel: <reason>` on stderr
(or nothing, when the reader of the output went away: `peel config show 3 | head`).

One module per command group (`local`, `rules`, `config`), each with a `register()` that the
registry in `parser.py` calls; `main` only parses, runs the chosen handler and maps errors.
"""

from __future__ import annotations

import argparse
import os
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
        sys.stdout.flush()  # a reader that went away is found here, not at the interpreter's exit
        return code
    except PeelError as exc:
        print(error_line(exc), file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of the output stopped reading (`peel config show 3 | head`): nothing more to
        # say. Python flushes stdout again at exit and would fail the same way (a traceback), so
        # what is left of it goes to /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
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
