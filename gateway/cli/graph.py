"""`peel graph [--format text|dot] [--window 5m]`: the dependency graph every gateway observed.

Through the admin API (`GET /api/v1/graph`, `gateway.admin.graph`). Text lists the edges with rate,
error rate, p99 and whether a policy declares them (UNEXPECTED when none does); DOT draws them for
Graphviz (`peel graph --format dot | dot -Tsvg > graph.svg`), unexpected edges red and dashed.
Exit status 0, or 1 when some edge is unexpected (a script can alert on it). See docs/east-west.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.cli.args import Commands, add_command
from gateway.cli.context import admin_client
from gateway.cli.output import print_json


def _expected(value: bool | None) -> str:
    return "yes" if value else "-" if value is None else "UNEXPECTED"


def _p99(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


def text(answer: Mapping[str, Any], window: str) -> list[str]:
    """The edges as lines of an aligned table (the caller prints them), with a summary line."""
    edges: Sequence[Mapping[str, Any]] = answer["edges"]
    if not edges:
        return [f"no request seen in the last {window}"]
    rows = [(e["source"], e["destination"], f"{e['rate']:g}/s", e["requests"],
             f"{e['error_rate'] * 100:.1f}%", _p99(e["p99_ms"]), _expected(e["expected"]))
            for e in edges]
    header = ("SOURCE", "DESTINATION", "RATE", "REQUESTS", "ERRORS", "P99", "EXPECTED")
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    unexpected = answer.get("unexpected", 0)
    lines.append("")
    lines.append(f"{len(edges)} edge(s) in the last {window}"
                 + (f", {unexpected} unexpected: no authorization policy's allow_from declares them"
                    if unexpected else ""))
    return lines


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot(answer: Mapping[str, Any]) -> str:
    """The graph in Graphviz DOT: services as boxes, other callers as ellipses; an edge's label is
    its rate, error rate and p99; unexpected edges red and dashed."""
    lines = ["digraph peel {", "  rankdir=LR;", '  node [fontname="sans-serif"];',
             '  edge [fontname="sans-serif", fontsize=10];']
    for node in answer["nodes"]:
        shape = "box" if "service" in node["kinds"] else "ellipse"
        lines.append(f"  {_quote(node['id'])} [shape={shape}];")
    for e in answer["edges"]:
        label = f"{e['rate']:g}/s, {e['error_rate'] * 100:.1f}% err, p99 {_p99(e['p99_ms'])}"
        style = ', color=red, fontcolor=red, style=dashed' if e["expected"] is False else ""
        if e["expected"] is False:
            label += " (unexpected)"
        lines.append(f"  {_quote(e['source'])} -> {_quote(e['destination'])} "
                     f"[label={_quote(label)}{style}];")
    lines.append("}")
    return "\n".join(lines)


def cmd_graph(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        answer = client.request("GET", "/api/v1/graph", params={"window": args.window})
    if args.json:
        print_json(answer)
    elif args.format == "dot":
        print(dot(answer))
    else:
        for line in text(answer, args.window):
            print(line)
    return 1 if answer.get("unexpected") else 0


def register(commands: Commands) -> None:
    """graph."""
    p = add_command(commands, "graph", cmd_graph, "the dependency graph: who called which service, "
                    "rate, errors, p99, unexpected edges (exit 1 when one is)")
    p.add_argument("--format", choices=("text", "dot"), default="text",
                   help="text (the default) or Graphviz DOT")
    p.add_argument("--window", default="5m", help="how far back to look (5m, 1h, 24h; default 5m)")


__all__ = ["cmd_graph", "dot", "register", "text"]
