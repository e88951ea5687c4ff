"""What commands print: aligned tables, JSON, the answer to a write, and the one-line error."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO


def table(rows: Sequence[Sequence[object]], header: Sequence[str] | None, out: TextIO | None = None) -> None:
    """Columns aligned to their widest cell; the last column is not padded. No header when None."""
    out = out or sys.stdout
    cells = ([[str(c) for c in header]] if header else []) + [[str(c) for c in row] for row in rows]
    if not cells:
        return
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    for r in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) +
                  ("  " if len(r) > 1 else "") + r[-1] + "\n")


def match_summary(match: dict[str, Any]) -> str:
    """A route's match in one short cell, such as `GET,POST api.example.com prefix=/orders`."""
    parts: list[str] = []
    if match.get("methods"):
        parts.append(",".join(match["methods"]))
    if match.get("hosts"):
        parts.append(",".join(match["hosts"]))
    for kind, label in (("path", "path"), ("path_prefix", "prefix"), ("path_template", "template"),
                        ("path_regex", "regex")):
        if kind in match:
            parts.append(f"{label}={match[kind]}")
    for key, label in (("headers", "header"), ("query", "query"), ("cookies", "cookie")):
        for p in match.get(key, []):
            test = (f"={p['value']}" if "value" in p else f"~{p['regex']}" if "regex" in p
                    else "" if p.get("present") else " absent")
            parts.append(f"{label}:{p['name']}{test}")
    return " ".join(parts) or "*"


def percent(share: float | None) -> str:
    """A share (0 to 1) as a percentage with one decimal; `-` when there is none."""
    return "-" if share is None else f"{share * 100:.1f}%"


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def print_write(args: argparse.Namespace, answer: dict[str, Any], *, what: str = "") -> None:
    """The admin API's answer to a write: the diff and the new config version, or why nothing changed."""
    if args.json:
        print_json(answer)
        return
    if not answer.get("changed") and not answer.get("dry_run"):
        print("no change" + (f" (config version {answer['version']})" if answer.get("version") else ""))
        return
    print(answer["diff_text"])
    if answer.get("dry_run"):
        print(f"dry run: nothing written (config version {answer['version']} stays live)")
    else:
        print(f"config version {answer['version']}{what}")


def error_line(exc: BaseException) -> str:
    """`peel: <reason>` on one line, whatever whitespace the reason holds, for stderr."""
    return f"peel: {' '.join(str(exc).split())}"
