"""`peel`: the command line. Local commands use the settings and the store; rule commands go
through the admin API so an operator can run them from anywhere.

Exit codes: 0 success, 2 usage error (argparse), 1 failure with one line `peel: <reason>` on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from gateway.admin_client import DEFAULT_ADMIN_URL, AdminClient, AdminError
from gateway.errors import PeelError
from gateway.settings import Settings, load_settings

if TYPE_CHECKING:
    from routes.store import Store

Handler = Callable[[argparse.Namespace], int]


# -- settings, store and admin client -------------------------------------------------------------


def _config_path(args: argparse.Namespace) -> str | None:
    return args.config or os.environ.get("PEEL_CONFIG") or None


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(_config_path(args))


def admin_url(args: argparse.Namespace) -> str:
    """--admin, else PEEL_ADMIN_URL, else the admin listener of the settings file, else the default."""
    if args.admin:
        return str(args.admin)
    if os.environ.get("PEEL_ADMIN_URL"):
        return os.environ["PEEL_ADMIN_URL"]
    if _config_path(args):
        listener = _settings(args).listeners.admin
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listener.host, listener.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{listener.port}"
    return DEFAULT_ADMIN_URL


def _client(args: argparse.Namespace) -> AdminClient:
    return AdminClient(admin_url(args), args.token or os.environ.get("PEEL_ADMIN_TOKEN"))


def _store(args: argparse.Namespace, *, check: bool = True) -> Store:
    # Imported here: SQLAlchemy and alembic are only needed by the local commands.
    from routes.store import Store

    store = Store(_settings(args).database.url)
    if check:
        store.check_schema()
    return store


# -- output ------------------------------------------------------------------------------------


def dump_yaml(data: Any) -> str:
    """Stable YAML in the key order given (the model's canonical order), never folded."""
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True,
                              width=1 << 16))


def load_document(path: str) -> Any:
    """YAML or JSON (a JSON text is YAML too) from a file, or stdin for `-`."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        raise PeelError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PeelError(f"{path} is not UTF-8 text") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PeelError(f"{'stdin' if path == '-' else path} is not valid YAML or JSON: {exc}") from None


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


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _print_write(args: argparse.Namespace, answer: dict[str, Any], *, what: str = "") -> None:
    if args.json:
        _print_json(answer)
        return
    if not answer.get("changed") and not answer.get("dry_run"):
        print("no change" + (f" (config version {answer['version']})" if answer.get("version") else ""))
        return
    print(answer["diff_text"])
    if answer.get("dry_run"):
        print(f"dry run: nothing written (config version {answer['version']} stays live)")
    else:
        print(f"config version {answer['version']}{what}")


# -- local commands ------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.serve import serve

    settings = _settings(args)
    if args.workers is not None:
        settings = replace(settings, server=replace(settings.server, workers=args.workers))
    return serve(settings, _config_path(args))


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    store = _store(args, check=False)
    store.upgrade()
    print("the store's schema is up to date")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    token = _store(args).create_token(args.name)
    print(token)
    if sys.stdout.isatty():
        print(f"peel: token {args.name!r} is shown only this once; keep it safe", file=sys.stderr)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    tokens = _store(args).list_tokens()
    if args.json:
        _print_json([{"name": t.name, "created_at": t.created_at.isoformat(),
                      "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
                      "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None} for t in tokens])
        return 0
    table([(t.name, f"{t.created_at:%Y-%m-%d %H:%M}",
            f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never",
            "active" if t.revoked_at is None else f"revoked {t.revoked_at:%Y-%m-%d %H:%M}")
           for t in tokens], ("NAME", "CREATED", "LAST USED", "STATUS"))
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    _store(args).revoke_token(args.name)
    print(f"token {args.name} revoked")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo.run import run_demo

    return run_demo(args)


# -- through the admin API -----------------------------------------------------------------------


def cmd_apply(args: argparse.Namespace) -> int:
    document = load_document(args.file)
    with _client(args) as client:
        answer = client.apply(document, dry_run=args.dry_run, reason=args.reason, if_match=args.if_match)
    _print_write(args, answer)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = client.config(args.version)
    if args.json:
        _print_json(answer["document"])
    else:
        sys.stdout.write(dump_yaml(answer["document"]))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = client.items(args.kind)
    items = answer[args.kind]
    if args.json:
        _print_json(items)
    elif args.kind == "services":
        table([(s["name"], ", ".join(s["endpoints"])) for s in items], ("NAME", "ENDPOINTS"))
    else:
        table([(r["name"], match_summary(r.get("match", {})), r["service"], r.get("priority", 0))
               for r in items], ("NAME", "MATCH", "SERVICE", "PRIORITY"))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        item = client.item(args.kind, args.name)[args.kind[:-1]]
    if args.json:
        _print_json(item)
    else:
        sys.stdout.write(dump_yaml(item))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = client.delete_item(args.kind, args.name, reason=args.reason, if_match=args.if_match)
    _print_write(args, answer)
    return 0


def cmd_service_set(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = client.put_item("services", args.name, {"name": args.name, "endpoints": args.endpoint},
                                 reason=args.reason, if_match=args.if_match)
    _print_write(args, answer)
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


def cmd_route_set(args: argparse.Namespace) -> int:
    route = route_from_flags(args)
    with _client(args) as client:
        answer = client.put_item("routes", args.name, route, reason=args.reason, if_match=args.if_match)
    _print_write(args, answer)
    return 0


def cmd_match(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            answer = client.match(args.method.upper(), args.url, dict(args.header))
        except AdminError as exc:
            if exc.problem.get("code") == "no-route":
                raise AdminError(f"no route matches {args.method.upper()} {args.url}") from None
            raise
    if args.json:
        _print_json(answer)
        return 0
    host = answer["upstream_host"] or "the client's Host"
    table([("route", f"{answer['route']} (priority {answer['priority']})"),
           ("service", f"{answer['service']}: {', '.join(answer['endpoints'])}"),
           ("upstream", f"{args.method.upper()} {answer['upstream_path']} (Host: {host})")], None)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    with _client(args) as client:
        versions = client.history(args.limit)["versions"]
    if args.json:
        _print_json(versions)
        return 0
    table([(v["version"], v["created_at"][:19].replace("T", " "), v["actor"], v.get("summary", ""),
            v["reason"]) for v in versions], ("VERSION", "CREATED", "ACTOR", "CHANGE", "REASON"))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = client.config(args.version)
    if args.json:
        _print_json(answer)
        return 0
    # Comments keep the output a valid document: `peel config show N | peel apply -f -` works.
    print(f"# config version {answer['version']} by {answer['actor']} at {answer['created_at']}")
    if answer.get("reason"):
        print(f"# reason: {' '.join(str(answer['reason']).split())}")
    sys.stdout.write(dump_yaml(answer["document"]))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = client.diff(args.old, args.new)
    if args.json:
        _print_json(answer)
    else:
        print(answer["diff_text"])
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = client.rollback(args.version, reason=args.reason, if_match=args.if_match)
    _print_write(args, answer, what=f" (the rules of version {args.version})")
    return 0


# -- the parser ----------------------------------------------------------------------------------


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def header_arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not 'Name: value'")
    return name.strip(), value.strip()


def _globals(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The global options, accepted before or after the command (SUPPRESS keeps the top's value)."""
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    g = parser.add_argument_group("global options")
    g.add_argument("--config", metavar="FILE", default=default(None),
                   help="settings file (default: $PEEL_CONFIG)")
    g.add_argument("--admin", metavar="URL", default=default(None),
                   help=f"admin API (default: $PEEL_ADMIN_URL, the settings' admin listener, "
                        f"or {DEFAULT_ADMIN_URL})")
    g.add_argument("--token", default=default(None), help="admin API token (default: $PEEL_ADMIN_TOKEN)")
    g.add_argument("--json", action="store_true", default=default(False), help="print JSON")


def _writes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", help="why: recorded with the new config version")
    parser.add_argument("--if-match", type=int, metavar="VERSION",
                        help="refuse unless VERSION is still the latest config version")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peel", allow_abbrev=False,
                                     description="Peel: API gateway and strangler-fig facade. Rule "
                                     "commands go through the admin API.")
    _globals(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(group: Any, name: str, handler: Handler | None, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, help=help_text, description=help_text,
                                                        allow_abbrev=False)
        _globals(sub, top=False)
        if handler is not None:
            sub.set_defaults(handler=handler)
        return sub

    def nest(sub: argparse.ArgumentParser) -> Any:
        return sub.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = add(commands, "serve", cmd_serve, "run the gateway (listeners, admin API)")
    p.add_argument("--workers", type=positive, help="worker processes (default: server.workers)")
    add(nest(add(commands, "db", None, "the store's schema")), "upgrade", cmd_db_upgrade,
        "create or migrate the store's tables")
    tokens = nest(add(commands, "token", None, "admin API tokens (local: uses the store)"))
    add(tokens, "create", cmd_token_create, "create a token and print it (shown once)").add_argument("name")
    add(tokens, "list", cmd_token_list, "list tokens")
    add(tokens, "revoke", cmd_token_revoke, "revoke a token").add_argument("name")
    demo = add(commands, "demo", cmd_demo, "run a sample monolith, a new service and a gateway")
    from gateway.demo.run import add_arguments

    add_arguments(demo)

    p = add(commands, "apply", cmd_apply, "replace all rules with a YAML or JSON document")
    p.add_argument("-f", "--file", required=True, help="the document; - reads stdin")
    p.add_argument("--dry-run", action="store_true", help="show the diff, write nothing")
    _writes(p)
    p = add(commands, "export", cmd_export, "print the rules as the YAML document apply takes")
    p.add_argument("--version", type=int, help="an older config version (default: the latest)")

    for kind in ("services", "routes"):
        actions = nest(add(commands, kind, None, f"list, show, set or delete {kind}"))
        add(actions, "list", cmd_list, f"list {kind}").set_defaults(kind=kind)
        p = add(actions, "get", cmd_get, f"print one of the {kind}")
        p.add_argument("name")
        p.set_defaults(kind=kind)
        p = add(actions, "delete", cmd_delete, f"delete one of the {kind}")
        p.add_argument("name")
        p.set_defaults(kind=kind)
        _writes(p)
        if kind == "services":
            p = add(actions, "set", cmd_service_set, "create or replace a service")
            p.add_argument("name")
            p.add_argument("--endpoint", action="append", required=True, metavar="URL",
                           help="scheme://host:port; repeat for several")
        else:
            p = add(actions, "set", cmd_route_set, "create or replace a route (the whole route)")
            p.add_argument("name")
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
        _writes(p)

    p = add(commands, "match", cmd_match, "which route and service would answer a request")
    p.add_argument("method")
    p.add_argument("url", help="http://host/path?query")
    p.add_argument("-H", "--header", action="append", type=header_arg, default=[], metavar="'NAME: VALUE'")

    config = nest(add(commands, "config", None, "config versions: history, show, diff, rollback"))
    add(config, "history", cmd_history, "list config versions, newest first").add_argument(
        "--limit", type=positive, default=20)
    add(config, "show", cmd_show, "print config version N").add_argument("version", type=positive)
    p = add(config, "diff", cmd_diff, "what changed from version N to M")
    p.add_argument("old", type=int, metavar="N")
    p.add_argument("new", type=int, metavar="M", nargs="?", help="default: the latest")
    p = add(config, "rollback", cmd_rollback, "make version N's rules live again (as a new version)")
    p.add_argument("version", type=int, metavar="N")
    _writes(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "routes" and args.action == "set":
        flags = [args.service, args.path, args.path_prefix, args.path_template, args.path_regex,
                 args.host, args.method, args.header, args.priority, args.strip_prefix,
                 args.replace_prefix, args.set_host]
        if args.file is None and not args.service:
            parser.error("routes set: --service is required unless -f gives the route")
        if args.file is not None and any(flags):
            parser.error("routes set: -f gives the whole route; leave out the other route flags")
    try:
        code: int = args.handler(args)
        return code
    except PeelError as exc:
        print(f"peel: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
