"""`peel` argument parsing and output formatting, without sockets or a store."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest
import yaml

from gateway.cli import build_parser
from gateway.cli.args import header_arg
from gateway.cli.context import admin_url
from gateway.cli.documents import dump_yaml
from gateway.cli.output import match_summary, table
from gateway.cli.rules import route_from_flags
from routes.model import Document


@pytest.fixture(autouse=True)
def _no_peel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PEEL_CONFIG", "PEEL_ADMIN_URL", "PEEL_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_global_options_work_before_and_after_the_command() -> None:
    before = parse("--admin", "http://a:1", "--token", "t", "--json", "routes", "list")
    after = parse("routes", "list", "--admin", "http://a:1", "--token", "t", "--json")
    for args in (before, after):
        assert (args.admin, args.token, args.json, args.kind) == ("http://a:1", "t", True, "routes")
    plain = parse("routes", "list")
    assert (plain.admin, plain.token, plain.json) == (None, None, False)


@pytest.mark.parametrize(("text", "pair"), [("X-Beta: 1", ("X-Beta", "1")), ("A:b:c", ("A", "b:c")),
                                             ("Empty:", ("Empty", ""))])
def test_header_arg(text: str, pair: tuple[str, str]) -> None:
    assert header_arg(text) == pair


@pytest.mark.parametrize("text", ["no colon", ": value"])
def test_header_arg_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        header_arg(text)


def test_admin_url_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "peel.toml"
    config.write_text('[listeners.admin]\nbind = "0.0.0.0:9955"\n')
    assert admin_url(parse("routes", "list")) == "http://127.0.0.1:9901"
    assert admin_url(parse("--config", str(config), "routes", "list")) == "http://127.0.0.1:9955"
    monkeypatch.setenv("PEEL_CONFIG", str(config))
    assert admin_url(parse("routes", "list")) == "http://127.0.0.1:9955"
    monkeypatch.setenv("PEEL_ADMIN_URL", "http://env:1")
    assert admin_url(parse("routes", "list")) == "http://env:1"
    assert admin_url(parse("routes", "list", "--admin", "http://flag:2")) == "http://flag:2"
    config.write_text('[listeners.admin]\nbind = "[::]:9956"\n')
    monkeypatch.delenv("PEEL_ADMIN_URL")
    assert admin_url(parse("routes", "list")) == "http://[::1]:9956"


def test_route_from_flags_builds_a_valid_route() -> None:
    args = parse("routes", "set", "orders", "--service", "orders", "--path-prefix", "/orders",
                 "--host", "shop.example", "--method", "get", "--header", "X-Beta: 1",
                 "--replace-prefix", "/v2", "--set-host", "orders.internal", "--priority", "3")
    route = route_from_flags(args)
    assert route == {"name": "orders", "service": "orders", "priority": 3,
                     "match": {"hosts": ["shop.example"], "path_prefix": "/orders", "methods": ["GET"],
                               "headers": [{"name": "X-Beta", "value": "1"}]},
                     "rewrite": {"path_prefix": "/v2", "host": "orders.internal"}}
    services = [{"name": "orders", "endpoints": ["http://a:1"]}]
    assert Document.parse({"services": services, "routes": [route]}).routes[0].priority == 3


def test_route_from_file_takes_the_name_from_the_command(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("match: {path: /x}\nservice: s\n")
    assert route_from_flags(parse("routes", "set", "x", "-f", str(path))) == {
        "name": "x", "match": {"path": "/x"}, "service": "s"}


def test_match_summary() -> None:
    assert match_summary({}) == "*"
    assert match_summary({"hosts": ["a.example", "*.b.example"], "path_template": "/o/{id}",
                          "methods": ["GET"], "headers": [{"name": "X", "regex": "^1"}],
                          "query": [{"name": "q", "present": True}],
                          "cookies": [{"name": "c", "present": False}]}) == \
        "GET a.example,*.b.example template=/o/{id} header:X~^1 query:q cookie:c absent"


def test_table_aligns_columns() -> None:
    out = io.StringIO()
    table([("a", "long value", 1), ("longer-name", "v", 10)], ("NAME", "MATCH", "PRIORITY"), out)
    lines = out.getvalue().splitlines()
    assert lines == ["NAME         MATCH       PRIORITY",
                     "a            long value  1",
                     "longer-name  v           10"]


def test_dump_yaml_round_trips_awkward_strings() -> None:
    doc = {"services": [{"name": "on", "endpoints": ["http://10.0.0.1:80"]}],
           "routes": [{"name": "yes", "match": {"path_regex": "^/a: b #c/" + "x" * 200,
                                                "headers": [{"name": "X", "value": "0123"}]},
                       "service": "on"}]}
    text = dump_yaml(doc)
    assert yaml.safe_load(text) == doc
    assert text.index("services") < text.index("routes")
    assert dump_yaml(yaml.safe_load(text)) == text
