"""The `peel` argument parser, assembled from the command groups listed in `COMMAND_GROUPS`.

Adding a command group is one module with a `register(commands)` function and one line below;
the order of the list is the order `peel --help` shows the commands in.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from gateway.cli import (
    ca,
    config,
    doctor,
    graph,
    inventory,
    join,
    local,
    migrate,
    mtls,
    native,
    rules,
    shadow,
)
from gateway.cli.args import Commands, global_options

COMMAND_GROUPS: tuple[Callable[[Commands], None], ...] = (
    local.register,    # serve, db, token, demo
    rules.register,    # apply, export, services, routes, match
    config.register,   # config history, show, diff, rollback
    migrate.register,  # migrate start, shift, promote, retire, rollback, status, history; beta sign
    shadow.register,   # shadow report
    inventory.register,  # inventory (local: reads access logs; --routes asks the admin API)
    ca.register,       # ca init, rotate, status, issue (local: the CA's directory)
    join.register,     # join-token create, list, revoke (local); join (to the control plane)
    mtls.register,     # mtls readiness
    graph.register,    # graph (the dependency graph)
    doctor.register,   # doctor proxy-env (local: measures this machine's HTTP clients)
    native.register,   # native build, status (local: the data path compiled by mypyc)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peel", allow_abbrev=False,
                                     description="Peel: API gateway and strangler-fig facade. Rule "
                                     "commands go through the admin API.")
    global_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMAND_GROUPS:
        register(commands)
    return parser
