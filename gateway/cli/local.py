"""Local commands: they read the settings and use the store directly, not the admin API."""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from gateway.cli.args import Commands, actions, add_command, worker_count
from gateway.cli.context import config_path, open_store, settings
from gateway.cli.output import print_json, table
from gateway.core.settings import ROLES
from gateway.demo.options import add_arguments
from routes.tokens import DEFAULT_SCOPES, SCOPES

if TYPE_CHECKING:
    from routes.store import TokenInfo  # (the store, and SQLAlchemy, only for commands that open it)

_DURATION = re.compile(r"(\d+)([mhdw])")
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1),
          "w": timedelta(weeks=1)}


def duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `2w`: a positive duration (a usage error otherwise)."""
    found = _DURATION.fullmatch(text.strip())
    if found is None or int(found[1]) < 1 or int(found[1]) > 100_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90m, 12h, 30d or 2w")
    return int(found[1]) * _UNITS[found[2]]


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server.serve import serve

    if args.role is not None:
        # As its environment override: the file is then checked in that role as a whole (a
        # sidecar's `listeners.inbound.app` is refused in the gateway role).
        os.environ["PEEL_SERVER_ROLE"] = args.role
    current = settings(args)
    if args.workers is not None:
        current = replace(current, server=replace(current.server, workers=args.workers))
    return serve(current, config_path(args))


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    store = open_store(args, check=False)
    store.upgrade()
    print("the store's schema is up to date")
    # Rules stored before Peel ran regexes on RE2 may hold a pattern it refuses: say which, and how
    # to fix them, now rather than when their requests start getting 503.
    for refusal in store.latest().document.refused_regexes():
        print(f"peel: warning: {refusal.warning()}", file=sys.stderr)
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    expires_at = datetime.now(UTC) + args.expires if args.expires is not None else None
    token = open_store(args).create_token(args.name, scopes=args.scope or sorted(DEFAULT_SCOPES),
                                          expires_at=expires_at)
    print(token)
    if sys.stdout.isatty():
        print(f"peel: token {args.name!r} is shown only this once; keep it safe", file=sys.stderr)
    return 0


def _status(t: TokenInfo) -> str:
    if t.revoked_at is not None:
        return f"revoked {t.revoked_at:%Y-%m-%d %H:%M}"
    return "expired" if t.expired else "active"


def cmd_token_list(args: argparse.Namespace) -> int:
    tokens = open_store(args).list_tokens()
    if args.json:
        print_json([{"name": t.name, "scopes": sorted(t.scopes), "created_at": t.created_at.isoformat(),
                     "expires_at": t.expires_at.isoformat() if t.expires_at else None,
                     "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
                     "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
                     "status": _status(t).split()[0]} for t in tokens])
        return 0
    table([(t.name, ",".join(sorted(t.scopes)), f"{t.created_at:%Y-%m-%d %H:%M}",
            f"{t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "never",
            f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never", _status(t))
           for t in tokens], ("NAME", "SCOPES", "CREATED", "EXPIRES", "LAST USED", "STATUS"))
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
    p.add_argument("--workers", type=worker_count, metavar="N|auto",
                   help="worker processes, or auto: one per core (default: server.workers)")
    p.add_argument("--role", choices=ROLES, help="gateway (public, admin listeners) or sidecar (beside "
                   "an app: only the outbound and inbound listeners); default: server.role")
    add_command(actions(add_command(commands, "db", None, "the store's schema")), "upgrade",
                cmd_db_upgrade, "create or migrate the store's tables")
    tokens = actions(add_command(commands, "token", None, "admin API tokens (local: uses the store)"))
    create = add_command(tokens, "create", cmd_token_create, "create a token and print it (shown once)")
    create.add_argument("name")
    create.add_argument("--scope", action="append", choices=SCOPES,
                        help="what the token may do; repeatable: metrics (GET /metrics), read (every "
                             "GET, and metrics), write (changes, and read); default: all of them")
    create.add_argument("--expires", type=duration, metavar="DURATION",
                        help="the token stops working after this long (90m, 12h, 30d, 2w); "
                             "default: never")
    add_command(tokens, "list", cmd_token_list, "list tokens")
    add_command(tokens, "revoke", cmd_token_revoke, "revoke a token").add_argument("name")
    demo = add_command(commands, "demo", cmd_demo, "run a sample monolith, a new service and a gateway")
    add_arguments(demo)
