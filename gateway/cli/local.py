"""Local commands: they read the settings and use the store directly, not the admin API."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from gateway.cli.args import Commands, actions, add_command, positive
from gateway.cli.context import config_path, open_store, settings
from gateway.cli.output import print_json, table


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server.serve import serve

    current = settings(args)
    if args.workers is not None:
        current = replace(current, server=replace(current.server, workers=args.workers))
    return serve(current, config_path(args))


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    store = open_store(args, check=False)
    store.upgrade()
    print("the store's schema is up to date")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    token = open_store(args).create_token(args.name)
    print(token)
    if sys.stdout.isatty():
        print(f"peel: token {args.name!r} is shown only this once; keep it safe", file=sys.stderr)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    tokens = open_store(args).list_tokens()
    if args.json:
        print_json([{"name": t.name, "created_at": t.created_at.isoformat(),
                     "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
                     "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None} for t in tokens])
        return 0
    table([(t.name, f"{t.created_at:%Y-%m-%d %H:%M}",
            f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never",
            "active" if t.revoked_at is None else f"revoked {t.revoked_at:%Y-%m-%d %H:%M}")
           for t in tokens], ("NAME", "CREATED", "LAST USED", "STATUS"))
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    open_store(args).revoke_token(args.name)
    print(f"token {args.name} revoked")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo.run import run_demo

    return run_demo(args)


def register(commands: Commands) -> None:
    """serve, db, token and demo."""
    p = add_command(commands, "serve", cmd_serve, "run the gateway (listeners, admin API)")
    p.add_argument("--workers", type=positive, help="worker processes (default: server.workers)")
    add_command(actions(add_command(commands, "db", None, "the store's schema")), "upgrade",
                cmd_db_upgrade, "create or migrate the store's tables")
    tokens = actions(add_command(commands, "token", None, "admin API tokens (local: uses the store)"))
    add_command(tokens, "create", cmd_token_create,
                "create a token and print it (shown once)").add_argument("name")
    add_command(tokens, "list", cmd_token_list, "list tokens")
    add_command(tokens, "revoke", cmd_token_revoke, "revoke a token").add_argument("name")
    demo = add_command(commands, "demo", cmd_demo, "run a sample monolith, a new service and a gateway")
    from gateway.demo.run import add_arguments

    add_arguments(demo)
