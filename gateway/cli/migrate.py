"""`peel migrate ...` (the strangler lifecycle of a route, through the admin API) and
`peel beta sign USER` (a signed beta header value, made locally from the settings' secret)."""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

from facade.beta import sign
from gateway.cli.args import Commands, actions, add_command, positive, write_options
from gateway.cli.context import admin_client, settings
from gateway.cli.output import print_json, table
from gateway.core.errors import ConfigError

BASE = "/api/v1/migrations"
_TTL_RE = re.compile(r"^(\d+)([smhd]?)$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def percent_arg(text: str) -> int | float:
    """A number as written (10 stays an integer); the range is the admin API's to check."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return int(value) if value.is_integer() else value


def ttl_arg(text: str) -> int:
    """`30d`, `12h`, `15m`, `3600s` or seconds."""
    m = _TTL_RE.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30d, 12h, 15m or 3600s")
    return int(m.group(1)) * _TTL_UNITS[m.group(2)]


def _source(header: str | None, cookie: str | None) -> dict[str, str]:
    return {"header": header} if header else {"cookie": cookie} if cookie else {}


def _counts(status: dict[str, Any]) -> str:
    c = status["counts"]
    text = f"to {c['to']}, from {c['from']}, fallback {c['fallback']}"
    return text + (f", retired misses {c['retired_misses']}" if status["stage"] == "retired" else "")


def _describe(status: dict[str, Any]) -> list[str]:
    """The lines `peel migrate status ROUTE` prints for one migration."""
    m = status["migration"]
    cohort = m.get("cohort") or {}
    key = f"header {cohort['header']}" if "header" in cohort else \
        f"cookie {cohort['cookie']}" if "cookie" in cohort else "client address"
    lines = [f"route {status['route']}: {status['from']} -> {status['to']}",
             f"  stage    {status['stage']}" + (f" ({status['percent']}% of users)"
                                                 if status["stage"] == "canary" else ""),
             f"  cohort   sticky by {key}, salt {m.get('salt', status['route'])}"]
    beta = m.get("beta")
    if beta:
        where = f"header {beta['header']}" if "header" in beta else f"cookie {beta['cookie']}"
        lines.append(f"  beta     {where}; allow {', '.join(beta.get('allow', [])) or '-'}; "
                     f"deny {', '.join(beta.get('deny', [])) or '-'}")
    since = status.get("since")
    when = f"since {since['action']} at config version {since['config_version']} " \
           f"({since['time'][:19].replace('T', ' ')})" if since else "since the migration appeared"
    lines.append(f"  requests {_counts(status)} ({when})")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        answer = client.request("GET", f"{BASE}/{args.route}" if args.route else BASE)
    items = [answer["migration"]] if args.route else answer["migrations"]
    if args.json:
        print_json(answer)
        return 0
    if args.route:
        print("\n".join(_describe(items[0])))
        return 0
    if not items:
        print("no migrations")
        return 0
    table([(s["route"], s["stage"], s["percent"] if s["stage"] == "canary" else "-", s["from"], s["to"],
            s["counts"]["to"], s["counts"]["from"], s["counts"]["fallback"], s["counts"]["retired_misses"])
           for s in items],
          ("ROUTE", "STAGE", "PERCENT", "FROM", "TO", "TO-REQS", "FROM-REQS", "FALLBACKS", "MISSES"))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        answer = client.request("GET", f"{BASE}/{args.route}/history", params={"limit": args.limit})
    if args.json:
        print_json(answer)
        return 0
    table([(t["time"][:19].replace("T", " "), t["action"], t["from_stage"] or "-", t["to_stage"],
            t["percent"], t["config_version"], t["actor"], t["reason"]) for t in answer["transitions"]],
          ("TIME", "ACTION", "FROM", "TO", "PERCENT", "VERSION", "ACTOR", "REASON"))
    return 0


def _transition(args: argparse.Namespace, action: str, body: dict[str, Any] | None) -> int:
    with admin_client(args) as client:
        answer = client.request("POST", f"{BASE}/{args.route}/{action}", body=body, reason=args.reason,
                                if_match=args.if_match)
    if args.json:
        print_json(answer)
        return 0
    status = answer["migration"]
    if answer["changed"]:
        print(f"{action}: route {args.route} is now {status['stage']}"
              + (f" at {status['percent']}%" if status["stage"] == "canary" else "")
              + f" (config version {answer['version']})")
    else:
        print(f"no change: route {args.route} is already {status['stage']} "
              f"(config version {answer['version']})")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"to": args.to}
    cohort = _source(args.cohort_header, args.cohort_cookie)
    if cohort:
        body["cohort"] = cohort
    beta = _source(args.beta_header, args.beta_cookie)
    if beta:
        body["beta"] = {**beta, "allow": args.allow, "deny": args.deny}
    if args.salt:
        body["salt"] = args.salt
    return _transition(args, "start", body)


def cmd_shift(args: argparse.Namespace) -> int:
    return _transition(args, "shift", {"percent": args.percent})


def _simple(action: str) -> Any:
    def handler(args: argparse.Namespace) -> int:
        return _transition(args, action, None)

    return handler


def cmd_beta_sign(args: argparse.Namespace) -> int:
    secret = settings(args).facade.beta_secret
    if not secret:
        raise ConfigError("facade.beta_secret", "is not set; put a secret of at least 32 characters "
                          "in the settings file (or PEEL_FACADE_BETA_SECRET)")
    try:
        value = sign(secret, args.user, int(time.time()) + args.ttl)
    except ValueError as exc:
        raise ConfigError("USER", str(exc)) from None
    print(value)
    return 0


def _start_check(args: argparse.Namespace) -> str | None:
    if (args.allow or args.deny) and not (args.beta_header or args.beta_cookie):
        return "--allow and --deny need --beta-header or --beta-cookie"
    return None


def register(commands: Commands) -> None:
    """migrate start, shift, promote, retire, rollback, status, history; beta sign."""
    migrate = actions(add_command(commands, "migrate", None, "strangle a route: start, shift, promote, "
                                  "retire, rollback, status, history"))
    p = add_command(migrate, "start", cmd_start, "start migrating ROUTE to SERVICE (stage legacy: "
                    "all traffic stays on the route's service)", check=_start_check)
    p.add_argument("route", metavar="ROUTE")
    p.add_argument("--to", required=True, metavar="SERVICE", help="the new service")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cohort-header", metavar="H", help="sticky key: this header (say X-User-Id)")
    g.add_argument("--cohort-cookie", metavar="C", help="sticky key: this cookie (say session)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--beta-header", metavar="H", help="beta users named by this header")
    g.add_argument("--beta-cookie", metavar="C", help="beta users named by this cookie")
    p.add_argument("--allow", action="append", default=[], metavar="USER",
                   help="a beta user who gets the new service from canary on (repeatable)")
    p.add_argument("--deny", action="append", default=[], metavar="USER",
                   help="a user who never gets the new service while the old one exists (repeatable)")
    p.add_argument("--salt", help="bucketing salt (default: the route name; changing it reshuffles users)")
    write_options(p)
    p = add_command(migrate, "shift", cmd_shift, "send a sticky percentage of users to the new service "
                    "(stage canary)")
    p.add_argument("route", metavar="ROUTE")
    p.add_argument("--percent", required=True, type=percent_arg, metavar="N", help="0-100, to 0.01")
    write_options(p)
    for action, help_text in (("shadow", "the old service answers everyone; a copy goes to the new one "
                                         "and is compared (stage shadow; see peel shadow report)"),
                              ("promote", "all users to the new service, the old one kept as fallback "
                                          "(stage migrated)"),
                              ("retire", "no more fallback to the old service (stage retired; from "
                                         "migrated only)"),
                              ("rollback", "all traffic back to the old service at once (stage "
                                           "legacy), from any stage")):
        p = add_command(migrate, action, _simple(action), help_text)
        p.add_argument("route", metavar="ROUTE")
        write_options(p)
    p = add_command(migrate, "status", cmd_status, "stage, percentage, cohort rules and requests per "
                    "side since the last transition")
    p.add_argument("route", metavar="ROUTE", nargs="?", help="default: every migration")
    p = add_command(migrate, "history", cmd_history, "the transitions of ROUTE, newest first")
    p.add_argument("route", metavar="ROUTE")
    p.add_argument("--limit", type=positive, default=50)

    beta = actions(add_command(commands, "beta", None, "beta users: signed beta header values"))
    p = add_command(beta, "sign", cmd_beta_sign, "print a beta header value naming USER, signed with "
                    "the settings' facade.beta_secret")
    p.add_argument("user", metavar="USER")
    p.add_argument("--ttl", type=ttl_arg, default=30 * 86400, help="how long it is valid: 30d "
                   "(default), 12h, 15m, 3600s")
