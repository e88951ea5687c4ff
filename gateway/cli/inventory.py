"""`peel inventory FILE...`: what the monolith serves, from access logs (`facade.inventory`).

Reads the files here (nginx's, Apache's or Peel's access logs, `.gz` rotated ones too, `-` for
standard input); with `--routes`, asks the admin API which route would answer each template now
(`POST /api/v1/match` with one of its example paths), so the rows that only the legacy catch-all
still answers are the ones left to peel.

`facade.inventory` (and gzip) are imported when the command runs: every other command's start
would pay for their patterns and classes (5 ms).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

from gateway.cli.args import Commands, add_command, positive
from gateway.cli.client import AdminClient, AdminError
from gateway.cli.context import admin_client
from gateway.cli.output import percent, print_json, table
from routes.errors import PeelError

if TYPE_CHECKING:
    from facade.inventory import Inventory, Row

DEFAULT_MAX_VALUES = 10  # facade.inventory.MAX_VALUES (tests/unit/test_inventory.py holds them equal)


class InventoryError(PeelError):
    """A log file could not be read."""


@contextmanager
def _opened(name: str) -> Iterator[IO[str]]:
    import gzip

    if name == "-":
        yield sys.stdin
        return
    try:
        file: IO[str] = gzip.open(name, "rt", encoding="utf-8", errors="replace") if name.endswith(".gz") \
            else open(name, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InventoryError(f"cannot read {name}: {exc.strerror or exc}") from None
    with file:
        yield file


def read(names: list[str], max_values: int) -> Inventory:
    from facade.inventory import Inventory

    inventory = Inventory(max_values=max_values)
    for name in names:
        with _opened(name) as file:
            try:
                inventory.add_lines(file)
            except (OSError, EOFError) as exc:  # a truncated .gz, a read error
                raise InventoryError(f"cannot read {name}: {exc}") from None
    return inventory


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def routed(client: AdminClient, row: Row, host: str) -> dict[str, Any]:
    """Which route would answer the row's first example now: `{route, service, migration}` (a
    migration as `{from, to, stage, percent}`), all None when no route matches."""
    try:
        answer = client.match(row.method, f"http://{host}{row.examples[0]}")
    except AdminError as exc:
        if exc.problem.get("code") == "no-route":
            return {"route": None, "service": None, "migration": None}
        raise
    migration = answer.get("migration")
    if migration is None:
        return {"route": answer["route"], "service": answer["service"], "migration": None}
    return {"route": answer["route"], "service": None,
            "migration": {key: migration[key] for key in ("from", "to", "stage", "percent")}}


def _route_cell(found: dict[str, Any]) -> str:
    if found["route"] is None:
        return "(no route)"
    migration = found["migration"]
    if migration is None:
        return f"{found['route']}: {found['service']}"
    stage = migration["stage"] + (f" {migration['percent']}%" if migration["stage"] == "canary" else "")
    return f"{found['route']}: {migration['from']} -> {migration['to']} ({stage})"


def cmd_inventory(args: argparse.Namespace) -> int:
    inventory = read(args.files, args.max_values)
    rows = inventory.rows(legacy=args.legacy or ())
    shown = rows if args.top == 0 else rows[:args.top]
    routes: list[dict[str, Any]] | None = None
    if args.routes and shown:
        with admin_client(args) as client:
            routes = [routed(client, row, args.host) for row in shown]
    if inventory.unreadable:
        print(f"peel: {inventory.unreadable} of {inventory.lines} lines hold no request to map (not an "
              f"access-log line, or no request line in it; the first: {inventory.first_unreadable!r})",
              file=sys.stderr)
    requests = sum(r.requests for r in rows)
    if args.json:
        out = [row.to_json() | ({} if routes is None else {"now": routes[i]}) for i, row in enumerate(shown)]
        print_json({"lines": inventory.lines, "unreadable": inventory.unreadable,
                    "requests": requests, "templates": len(rows), "rows": out})
        return 0
    print(f"{requests} request{'' if requests == 1 else 's'} in {len(rows)} "
          f"template{'' if len(rows) == 1 else 's'}"
          + (f", the {len(shown)} busiest:" if len(shown) < len(rows) else ":"))
    if not shown:
        return 0
    header = ["METHOD", "TEMPLATE", "REQUESTS", "SHARE", "4XX", "5XX", "P50 MS", "P99 MS", "ON LEGACY"]
    cells = [[row.method, row.template, row.requests, percent(row.share),
              percent(row.statuses[4] / row.requests), percent(row.errors), _ms(row.p50_ms), _ms(row.p99_ms),
              percent(row.on_legacy)] for row in shown]
    if routes is not None:
        header.append("ROUTE NOW")
        for cell, found in zip(cells, routes, strict=True):
            cell.append(_route_cell(found))
    table(cells, header)
    return 0


def _zero_or_more(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError("must be 0 or more")
    return int(text)


def register(commands: Commands) -> None:
    """inventory."""
    p = add_command(commands, "inventory", cmd_inventory,
                    "path templates with their volume, errors, latency and share on legacy, from access logs")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="nginx, Apache (combined or common) or Peel access logs; .gz read too; - is stdin")
    p.add_argument("--top", type=_zero_or_more, default=50, metavar="N",
                   help="the N templates with the most requests (default 50; 0: all)")
    p.add_argument("--max-values", type=positive, default=DEFAULT_MAX_VALUES, metavar="N",
                   help="more distinct segments than N after one prefix become {param} "
                        f"(default {DEFAULT_MAX_VALUES})")
    p.add_argument("--legacy", action="append", metavar="SERVICE",
                   help="a service that is the monolith, for ON LEGACY (Peel logs; repeatable; the `from` "
                        "services of migrations count without it)")
    p.add_argument("--routes", action="store_true",
                   help="ask the admin API which route answers each template now")
    p.add_argument("--host", default="localhost",
                   help="the Host the logged requests carried, for --routes (default localhost)")
