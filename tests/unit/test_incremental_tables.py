"""A change to a large table costs what changed: documents read again share their unchanged routes
(`ParseMemo`), tables compiled again share their unchanged compiled routes (`compile_document`'s
`previous`), and the diff skips what both sides share. Each test checks that the shortcut gives
what the long way gives."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from routes.compiler import IncrementalCompiler, compile_document
from routes.diff import diff
from routes.model import Document, ParseMemo
from routes.registry import Registration


def data(routes: int = 50, *, endpoint: str = "http://10.0.0.5:8080") -> dict[str, Any]:
    return {"services": [{"name": "legacy", "endpoints": [endpoint]},
                         {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]}],
            "routes": [{"name": f"r{i}", "match": {"path_prefix": f"/r{i}"}, "service": "legacy"}
                       for i in range(routes)]
            + [{"name": "moving", "match": {"path_prefix": "/orders"}, "service": "legacy",
                "migration": {"to": "orders", "stage": "canary", "percent": 10}}]}


def test_a_memo_keeps_unchanged_routes_and_services_the_same_objects() -> None:
    memo = ParseMemo()
    first = Document.parse(data(), stored=True, memo=memo)
    changed = data()
    changed["routes"][3]["match"]["path_prefix"] = "/elsewhere"
    second = Document.parse(changed, stored=True, memo=memo)
    assert second == Document.parse(changed, stored=True)  # what the long way gives
    by_name = {r.name: r for r in first.routes}
    same = [r.name for r in second.routes if r is by_name[r.name]]
    assert "r3" not in same and len(same) == len(second.routes) - 1
    assert second.services[0] is first.services[0]


def test_a_memo_is_keyed_by_how_the_document_is_read() -> None:
    memo = ParseMemo()
    stored = Document.parse(data(3), stored=True, memo=memo)
    fresh = Document.parse(data(3), stored=False, memo=memo)
    assert stored == fresh
    assert all(a is not b for a, b in zip(stored.routes, fresh.routes, strict=True))


def test_a_memo_forgets_what_the_last_document_dropped() -> None:
    memo = ParseMemo()
    first = Document.parse(data(5), memo=memo)
    Document.parse(data(2), memo=memo)  # r2..r4 gone
    again = Document.parse(data(5), memo=memo)
    old = {r.name: r for r in first.routes}
    assert again.route("r4") is not old["r4"] and again.route("r4") == old["r4"]


def test_a_compiled_table_shares_what_did_not_change() -> None:
    base = Document.parse(data())
    previous = compile_document(base, 1)
    changed_data = data()
    changed_data["routes"][7]["match"]["path_prefix"] = "/seven"
    changed = Document.parse(changed_data, memo=_memo_after(data()))
    table = compile_document(changed, 2, previous=previous)
    old = {r.name: r for r in previous.routes}
    shared = {r.name for r in table.routes if r is old[r.name]}
    # the spec objects differ (two parses), so nothing is shared unless the specs are the same objects
    assert shared == set()
    memo = ParseMemo()
    base = Document.parse(data(), memo=memo)
    previous = compile_document(base, 1)
    changed = Document.parse(changed_data, memo=memo)
    table = compile_document(changed, 2, previous=previous)
    old = {r.name: r for r in previous.routes}
    assert {r.name for r in table.routes if r is not old[r.name]} == {"r7"}
    assert table.services["legacy"] is previous.services["legacy"]
    _same_answers(table, compile_document(changed, 2))


def test_a_changed_service_recompiles_the_routes_that_use_it() -> None:
    memo = ParseMemo()
    previous = compile_document(Document.parse(data(), memo=memo), 1)
    moved = Document.parse(data(endpoint="http://10.0.0.6:8080"), memo=memo)
    table = compile_document(moved, 2, previous=previous)
    assert table.services["legacy"] is not previous.services["legacy"]
    assert table.services["orders"] is previous.services["orders"]
    for route in table.routes:
        assert route.service is table.services["legacy"]
        if route.migration is not None:
            assert route.migration.from_service is table.services["legacy"]
            assert route.migration.to_service is table.services["orders"]
    _same_answers(table, compile_document(moved, 2))


def test_the_incremental_compiler_passes_its_last_table() -> None:
    memo, compiler = ParseMemo(), IncrementalCompiler()
    first = compiler(Document.parse(data(), memo=memo), 1)
    second = compiler(Document.parse(data(), memo=memo), 2)
    assert second.version == 2 and compiler.last is second
    assert all(a is b for a, b in zip(first.routes, second.routes, strict=True))


def test_the_same_document_compiled_again_is_the_last_table_renumbered() -> None:
    compiler = IncrementalCompiler()
    document = Document.parse(data())
    checked = compiler(document, 0)  # the admin API's check of a change
    live = compiler(document, 7)     # the watcher, once it is committed as version 7
    assert live.version == 7 and checked.version == 0
    assert live.routes is checked.routes and live.services is checked.services
    assert live.match("GET", "a", "/orders", b"", []) is checked.match("GET", "a", "/orders", b"", [])
    assert compiler(document, 7) is live
    # another document, even an equal one, or other registrations: compiled (incrementally)
    again = compiler(Document.parse(data()), 8)
    assert again.routes is not live.routes
    assert [r.spec for r in again.routes] == [r.spec for r in live.routes]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    registered = (Registration("orders", "https://10.0.0.9:9443", "spiffe://peel.test/svc/orders",
                               now, now, now + timedelta(hours=1)),)
    moved = compiler(document, 9, registered)
    assert moved.registered == registered and moved.services["orders"] is not live.services["orders"]


def test_the_diff_of_shared_routes_is_what_the_long_way_gives() -> None:
    memo = ParseMemo()
    before = Document.parse(data(), memo=memo)
    changed_data = copy.deepcopy(data())
    changed_data["routes"][1]["match"]["path_prefix"] = "/one"
    del changed_data["routes"][2]
    changed_data["routes"].append({"name": "new", "match": {"path_prefix": "/new"}, "service": "orders"})
    after = Document.parse(changed_data, memo=memo)
    fast = diff(before, after)
    slow = diff(Document.parse(data()), Document.parse(changed_data))
    assert fast.to_dict() == slow.to_dict()
    assert fast.summary() == "+1 route, ~1 route, -1 route"


def _memo_after(raw: dict[str, Any]) -> ParseMemo:
    memo = ParseMemo()
    Document.parse(raw, memo=memo)
    return memo


def _same_answers(a: Any, b: Any) -> None:
    """Both tables route every test request to the same route and service."""
    for path in ["/", "/r0", "/r7", "/seven", "/r7/x", "/orders", "/r42", "/nowhere"]:
        x = a.match("GET", "example.com", path, b"", [])
        y = b.match("GET", "example.com", path, b"", [])
        assert (x and (x.name, x.service.name, x.service.endpoints)) == \
            (y and (y.name, y.service.name, y.service.endpoints)), path


def test_a_derived_table_finds_its_routes_by_name_as_a_whole_one_does() -> None:
    memo, compiler = ParseMemo(), IncrementalCompiler()
    first = compiler(Document.parse(data(), memo=memo), 1)
    changed = data()
    changed["routes"][3]["match"]["path_prefix"] = "/elsewhere"   # replaced
    del changed["routes"][5]                                      # gone
    changed["routes"].append({"name": "new", "match": {"path_prefix": "/new"}, "service": "legacy"})
    table = compiler(Document.parse(changed, memo=memo), 2)  # derived: three routes compiled
    whole = compile_document(Document.parse(changed), 2)
    assert set(table.names()) == set(whole.names()) == {r["name"] for r in changed["routes"]}
    for route in table.routes:
        assert table.route(route.name) is route
    assert table.route("r5") is None and first.route("r5") is not None
    assert table.route("r3") is not first.route("r3") and table.route("r4") is first.route("r4")
