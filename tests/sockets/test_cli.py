"""The real `peel` command (a subprocess) against the admin API served by uvicorn on a free port.

The admin API runs in a background thread over a SQLite store in a temp dir; every `peel` call is
a separate process with only its own `PEEL_*` environment, as an operator would run it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.cli import build_parser
from routes.store import Store

DOCUMENT = """\
services:
  - name: legacy
    endpoints: [http://10.0.0.5:8080]
  - name: orders
    endpoints: [http://10.0.0.7:9000, http://10.0.0.8:9000]
routes:
  - name: orders
    match: {path_prefix: /orders, methods: [GET, POST]}
    service: orders
    rewrite: {path_prefix: /v2/orders}
  - name: legacy-default
    match: {path_prefix: /}
    service: legacy
"""


class Peel:
    """Runs `python -m gateway.cli` with a clean environment pointing at one store and admin API."""

    def __init__(self, env: dict[str, str], store: Store) -> None:
        self.env = env
        self.store = store

    def __call__(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
                 expect: int | None = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "gateway.cli", *args], input=stdin,
                                capture_output=True, text=True, timeout=60,
                                env={**self.env, **(env or {})})
        if expect is not None:
            assert result.returncode == expect, (args, result.stdout, result.stderr)
        return result

    def fails(self, *args: str, code: int = 1, env: dict[str, str] | None = None) -> str:
        """Run a command that must fail with `code`; for 1, the one stderr line after `peel: `."""
        result = self(*args, env=env, expect=code)
        if code == 1:
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("peel: "), result.stderr
            return lines[0].removeprefix("peel: ")
        return result.stderr


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}


@pytest.fixture
def peel(served: tuple[str, str, Store]) -> Peel:
    url, admin, store = served
    env = {**_clean_environ(), "PEEL_DATABASE_URL": url, "PEEL_ADMIN_URL": admin}
    token = Peel(env, store)("token", "create", "ops").stdout.strip()
    assert token.startswith("peel_") and "\n" not in token
    env["PEEL_ADMIN_TOKEN"] = token
    return Peel(env, store)


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_apply_dry_run_then_apply_then_round_trip_changes_nothing(peel: Peel, tmp_path: Path) -> None:
    doc = _write(tmp_path, "peel.yaml", DOCUMENT)
    out = peel("apply", "-f", doc, "--dry-run").stdout
    assert "+ route orders" in out and "+ service legacy" in out
    assert "dry run" in out
    assert peel.store.latest_version() == 0
    out = peel("apply", "-f", doc, "--reason", "import").stdout
    assert out.splitlines()[-1] == "config version 1"
    exported = peel("export").stdout
    assert yaml.safe_load(exported) == yaml.safe_load(DOCUMENT) | {
        "routes": sorted(yaml.safe_load(DOCUMENT)["routes"], key=lambda r: r["name"])}
    assert peel("export").stdout == exported, "export is stable"
    out = peel("apply", "-f", "-", stdin=exported).stdout
    assert out.startswith("no change")
    assert peel.store.latest_version() == 1
    json_doc = peel("export", "--json").stdout
    assert peel("apply", "-f", "-", stdin=json_doc).stdout.startswith("no change")
    (info,) = peel.store.history()
    assert (info.actor, info.reason) == ("ops", "import")


def test_services_and_routes_set_get_list_delete(peel: Peel, tmp_path: Path) -> None:
    peel("services", "set", "legacy", "--endpoint", "http://10.0.0.5:8080", "--reason", "first")
    peel("services", "set", "orders", "--endpoint", "http://10.0.0.7:9000",
         "--endpoint", "http://10.0.0.8:9000")
    assert yaml.safe_load(peel("services", "get", "orders").stdout) == {
        "name": "orders", "endpoints": ["http://10.0.0.7:9000", "http://10.0.0.8:9000"]}
    out = peel("routes", "set", "orders", "--service", "orders", "--path-prefix", "/orders",
               "--method", "GET", "--method", "post", "--header", "X-Beta: 1", "--strip-prefix",
               "--set-host", "orders.internal", "--priority", "5").stdout
    assert "+ route orders" in out and out.splitlines()[-1] == "config version 3"
    assert yaml.safe_load(peel("routes", "get", "orders").stdout) == {
        "name": "orders", "service": "orders", "priority": 5,
        "match": {"path_prefix": "/orders", "methods": ["GET", "POST"],
                  "headers": [{"name": "X-Beta", "value": "1"}]},
        "rewrite": {"path_prefix": "/", "host": "orders.internal"}}
    route_file = _write(tmp_path, "route.yaml", "match: {path_prefix: /}\nservice: legacy\n")
    peel("routes", "set", "legacy-default", "-f", route_file)
    lines = peel("routes", "list").stdout.splitlines()
    assert lines[0].split() == ["NAME", "MATCH", "SERVICE", "PRIORITY"]
    assert lines[1].split() == ["legacy-default", "prefix=/", "legacy", "0"]
    assert lines[2].split() == ["orders", "GET,POST", "prefix=/orders", "header:X-Beta=1", "orders", "5"]
    assert lines[0].index("SERVICE") == lines[1].index(" legacy ") + 1 == lines[2].rindex(" orders ") + 1
    services = peel("services", "list").stdout.splitlines()
    assert services[1].split() == ["legacy", "http://10.0.0.5:8080", "document"]
    assert peel("services", "set", "legacy", "--endpoint", "http://10.0.0.5:8080").stdout.startswith(
        "no change")
    peel("routes", "delete", "orders", "--if-match", "4")
    peel("services", "delete", "orders")
    assert "not-found" not in peel.fails("routes", "get", "orders")
    assert [r.version for r in peel.store.history()] == [6, 5, 4, 3, 2, 1]


def test_refusals_exit_1_with_one_line_naming_field_and_value(peel: Peel, tmp_path: Path) -> None:
    peel("apply", "-f", _write(tmp_path, "doc.yaml", DOCUMENT))
    reason = peel.fails("routes", "set", "x", "--service", "nowhere", "--path", "/x")
    assert reason == "routes[x].service: names no service (got 'nowhere')"
    reason = peel.fails("routes", "set", "x", "--service", "orders", "--path-regex", "/(")
    assert reason.startswith("routes[x].match.path_regex: is not a valid regular expression")
    reason = peel.fails("services", "delete", "orders")
    assert reason.startswith("services[orders]: is used by route orders")
    reason = peel.fails("services", "set", "x", "--endpoint", "ftp://h:1")
    assert "services[x].endpoints[0]" in reason and "ftp://h:1" in reason
    reason = peel.fails("services", "set", "x", "--endpoint", "http://h:1", "--if-match", "0")
    assert reason.startswith("If-Match: config version 0 is not the latest")
    bad = _write(tmp_path, "bad.yaml", "services: [{name: a, endpoints: [http://a:1], weight: 1}]\n")
    assert peel.fails("apply", "-f", bad).startswith("services[0].weight: unknown field")
    assert "not valid YAML" in peel.fails("apply", "-f", _write(tmp_path, "broken.yaml", "a: [\n"))
    assert "cannot read" in peel.fails("apply", "-f", str(tmp_path / "missing.yaml"))
    assert peel.store.latest_version() == 1


def test_unreachable_admin_and_bad_token_are_one_line_failures(peel: Peel) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    reason = peel.fails("routes", "list", "--admin", f"http://127.0.0.1:{port}")
    assert reason.startswith(f"cannot reach the admin API at http://127.0.0.1:{port}")
    reason = peel.fails("routes", "list", env={"PEEL_ADMIN_TOKEN": "peel_wrong"})
    assert reason.startswith("the admin API refused the token")
    reason = peel.fails("routes", "list", env={"PEEL_ADMIN_TOKEN": ""})
    assert reason.startswith("no admin token")
    peel.store.revoke_token("ops")
    assert peel.fails("services", "list").startswith("the admin API refused the token")


def test_usage_errors_exit_2(peel: Peel) -> None:
    for args in (("frobnicate",), ("routes",), ("routes", "set", "x"), ("apply",),
                 ("config", "show", "one"), ("match", "GET", "http://x/", "-H", "no-colon"),
                 ("routes", "set", "x", "--path", "/a", "--path-prefix", "/b", "--service", "s"),
                 ("routes", "set", "x", "-f", "r.yaml", "--service", "s"), ("serve", "--workers", "0"),
                 ("config", "history", "--limit", "-1"), ()):
        result = peel(*args, expect=2)
        assert "usage: peel" in result.stderr, args


def test_local_commands_on_an_unmigrated_store_name_the_fix(tmp_path: Path) -> None:
    env = {**_clean_environ(), "PEEL_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}"}
    peel = Peel(env, Store(env["PEEL_DATABASE_URL"]))
    assert "peel db upgrade" in peel.fails("token", "create", "ops")
    assert "PEEL_NOPE" in peel.fails("token", "list", env={"PEEL_NOPE": "1"})
    peel("db", "upgrade")
    token = peel("token", "create", "ops").stdout.strip()
    assert peel.store.verify_token(token) == "ops"
    assert peel.fails("token", "create", "ops").startswith("name: an active token has this name")
    assert peel("token", "list").stdout.splitlines()[1].split()[0] == "ops"
    peel("token", "revoke", "ops")
    assert peel.store.verify_token(token) is None
    assert "revoked" in peel("token", "list").stdout
    peel.store.close()


def test_match_history_show_diff_rollback(peel: Peel, tmp_path: Path) -> None:
    peel("apply", "-f", _write(tmp_path, "doc.yaml", DOCUMENT), "--reason", "one")
    out = peel("match", "GET", "http://shop.example/orders/7?x=1").stdout
    assert out.splitlines()[0].split()[:2] == ["route", "orders"]
    assert "orders (priority 0)" in out and "http://10.0.0.7:9000" in out and "GET /v2/orders/7" in out
    out = peel("match", "POST", "http://shop.example/orders/7", "--json").stdout
    assert yaml.safe_load(out)["route"] == "orders"
    peel("routes", "delete", "legacy-default", "--reason", "legacy off")
    assert peel.fails("match", "GET", "http://shop.example/cart") == \
        "no route matches GET http://shop.example/cart"
    lines = peel("config", "history").stdout.splitlines()
    assert lines[0].split() == ["VERSION", "CREATED", "ACTOR", "CHANGE", "REASON"]
    assert lines[1].split()[0] == "2" and lines[1].endswith("legacy off")
    assert "ops" in lines[2] and lines[2].endswith("one")
    assert len(peel("config", "history", "--limit", "1").stdout.splitlines()) == 2
    shown = peel("config", "show", "1").stdout
    assert shown.startswith("# config version 1 by ops")
    assert peel("config", "diff", "1", "2").stdout.strip() == "- route legacy-default"
    out = peel("config", "rollback", "1", "--reason", "undo").stdout
    assert "+ route legacy-default" in out and "config version 3" in out
    assert peel.store.get(3).document == peel.store.get(1).document
    assert peel("apply", "-f", "-", stdin=shown).stdout.startswith("no change")
    assert peel.fails("config", "show", "9") == "version: no such config version (got 9)"


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*prefix, name))


def test_every_command_has_help(peel: Peel, capsys: pytest.CaptureFixture[str]) -> None:
    commands = list(_commands(build_parser()))
    assert ("config", "rollback") in commands and ("token", "create") in commands
    # The installed entry point once, as a process; every command's help through the same parser
    # in this process (forty interpreter start-ups at once timed out on a loaded machine).
    top = subprocess.run([sys.executable, "-m", "gateway.cli", "--help"], capture_output=True,
                         text=True, env=peel.env, timeout=120, check=False)
    assert top.returncode == 0 and "usage: peel" in top.stdout, top.stderr
    for command in commands:
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args([*command, "--help"])
        out = capsys.readouterr().out
        assert exited.value.code == 0, command
        assert ("usage: peel " + " ".join(command)).strip() in " ".join(out.split()), command


def test_routes_set_from_flags_keeps_the_migration(peel: Peel) -> None:
    peel("services", "set", "legacy", "--endpoint", "http://10.0.0.5:8080")
    peel("services", "set", "orders", "--endpoint", "http://10.0.0.7:9000")
    peel("routes", "set", "orders", "--service", "legacy", "--path-prefix", "/orders")
    peel("migrate", "start", "orders", "--to", "orders")
    peel("migrate", "shift", "orders", "--percent", "10")
    # The flags describe the match; the migration `peel migrate` manages stays as it was.
    peel("routes", "set", "orders", "--service", "legacy", "--path-prefix", "/shop")
    route = yaml.safe_load(peel("routes", "get", "orders").stdout)
    assert route["match"] == {"path_prefix": "/shop"}
    assert route["migration"]["stage"] == "canary" and route["migration"]["percent"] == 10


CANARY_DOCUMENT = """\
services:
  - name: legacy
    endpoints: [http://10.0.0.5:8080]
  - name: orders
    endpoints: [http://10.0.0.7:9000]
routes:
  - name: orders
    match: {path_prefix: /orders}
    service: legacy
    migration:
      to: orders
      stage: canary
      percent: 50
      cohort: {header: X-User-Id}
      beta: {cookie: beta, allow: [ada]}
"""


def _side(user: str) -> str:
    """The documented sticky bucket (facade/bucketing.py), computed independently of Peel."""
    digest = hashlib.sha256(b"orders\0" + user.encode()).digest()
    return "to" if int.from_bytes(digest[:8], "big") % 10_000 < 5000 else "from"


def test_match_names_the_side_of_a_migration_for_a_user(peel: Peel, tmp_path: Path) -> None:
    peel("apply", "-f", _write(tmp_path, "doc.yaml", CANARY_DOCUMENT), "--reason", "canary")
    seen = set()
    for user in ("u1", "u2", "u3", "u4", "u5", "u6", "u7"):
        out = peel("match", "GET", "http://shop/orders/1", "-H", f"X-User-Id: {user}").stdout
        rows = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in out.splitlines() if line}
        side = _side(user)
        seen.add(side)
        assert rows["side"].startswith(f"{side} (stage canary, 50%: header x-user-id '{user}' is in bucket")
        assert rows["service"].startswith("orders:" if side == "to" else "legacy:")
    assert seen == {"to", "from"}
    # A beta cookie from an address nobody trusts is reported as stripped, and changes nothing.
    out = peel("match", "GET", "http://shop/orders/1", "-H", "X-User-Id: u7", "--cookie", "beta=ada",
               "--from", "192.0.2.7").stdout
    rows = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in out.splitlines() if line}
    assert rows["beta"] == "cookie beta: not trusted from this address: stripped"
    assert rows["side"].startswith(f"{_side('u7')} (stage canary")
    answer = yaml.safe_load(peel("match", "GET", "/orders", "--cookie", "beta=ada", "--json").stdout)
    assert answer["migration"]["beta"]["sent"] is True and answer["migration"]["beta"]["trusted"] is False
    assert "argument --cookie: 'nope' is not NAME=VALUE" in peel.fails("match", "GET", "/orders",
                                                                       "--cookie", "nope", code=2)


# the canary's route, and the catch-all that answers the rest
INVENTORY_DOCUMENT = CANARY_DOCUMENT + """\
  - name: legacy-default
    match: {path_prefix: /}
    service: legacy
"""


def test_inventory_of_nginx_and_peel_logs_with_the_routes_that_answer_now(peel: Peel, tmp_path: Path) -> None:
    peel("apply", "-f", _write(tmp_path, "doc.yaml", INVENTORY_DOCUMENT), "--reason", "inventory")
    nginx = [f'10.0.0.1 - - [06/Dec/2026:10:00:00 +0000] "GET /orders/{i} HTTP/1.1" 200 512 "-" "curl" '
             f'rt=0.0{i % 10}' for i in range(40)]
    nginx += ['10.0.0.1 - - [06/Dec/2026:10:00:01 +0000] "POST /cart/checkout HTTP/1.1" 502 0 "-" "c" rt=1.2',
              '10.0.0.1 - - [06/Dec/2026:10:00:02 +0000] "-" 400 0 "-" "-"']
    rotated = tmp_path / "access.log.1.gz"
    with gzip.open(rotated, "wt") as file:
        file.write("\n".join(nginx) + "\n")
    peel_log = _write(tmp_path, "peel.log", "".join(
        json.dumps({"method": "GET", "path": f"/orders/{i}", "status": 200, "duration_ms": 2.0,
                    "service": "orders" if i < 2 else "legacy", "side": "to" if i < 2 else "from"}) + "\n"
        for i in range(20)))
    result = peel("inventory", str(rotated), peel_log, "--routes")
    assert result.stderr.startswith("peel: 1 of 62 lines hold no request to map")
    lines = result.stdout.splitlines()
    assert lines[0] == "61 requests in 2 templates:"
    assert lines[1].split() == ["METHOD", "TEMPLATE", "REQUESTS", "SHARE", "4XX", "5XX", "P50", "MS", "P99",
                                "MS", "ON", "LEGACY", "ROUTE", "NOW"]
    assert lines[2].split()[:4] == ["GET", "/orders/{int}", "60", "98.4%"]
    # 18 of the 20 lines that name a service were answered by the migration's `from` side
    assert lines[2].split()[8] == "90.0%"
    assert lines[2].endswith("orders: legacy -> orders (canary 50%)")
    assert lines[3].split()[:6] == ["POST", "/cart/checkout", "1", "1.6%", "0.0%", "100.0%"]
    assert lines[3].endswith("legacy-default: legacy")
    answer = json.loads(peel("inventory", str(rotated), peel_log, "--routes", "--json", "--top", "1").stdout)
    assert (answer["lines"], answer["unreadable"], answer["requests"], answer["templates"]) == (62, 1, 61, 2)
    (row,) = answer["rows"]
    assert row["now"] == {"route": "orders", "service": None,
                          "migration": {"from": "legacy", "to": "orders", "stage": "canary", "percent": 50}}
    assert row["statuses"]["2xx"] == 60 and row["on_legacy"] == 0.9
    peel("routes", "delete", "legacy-default", "--reason", "gone")
    out = peel("inventory", str(rotated), "--routes").stdout
    assert out.splitlines()[3].endswith("(no route)")
    # the log files are read here: no admin API needed without --routes
    alone = peel("inventory", peel_log, env={"PEEL_ADMIN_URL": "http://127.0.0.1:9"}).stdout
    assert alone.splitlines()[0] == "20 requests in 1 template:"
    # standard input, as `journalctl -u peel -o cat | peel inventory -` gives it
    piped = peel("inventory", "-", stdin=Path(peel_log).read_text()).stdout
    assert piped == alone
    assert peel.fails("inventory", str(tmp_path / "nope.log")) == \
        f"cannot read {tmp_path / 'nope.log'}: No such file or directory"
    assert "argument --top: must be 0 or more" in peel.fails("inventory", peel_log, "--top", "-1", code=2)
