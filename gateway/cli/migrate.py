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
    return lines + _guard_lines(status.get("guard"))


def _guard_lines(guard: dict[str, Any] | None) -> list[str]:
    """Where the guard stands and why: its verdict on the last window, with the window's numbers."""
    if guard is None:
        return ["  guard    none (moves only by hand; `peel migrate guard ROUTE` sets one)"]
    w, e = guard["window"], guard["evidence"]
    steps = guard["policy"].get("steps")
    lines = [f"  guard    {'frozen, ' if guard['frozen'] else ''}{guard['action']} ({guard['rule']}): "
             f"{guard['reason']}",
             f"  window   {w['start'][11:19]}..{w['end'][11:19]} UTC ({w['seconds']} s): "
             f"to {e.get('to_errors', 0)}/{e.get('to_requests', 0)} errors"
             + (f", p99 {e['to_p99_ms']} ms" if "to_p99_ms" in e else "")
             + f"; from {e.get('from_errors', 0)}/{e.get('from_requests', 0)} errors"
             + (f", p99 {e['from_p99_ms']} ms" if "from_p99_ms" in e else "")]
    if guard["action"] == "advance":
        lines.append(f"  next     {guard['next_stage']} {guard['next_percent']}%")
    rules = ", ".join(f"{k} {v}" for k, v in guard["policy"].items() if k != "steps") or "defaults"
    lines.append(f"  policy   steps {steps or 'shadow, 1, 5, 25, 50, migrated'}; {rules}")
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
            s["counts"]["to"], s["counts"]["from"], s["counts"]["fallback"], s["counts"]["retired_misses"],
            f"{s['guard']['action']} ({s['guard']['rule']})" if s.get("guard") else "-")
           for s in items],
          ("ROUTE", "STAGE", "PERCENT", "FROM", "TO", "TO-REQS", "FROM-REQS", "FALLBACKS", "MISSES",
           "GUARD"))
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


# `peel migrate guard` options -> the guard block's fields
GUARD_OPTIONS = ("window", "min_requests", "min_pairs", "max_error_increase", "max_p99_ratio",
                 "p99_slack_ms", "max_mismatch", "confidence", "on_failure")


def steps_arg(text: str) -> list[str | int | float]:
    """`shadow,1,5,25,50,migrated`: names as they are, numbers as numbers (the server checks)."""
    out: list[str | int | float] = []
    for item in text.split(","):
        item = item.strip()
        try:
            out.append(percent_arg(item))
        except argparse.ArgumentTypeError:
            out.append(item)
    return out


def cmd_guard(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    given = {name: getattr(args, name) for name in GUARD_OPTIONS if getattr(args, name) is not None}
    if args.steps is not None:
        given["steps"] = args.steps
    with admin_client(args) as client:
        if args.off:
            body["off"] = True
        else:
            if given or not (args.freeze or args.unfreeze):
                current = client.request("GET", f"{BASE}/{args.route}")["migration"]["migration"]
                body["guard"] = {**current.get("guard", {}), **given}
            if args.freeze or args.unfreeze:
                body["freeze"] = bool(args.freeze)
        answer = client.request("POST", f"{BASE}/{args.route}/guard", body=body, reason=args.reason,
                                if_match=args.if_match)
    if args.json:
        print_json(answer)
        return 0
    status = answer["migration"]
    if not answer["changed"]:
        print(f"no change to the guard of route {args.route} (config version {answer['version']})")
    else:
        print(f"guard of route {args.route} {'taken off' if args.off else 'set'} "
              f"(config version {answer['version']})")
    print("\n".join(_guard_lines(status.get("guard"))))
    return 0


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
    """migrate start, shift, promote, retire, rollback, guard, status, history; beta sign."""
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
    p = add_command(migrate, "guard", cmd_guard, "promote ROUTE step by step on measured evidence "
                    "and roll it back when to does worse than from (given options change the "
                    "current guard; docs/verification.md)")
    p.add_argument("route", metavar="ROUTE")
    p.add_argument("--steps", type=steps_arg, metavar="LIST",
                   help="the schedule, e.g. shadow,1,5,25,50,migrated")
    p.add_argument("--window", metavar="DURATION", help="one judged window: 5m, 30s (default 5m)")
    p.add_argument("--min-requests", type=positive, metavar="N",
                   help="requests each side needs in a window, else hold (default 200)")
    p.add_argument("--min-pairs", type=positive, metavar="N",
                   help="shadow pairs a window needs in the shadow step (default 200)")
    p.add_argument("--max-error-increase", type=float, metavar="X",
                   help="to's error rate minus from's, as a fraction (default 0.02)")
    p.add_argument("--max-p99-ratio", type=float, metavar="X", help="to's p99 over from's (default 1.5)")
    p.add_argument("--p99-slack-ms", type=float, metavar="MS", help="added to that bound (default 25)")
    p.add_argument("--max-mismatch", type=float, metavar="X",
                   help="a field's old-vs-new minus old-vs-old difference rate (default 0.03)")
    p.add_argument("--confidence", type=float, metavar="P", help="of the intervals (default 0.95)")
    p.add_argument("--on-failure", choices=("rollback", "hold"),
                   help="when a trigger fires: roll back (default) or hold and freeze")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--freeze", action="store_true", help="stop advancing (triggers still act)")
    g.add_argument("--unfreeze", action="store_true", help="advance again")
    g.add_argument("--off", action="store_true", help="take the guard off")
    write_options(p)
    p = add_command(migrate, "status", cmd_status, "stage, percentage, cohort rules and requests per "
                    "side since the last transition, and where the guard stands and why")
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
