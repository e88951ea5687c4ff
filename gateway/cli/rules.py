"""Rule commands, through the admin API: apply, export, services, routes and match."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.cli.args import Commands, actions, add_command, cookie_arg, header_arg, write_options
from gateway.cli.client import AdminClient, AdminError
from gateway.cli.context import admin_client
from gateway.cli.documents import dump_yaml, load_document
from gateway.cli.output import match_summary, print_json, print_write, table
from routes.errors import PeelError
from routes.patch import changes_from_data

# Reads of the stored version and applies of the changes to it, while other writers commit in between
CHANGES_TRIES = 3


def cmd_apply(args: argparse.Namespace) -> int:
    data = load_document(args.file)
    with admin_client(args) as client:
        answer = apply_document(client, data, dry_run=args.dry_run, reason=args.reason,
                                if_match=args.if_match)
    print_write(args, answer)
    return 0


def apply_document(client: AdminClient, data: Any, *, dry_run: bool = False, reason: str | None = None,
                   if_match: int | None = None) -> dict[str, Any]:
    """Apply the document `data` as the changes to the latest stored version (`routes.patch`: the
    gateway parses and checks only what changed), else whole.

    Whole when the document does not parse here (the gateway's refusal then names the field as
    for any document), when a route names a service the document does not hold or a name is on two
    routes (likewise), when the gateway cannot give its stored text, when `if_match` is not the
    latest version (the gateway answers 412), and when other writers keep committing between the
    read and the apply.
    """
    for _ in range(CHANGES_TRIES):
        stored = client.stored_config()
        if stored is None or (if_match is not None and stored[0] != if_match):
            break
        version, text = stored
        try:
            changes = changes_from_data(text, data)
        except PeelError:
            changes = None
        if changes is None:
            break
        try:
            return client.apply_changes(changes, version, dry_run=dry_run, reason=reason)
        except AdminError as exc:
            if exc.status != 412 or if_match is not None:
                raise
    return client.apply(data, dry_run=dry_run, reason=reason, if_match=if_match)


def cmd_export(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        answer = client.config(args.version)
    if args.json:
        print_json(answer["document"])
    else:
        sys.stdout.write(dump_yaml(answer["document"]))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        answer = client.items(args.kind)
    items = answer[args.kind]
    if args.json:
        print_json({"services": items, "registered": answer.get("registered", [])}
                   if args.kind == "services" else items)
    elif args.kind == "services":
        rows = [(s["name"], ", ".join(e if isinstance(e, str) else e["url"] for e in s["endpoints"]),
                 "document") for s in items]
        # the service registry's: a sidecar's inbound listener, with the identity that registered it
        rows += [(r["service"], r["endpoint"], f"registered {r['identity']}" if r.get("live", True)
                  else f"registered {r['identity']} (expired)") for r in answer.get("registered", [])]
        table(sorted(rows, key=lambda row: (row[0], row[2] != "document", row[1])),
              ("NAME", "ENDPOINTS", "SOURCE"))
    else:
        table([(r["name"], match_summary(r.get("match", {})), r["service"], r.get("priority", 0))
               for r in items], ("NAME", "MATCH", "SERVICE", "PRIORITY"))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        item = client.item(args.kind, args.name)[args.kind[:-1]]
    if args.json:
        print_json(item)
    else:
        sys.stdout.write(dump_yaml(item))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        answer = client.delete_item(args.kind, args.name, reason=args.reason, if_match=args.if_match)
    print_write(args, answer)
    return 0


def cmd_service_set(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        answer = client.put_item("services", args.name, {"name": args.name, "endpoints": args.endpoint},
                                 reason=args.reason, if_match=args.if_match)
    print_write(args, answer)
    return 0


def route_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The route body `peel routes set NAME ...` sends: the flags, or the -f file."""
    if args.file is not None:
        given = load_document(args.file)
        if not isinstance(given, dict):
            raise PeelError(f"{args.file} must hold one route (a mapping)")
        return {"name": args.name, **given}
    match: dict[str, Any] = {}
    if args.host:
        match["hosts"] = args.host
    for kind in ("path", "path_prefix", "path_template", "path_regex"):
        if getattr(args, kind) is not None:
            match[kind] = getattr(args, kind)
    if args.method:
        match["methods"] = [m.upper() for m in args.method]
    if args.header:
        match["headers"] = [{"name": n, "value": v} for n, v in args.header]
    route: dict[str, Any] = {"name": args.name, "match": match, "service": args.service}
    if args.priority:
        route["priority"] = args.priority
    rewrite: dict[str, Any] = {}
    if args.strip_prefix:
        rewrite["path_prefix"] = "/"
    elif args.replace_prefix is not None:
        rewrite["path_prefix"] = args.replace_prefix
    if args.set_host is not None:
        rewrite["host"] = args.set_host
    if rewrite:
        route["rewrite"] = rewrite
    return route


def check_route_set(args: argparse.Namespace) -> str | None:
    """-f gives the whole route, the flags give it otherwise; never both, never neither."""
    flags = [args.service, args.path, args.path_prefix, args.path_template, args.path_regex,
             args.host, args.method, args.header, args.priority, args.strip_prefix,
             args.replace_prefix, args.set_host]
    if args.file is None and not args.service:
        return "routes set: --service is required unless -f gives the route"
    if args.file is not None and any(flags):
        return "routes set: -f gives the whole route; leave out the other route flags"
    return None


def cmd_route_set(args: argparse.Namespace) -> int:
    route = route_from_flags(args)
    with admin_client(args) as client:
        if not args.file and "migration" not in route:
            # The flags say nothing of a migration: keep the one `peel migrate` manages rather than
            # drop it silently (a `-f` file says exactly what the route becomes).
            try:
                current = client.item("routes", args.name)["route"]
            except AdminError as exc:
                if exc.status != 404:
                    raise
            else:
                if "migration" in current:
                    route["migration"] = current["migration"]
        answer = client.put_item("routes", args.name, route, reason=args.reason, if_match=args.if_match)
    print_write(args, answer)
    return 0


def cmd_match(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        try:
            answer = client.match(args.method.upper(), args.url, dict(args.header), dict(args.cookie),
                                  args.client)
        except AdminError as exc:
            if exc.problem.get("code") == "no-route":
                raise AdminError(f"no route matches {args.method.upper()} {args.url}") from None
            raise
    if args.json:
        print_json(answer)
        return 0
    refused = answer.get("refused")
    if refused is not None:
        table([("route", answer["route"]),
               ("refused", f"{refused['status']} {refused['code']}: {refused['detail']}")], None)
        return 0
    host = answer["upstream_host"] or "the client's Host"
    rows = [("route", f"{answer['route']} (priority {answer['priority']})"),
            ("service", f"{answer['service']}: {', '.join(answer['endpoints'])}")]
    migration = answer.get("migration")
    if migration is not None:
        rows.append(("side", f"{migration['side']} ({_why(migration)})"))
        beta = migration.get("beta")
        if beta is not None and beta["sent"]:
            trusted = f"trusted, user {beta['user']}" if beta["trusted"] else \
                "not trusted from this address: stripped"
            rows.append(("beta", f"{beta['source']}: {trusted}"
                                 + (f", on the {beta['list']} list" if beta.get("list") else "")))
    rows.append(("upstream", f"{args.method.upper()} {answer['upstream_path']} (Host: {host})"))
    if answer.get("rate_limit"):
        limit = answer["rate_limit"]
        rows.append(("rate limit", f"{limit['requests']} per {limit['per']:g} s per client"))
    if answer.get("deadline_ms") is not None:
        rows.append(("deadline", f"{answer['deadline_ms']} ms"))
    table(rows, None)
    return 0


def _why(migration: dict[str, Any]) -> str:
    """Why a migration picked its side, in words."""
    reason = migration["reason"]
    stage = migration["stage"]
    if reason == "beta-allow":
        return "beta user on the allow list"
    if reason == "beta-deny":
        return "beta user on the deny list"
    if reason == "stage":
        return f"stage {stage}: every request"
    cohort = migration["cohort"]
    if cohort["bucket"] is None:
        return f"stage {stage}, {migration['percent']}%: no cohort key ({cohort['source']} absent)"
    inside = "<" if migration["side"] == "to" else ">="
    return (f"stage {stage}, {migration['percent']}%: {cohort['source']} {cohort['key']!r} is in bucket "
            f"{cohort['bucket']} {inside} {cohort['share']}")


def _route_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", help="the route as YAML or JSON instead of the flags")
    p.add_argument("--service", help="the service that answers (required without -f)")
    paths = p.add_mutually_exclusive_group()
    for flag, meta in (("--path", "P"), ("--path-prefix", "P"), ("--path-template", "T"),
                       ("--path-regex", "R")):
        paths.add_argument(flag, metavar=meta)
    p.add_argument("--host", action="append", help="a host or *.suffix; repeatable")
    p.add_argument("--method", action="append", help="repeatable")
    p.add_argument("--header", action="append", type=header_arg, metavar="'NAME: VALUE'",
                   help="an exact header value; repeatable")
    p.add_argument("--priority", type=int, default=0)
    rewrites = p.add_mutually_exclusive_group()
    rewrites.add_argument("--strip-prefix", action="store_true",
                          help="remove the matched path prefix upstream")
    rewrites.add_argument("--replace-prefix", metavar="P", help="replace the matched prefix")
    p.add_argument("--set-host", metavar="H", help="the Host header sent upstream")


def register(commands: Commands) -> None:
    """apply, export, services, routes and match."""
    p = add_command(commands, "apply", cmd_apply, "replace all rules with a YAML or JSON document")
    p.add_argument("-f", "--file", required=True, help="the document; - reads stdin")
    p.add_argument("--dry-run", action="store_true", help="show the diff, write nothing")
    write_options(p)
    p = add_command(commands, "export", cmd_export, "print the rules as the YAML document apply takes")
    p.add_argument("--version", type=int, help="an older config version (default: the latest)")

    for kind in ("services", "routes"):
        group = actions(add_command(commands, kind, None, f"list, show, set or delete {kind}"))
        add_command(group, "list", cmd_list, f"list {kind}").set_defaults(kind=kind)
        p = add_command(group, "get", cmd_get, f"print one of the {kind}")
        p.add_argument("name")
        p.set_defaults(kind=kind)
        p = add_command(group, "delete", cmd_delete, f"delete one of the {kind}")
        p.add_argument("name")
        p.set_defaults(kind=kind)
        write_options(p)
        if kind == "services":
            p = add_command(group, "set", cmd_service_set, "create or replace a service")
            p.add_argument("name")
            p.add_argument("--endpoint", action="append", required=True, metavar="URL",
                           help="scheme://host:port; repeat for several")
        else:
            p = add_command(group, "set", cmd_route_set, "create or replace a route (the whole route)",
                            check=check_route_set)
            p.add_argument("name")
            _route_flags(p)
        write_options(p)

    p = add_command(commands, "match", cmd_match, "which route and service would answer a request")
    p.add_argument("method")
    p.add_argument("url", help="http://host/path?query")
    p.add_argument("-H", "--header", action="append", type=header_arg, default=[], metavar="'NAME: VALUE'")
    p.add_argument("--cookie", action="append", type=cookie_arg, default=[], metavar="NAME=VALUE",
                   help="a cookie the request carries; repeat for several")
    p.add_argument("--from", dest="client", metavar="ADDRESS",
                   help="the downstream's IP address (beta and deadline trust, the cohort key)")
