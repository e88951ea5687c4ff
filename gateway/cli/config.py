"""`peel config ...`: the history of config versions, one version, a diff, a rollback."""

from __future__ import annotations

import argparse
import sys

from gateway.cli.args import Commands, actions, add_command, positive, write_options
from gateway.cli.context import admin_client
from gateway.cli.documents import dump_yaml
from gateway.cli.output import print_json, print_write, table


def cmd_history(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        versions = client.history(args.limit)["versions"]
    if args.json:
        print_json(versions)
        return 0
    table([(v["version"], v["created_at"][:19].replace("T", " "), v["actor"], v.get("summary", ""),
            v["reason"]) for v in versions], ("VERSION", "CREATED", "ACTOR", "CHANGE", "REASON"))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        answer = client.config(args.version)
    if args.json:
        print_json(answer)
        return 0
    # Comments keep the output a valid document: `peel config show N | peel apply -f -` works.
    print(f"# config version {answer['version']} by {answer['actor']} at {answer['created_at']}")
    if answer.get("reason"):
        print(f"# reason: {' '.join(str(answer['reason']).split())}")
    sys.stdout.write(dump_yaml(answer["document"]))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        answer = client.diff(args.old, args.new)
    if args.json:
        print_json(answer)
    else:
        print(answer["diff_text"])
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        answer = client.rollback(args.version, reason=args.reason, if_match=args.if_match)
    print_write(args, answer, what=f" (the rules of version {args.version})")
    return 0


def register(commands: Commands) -> None:
    """config history, show, diff and rollback."""
    config = actions(add_command(commands, "config", None, "config versions: history, show, diff, rollback"))
    add_command(config, "history", cmd_history, "list config versions, newest first").add_argument(
        "--limit", type=positive, default=20)
    add_command(config, "show", cmd_show, "print config version N").add_argument("version", type=positive)
    p = add_command(config, "diff", cmd_diff, "what changed from version N to M")
    p.add_argument("old", type=int, metavar="N")
    p.add_argument("new", type=int, metavar="M", nargs="?", help="default: the latest")
    p = add_command(config, "rollback", cmd_rollback, "make version N's rules live again (as a new version)")
    p.add_argument("version", type=int, metavar="N")
    write_options(p)
