"""A table compiled from the one before (`routes.index.IndexEditor`) has the index a whole build
gives: the same nodes, entries and pruning, so the same winners; and it shares the nodes off the
changed routes' paths with the table before."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from routes.compiler import compile_document
from routes.errors import RuleError
from routes.model import Document, Route, Service
from routes.table import RouteTable, TrieNode
from tests.unit.test_precedence import HOSTS, SERVICES, requests, route_sets

SERVICE = Service.parse(SERVICES[0], "services[0]")


def dump(node: TrieNode | None) -> Any:
    if node is None:
        return None
    return ({k: dump(v) for k, v in sorted(node.children.items())}, dump(node.param),
            [(key, route.name) for key, route in node.through],
            [(key, route.name) for key, route in node.end])


def shape(table: RouteTable) -> Any:
    exact, wildcard, hostless = table.index()
    return ({h: dump(n) for h, n in sorted(exact.items())},
            {h: dump(n) for h, n in sorted(wildcard.items())}, dump(hostless))


def build(routes: list[Route]) -> Document | None:
    try:
        return Document.build([SERVICE], routes)
    except RuleError:
        return None


def parsed(specs: list[dict[str, Any]], prefix: str) -> list[Route]:
    out = []
    for spec in specs:
        with contextlib.suppress(RuleError):  # a spec the model refuses is left out
            out.append(Route.parse({"service": "svc", **spec, "name": prefix + spec["name"]}, "r"))
    return out


@given(route_sets(), route_sets(), st.data())
def test_a_derived_index_is_the_whole_build(first: list[dict[str, Any]], fresh: list[dict[str, Any]],
                                            data: st.DataObject) -> None:
    before = parsed(first, "a")
    kept = [r for r in before if data.draw(st.booleans())]
    after = kept + parsed(fresh, "b")
    old_doc, new_doc = build(before), build(after)
    if old_doc is None or new_doc is None:
        return
    previous = compile_document(old_doc, 1)
    derived = compile_document(new_doc, 2, previous=previous)
    whole = compile_document(new_doc, 2)
    assert shape(derived) == shape(whole)
    assert shape(previous) == shape(compile_document(old_doc, 1))  # the table before is untouched
    for host in [*HOSTS, "nowhere.example.net"]:
        assert derived.routes_host(host) == whole.routes_host(host)
    for method, host, path, query, headers in data.draw(st.lists(requests(), min_size=1, max_size=8)):
        got = derived.match(method, host, path, query, headers)
        want = whole.match(method, host, path, query, headers)
        assert (got and got.name) == (want and want.name)


def large(n: int) -> list[Route]:
    return [Route.parse({"name": f"r{i}", "service": "svc",
                         "match": {"hosts": ["api.example.com"] if i % 2 else [],
                                   "path_prefix": f"/r{i}/items"}}, "r") for i in range(n)]


def test_a_one_route_change_copies_only_its_path() -> None:
    routes = large(1000)
    previous = compile_document(Document.build([SERVICE], routes), 1)
    moved = Route.parse({"name": "r7", "service": "svc", "match": {"hosts": ["api.example.com"],
                                                                  "path_prefix": "/seven"}}, "r")
    table = compile_document(Document.build([SERVICE], [*routes[:7], moved, *routes[8:]]), 2,
                             previous=previous)
    old_exact, _, old_hostless = previous.index()
    exact, _, hostless = table.index()
    assert hostless is old_hostless  # no route without hosts changed
    shared = [k for k, v in exact["api.example.com"].children.items()
              if old_exact["api.example.com"].children.get(k) is v]
    assert "r7" not in exact["api.example.com"].children and "seven" in exact["api.example.com"].children
    assert len(shared) == 500 - 1  # the nodes of the other 499 routes with a host are the ones before
    assert table.match("GET", "api.example.com", "/seven", b"", []).name == "r7"  # type: ignore[union-attr]
    assert table.match("GET", "api.example.com", "/r7/items", b"", []) is None


def test_the_last_route_of_a_host_takes_the_host_with_it() -> None:
    routes = large(4)
    previous = compile_document(Document.build([SERVICE], routes), 1)
    table = compile_document(Document.build([SERVICE], [r for r in routes if r.name not in ("r1", "r3")]),
                             2, previous=previous)
    assert previous.routes_host("api.example.com") and not table.routes_host("api.example.com")
    assert shape(table) == shape(compile_document(Document.build([SERVICE], routes[::2]), 2))
