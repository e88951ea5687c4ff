"""The options of `peel demo`, apart from the demo itself: `peel serve` builds the whole command
line to parse its own arguments, and should not load the demo's runner (with urllib and its
children's code) to do it."""

from __future__ import annotations

import argparse

DEFAULT_DIR = "./.peel/demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `peel demo` (the CLI calls this on its `demo` subparser)."""
    parser.add_argument("--dir", default=DEFAULT_DIR,
                        help="where the demo keeps its settings, store and logs (default: %(default)s)")
    for option, default, what in (("--public-port", 8080, "the gateway's public listener"),
                                  ("--admin-port", 9901, "the admin API"),
                                  ("--monolith-port", 8081, "the sample monolith"),
                                  ("--orders-port", 8082, "the sample orders service")):
        parser.add_argument(option, type=int, default=default, metavar="PORT",
                            help=f"{what} on 127.0.0.1 (default: %(default)s)")
