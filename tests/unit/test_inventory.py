"""The inventory (`facade.inventory`): log lines read, paths folded into templates under the
cardinality cap, the numbers of each template, and the share still answered by legacy."""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from facade.inventory import MAX_VALUES, Entry, Inventory, parse_line, shape
from gateway.cli import inventory as command

COMBINED = '10.0.0.1 - ada [06/Dec/2026:10:00:00 +0000] "{request}" {status} 512 "-" "curl/7.88"{tail}'
COMMON = '10.0.0.1 - - [06/Dec/2026:10:00:00 +0000] "{request}" {status} -'


def combined(request: str, status: int = 200, tail: str = "") -> str:
    return COMBINED.format(request=request, status=status, tail=tail)


def peel_line(path: str, *, method: str = "GET", status: int = 200, ms: float = 3.0,
              service: str | None = "legacy", side: str | None = None) -> str:
    return json.dumps({"time": "2026-12-06T10:00:00.000Z", "method": method, "path": path, "route": "r",
                       "service": service, "side": side, "status": status, "duration_ms": ms})


def test_lines_of_nginx_apache_and_peel() -> None:
    assert parse_line(combined("GET /orders/42?expand=1 HTTP/1.1", 200, " rt=0.012")) == \
        Entry("GET", "/orders/42", 200, 12.0)
    assert parse_line(combined("GET /a HTTP/1.1", 200, " request_time=1.5 upstream=x")) == \
        Entry("GET", "/a", 200, 1500.0)
    # a bare last field: nginx's $request_time (seconds, a decimal point), Apache's %D (microseconds)
    assert parse_line(combined("GET /a HTTP/1.1", 200, " 0.250")) == Entry("GET", "/a", 200, 250.0)
    assert parse_line(combined("GET /a HTTP/1.1", 200, " 4200")) == Entry("GET", "/a", 200, 4.2)
    assert parse_line(COMMON.format(request="DELETE /b/ HTTP/1.0", status=204)) == Entry("DELETE", "/b/", 204)
    assert parse_line(combined("GET http://shop.example/c/d?x HTTP/1.1")) == Entry("GET", "/c/d", 200)
    assert parse_line(combined('GET /q\\"x HTTP/1.1')) == Entry("GET", '/q\\"x', 200)
    assert parse_line(peel_line("/orders/7", status=502, ms=31.5, side="from")) == \
        Entry("GET", "/orders/7", 502, 31.5, "legacy", "from")
    assert parse_line('{"method":"GET","path":"/x","status":0,"duration_ms":null,"service":null}') == \
        Entry("GET", "/x", 0)


def test_lines_with_no_request_to_map_are_none() -> None:
    for line in ("", "garbage", combined("-", 400), combined("\\x16\\x03\\x01", 400),
                 combined("OPTIONS * HTTP/1.1"), combined("CONNECT shop:443 HTTP/1.1"),
                 combined("GET /a"), "{not json", "[1, 2]", '{"method": "GET", "path": "/x"}',
                 '{"method": "GET", "path": 3, "status": 200}', '{"method":"GET","path":"/","status":true}'):
        assert parse_line(line) is None, line


def test_segments_shaped_like_values_are_placeholders() -> None:
    assert shape("42") == "{int}"
    assert shape("3f2a9c0d-7e1b-4a55-8f2a-9c0d7e1b4a55") == "{uuid}"
    assert shape("4bf92f3577b34da6a3ce929d0e0e4736") == "{hex}"
    assert shape("2026-12-06") == "{date}"
    assert shape("eyJhbGciOiJIUzI1NiJ9abc123") == "{token}"
    for literal in ("orders", "v2", "deadbeef", "profile-settings-page", "", "café"):
        assert shape(literal) is None, literal


def test_paths_fold_into_templates_with_their_numbers() -> None:
    inventory = Inventory()
    for i in range(100):
        inventory.add(Entry("GET", f"/orders/{i}", 500 if i < 5 else 200, float(i + 1)))
    inventory.add(Entry("POST", "/orders", 201, 10.0))
    inventory.add(Entry("GET", "/", 200))
    rows = {(r.method, r.template): r for r in inventory.rows()}
    assert list(rows) == [("GET", "/orders/{int}"), ("GET", "/"), ("POST", "/orders")]
    ids = rows[("GET", "/orders/{int}")]
    assert ids.requests == 100 and abs(ids.share - 100 / 102) < 1e-9
    assert ids.statuses == (0, 0, 95, 0, 0, 5) and ids.errors == 0.05
    assert ids.examples == ("/orders/0", "/orders/1", "/orders/2")
    assert ids.p50_ms is not None and ids.p99_ms is not None
    assert abs(ids.p50_ms - 50) / 50 < 0.05 and abs(ids.p99_ms - 99) / 99 < 0.05  # 5 % buckets
    assert rows[("GET", "/")].p50_ms is None  # no line gave its time
    assert rows[("POST", "/orders")].p50_ms == rows[("POST", "/orders")].p99_ms == 10.0  # clamped: one seen
    assert ids.on_legacy is None  # the lines name no service


def test_more_literals_than_the_cap_after_one_prefix_become_a_param() -> None:
    inventory = Inventory(max_values=3)
    for name in ("ada", "bob", "cy"):
        inventory.add(Entry("GET", f"/users/{name}/profile", 200))
        inventory.add(Entry("GET", f"/users/{name}/orders/1", 200))
    assert len(inventory.rows()) == 6  # three literals after /users: at the cap, kept
    inventory.add(Entry("GET", "/users/dee/profile", 404))  # the fourth: all of them folded
    inventory.add(Entry("GET", "/users/eve/orders/2", 200))  # and the ones after go there too
    inventory.add(Entry("GET", "/users/search", 200))
    rows = {r.template: r for r in inventory.rows()}
    assert set(rows) == {"/users/{param}/profile", "/users/{param}/orders/{int}", "/users/{param}"}
    assert rows["/users/{param}/profile"].requests == 4
    assert rows["/users/{param}/profile"].statuses[4] == 1
    assert rows["/users/{param}/orders/{int}"].requests == 4
    assert rows["/users/{param}/profile"].examples == ("/users/ada/profile", "/users/bob/profile",
                                                      "/users/cy/profile")
    # other prefixes keep their literals
    inventory.add(Entry("GET", "/health", 200))
    assert "/health" in {r.template for r in inventory.rows()}


def test_a_merge_that_brings_too_many_literals_together_folds_them_too() -> None:
    inventory = Inventory(max_values=2)
    # under each of two ids, two different literals: four once they are merged under {param}
    inventory.add(Entry("GET", "/t/a/x", 200))
    inventory.add(Entry("GET", "/t/a/y", 200))
    inventory.add(Entry("GET", "/t/b/z", 200))
    inventory.add(Entry("GET", "/t/b/w", 200))
    inventory.add(Entry("GET", "/t/c/v", 200))  # the third literal after /t: folds a and b together
    assert {r.template for r in inventory.rows()} == {"/t/{param}/{param}"}
    assert inventory.rows()[0].requests == 5
    assert inventory.nodes == 4  # root, t, {param}, {param}: the merged nodes are not counted


def test_a_scan_of_a_million_paths_stays_small() -> None:
    inventory = Inventory()
    rand = random.Random(7)
    letters = "abcdefghijklmnopqrstuvwxyz"
    for _ in range(20_000):
        words = ["".join(rand.choices(letters, k=rand.randint(3, 9))) for _ in range(rand.randint(1, 4))]
        inventory.add(Entry("GET", "/" + "/".join(words), 404))
    assert inventory.nodes < 100
    assert sum(r.requests for r in inventory.rows()) == 20_000


def test_the_node_bound_holds_against_any_cap() -> None:
    inventory = Inventory(max_values=1000, max_nodes=50)
    for i in range(200):
        inventory.add(Entry("GET", f"/p{i}/q{i}", 200))
    reached = inventory.nodes
    assert reached <= 50 + 4  # past the bound, a `{param}` at most per position (two here, twice)
    for i in range(200, 2000):
        inventory.add(Entry("GET", f"/p{i}/q{i}", 200))
    assert inventory.nodes == reached
    assert sum(r.requests for r in inventory.rows()) == 2000


def test_made_up_methods_past_the_bound_count_as_other() -> None:
    inventory = Inventory()
    for i in range(100):
        inventory.add(Entry("X" + "ABCDEFGHIJ"[i % 10] + "ABCDEFGHIJ"[i // 10], "/", 405))
    inventory.add(Entry("GET", "/", 200))
    methods = {r.method: r.requests for r in inventory.rows()}
    assert len(methods) == 18 and methods["OTHER"] == 84 and methods["GET"] == 1  # standard: kept
    assert sum(methods.values()) == 101


def test_the_share_on_legacy_from_peel_s_lines() -> None:
    inventory = Inventory()
    for line in [peel_line("/orders/1", service="monolith", side="from")] * 3 + \
            [peel_line("/orders/2", service="orders", side="to")] + \
            [peel_line("/about", service="monolith")] * 2 + [peel_line("/blog", service="blog")]:
        inventory.add_line(line)
    rows = {r.template: r for r in inventory.rows()}
    # monolith is the `from` side of a migration: it is legacy on the routes not migrated too
    assert rows["/orders/{int}"].on_legacy == 0.75
    assert rows["/about"].on_legacy == 1.0 and rows["/blog"].on_legacy == 0.0
    assert rows["/orders/{int}"].services == (("monolith", "from", 3), ("orders", "to", 1))
    # no migration in the log: only the services the caller names are legacy, and none named: unknown
    alone = Inventory()
    alone.add_line(peel_line("/about", service="monolith"))
    assert alone.rows()[0].on_legacy is None
    assert alone.rows(legacy={"monolith"})[0].on_legacy == 1.0


def test_unreadable_lines_are_counted_and_the_first_kept() -> None:
    inventory = Inventory()
    inventory.add_lines(["\n", "nonsense\n", combined("GET /a HTTP/1.1") + "\n", combined("-", 400), "  \n"])
    assert (inventory.lines, inventory.unreadable, inventory.first_unreadable) == (3, 2, "nonsense")
    assert inventory.requests == 1


segment = st.one_of(st.sampled_from(["a", "b", "c", "d", "users", "orders", "", "v1"]),
                    st.integers(0, 10**6).map(str), st.text("xyz", min_size=1, max_size=3))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(segment, min_size=1, max_size=5), min_size=1, max_size=60), st.integers(1, 4))
def test_no_request_is_lost_or_counted_twice_whatever_folds(paths: list[list[str]], cap: int) -> None:
    inventory = Inventory(max_values=cap)
    for parts in paths:
        inventory.add(Entry("GET", "/" + "/".join(parts), 200, 1.0))
    rows = inventory.rows()
    assert sum(r.requests for r in rows) == len(paths)
    assert len({(r.method, r.template) for r in rows}) == len(rows)
    assert all(r.template.startswith("/") for r in rows)
    assert inventory.nodes == _count(inventory.root)


def _count(node: object) -> int:
    return 1 + sum(_count(child) for child in node.children.values())  # type: ignore[attr-defined]


def test_the_command_s_default_cap_is_the_inventory_s() -> None:
    assert command.DEFAULT_MAX_VALUES == MAX_VALUES
