"""`peel mtls readiness [--window 1h]`: who still spoke plaintext to the inbound listener.

Through the admin API (`GET /api/v1/mtls/readiness`, `gateway.admin.mtls`). Exit status 0 when no
source spoke plaintext in the window (switching the inbound listener to `strict` refuses no one
seen), 1 otherwise, so a script can gate the switch on it. See docs/mtls.md.
"""

from __future__ import annotations

import argparse
import time

from gateway.cli.args import Commands, actions, add_command
from gateway.cli.context import admin_client
from gateway.cli.output import print_json, table


def _ago(when: float, now: float) -> str:
    seconds = max(0, int(now - when))
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago"


def cmd_readiness(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        answer = client.request("GET", "/api/v1/mtls/readiness", params={"window": args.window})
    if args.json:
        print_json(answer)
        return 0 if answer["ready"] else 1
    now = time.time()
    plaintext = answer["plaintext"]
    if plaintext:
        print(f"{len(plaintext)} source(s) spoke plaintext in the last {args.window}: strict mode "
              "would refuse them")
        table([(r["source"], r["requests"], _ago(r["last_seen"], now)) for r in plaintext],
              ("SOURCE", "REQUESTS", "LAST PLAINTEXT"))
    else:
        print(f"no plaintext request in the last {args.window}: strict mode refuses no one seen")
    if answer["mtls"]:
        print()
        table([(r["source"], r["requests"], _ago(r["last_seen"], now)) for r in answer["mtls"]],
              ("MTLS SOURCE", "REQUESTS", "LAST"))
    return 0 if answer["ready"] else 1


def register(commands: Commands) -> None:
    """mtls readiness."""
    mtls = actions(add_command(commands, "mtls", None, "the inbound listener's mTLS: readiness"))
    p = add_command(mtls, "readiness", cmd_readiness, "who still speaks plaintext to the inbound "
                    "listener (exit 1 while someone does)")
    p.add_argument("--window", default="1h", help="how far back to look (30m, 1h, 24h; default 1h)")
