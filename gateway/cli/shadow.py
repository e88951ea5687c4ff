"""`peel shadow report ROUTE`: what the shadow stage measured (through the admin API)."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli.args import Commands, actions, add_command, positive
from gateway.cli.context import admin_client
from gateway.cli.output import percent, print_json, table


def _interval(pair: list[float]) -> str:
    return f"[{pair[0] * 100:.1f}%, {pair[1] * 100:.1f}%]"


def describe(report: dict[str, Any]) -> list[str]:
    """The lines `peel shadow report ROUTE` prints (before the fields table and the examples)."""
    since = report["since"]
    when = f"since config version {since['config_version']}" + \
        (f" ({since['time'][:19].replace('T', ' ')})" if since.get("time") else "")
    base = report["baseline"]
    return [
        f"route {report['route']}: {report['from']} -> {report['to']}, stage {report['stage']} ({when})",
        f"  pairs     {report['pairs']} compared, {report['mismatched']} differ: "
        f"{percent(report['mismatch_rate'])} {_interval(report['interval'])} at 95%",
        f"  baseline  {base['pairs']} old-vs-old pairs, {base['mismatched']} differ: "
        f"{percent(base['rate'])} {_interval(base['interval'])}",
        f"  copies    {report['dropped']} dropped (queue full), {report['skipped']} skipped "
        f"(method, body size, failed primary), {report['failed']} failed (no answer in time)",
        f"  fields    {report['regressions']} regression(s); excess over noise up to "
        f"{percent(report['excess'][1])} (surely at least {percent(max(report['excess'][0], 0.0))})",
    ]


def cmd_report(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        answer = client.request("GET", f"/api/v1/migrations/{args.route}/shadow",
                                params={"top": args.top, "examples": args.examples})
    if args.json:
        print_json(answer)
        return 0
    report = answer["shadow"]
    print("\n".join(describe(report)))
    if report["fields"]:
        print()
        table([(f["field"], f["verdict"], f"{f['new_diffs']} ({percent(f['new_rate'])})",
                f"{f['old_diffs']} ({percent(f['old_rate'])})" if report["baseline"]["pairs"] else "-")
               for f in report["fields"]],
              ("FIELD", "VERDICT", "OLD-VS-NEW", "OLD-VS-OLD"))
    for example in report["examples"]:
        print()
        print(f"example: {example['method']} {example['path']}: status {example['primary']['status']} "
              f"vs {example['candidate']['status']}, {example['total']} difference(s)")
        for d in example["differences"]:
            print(f"  {d['kind']:8} {d['path']}: {d['primary']} -> {d['candidate']}")
    return 0


def register(commands: Commands) -> None:
    """shadow report."""
    shadow = actions(add_command(commands, "shadow", None, "the shadow stage: what the comparison of "
                                 "`to` with `from` shows"))
    p = add_command(shadow, "report", cmd_report, "compared pairs, mismatch rate with its interval, "
                    "the top differing fields (noise marked as noise) and redacted example pairs")
    p.add_argument("route", metavar="ROUTE")
    p.add_argument("--top", type=positive, default=10, metavar="N", help="fields shown (default 10)")
    p.add_argument("--examples", type=int, default=3, metavar="N", help="example pairs (default 3)")
