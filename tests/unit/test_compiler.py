"""`compile_document`: the route table's shape, its services, hosts and immutability."""

from __future__ import annotations

import pytest
import yaml

from routes.compiler import compile_document
from routes.errors import RuleError
from routes.model import Document, Endpoint, Route, Service
from routes.table import RouteTable

DOCUMENT = """
services:
  - name: legacy
    endpoints: [http://10.0.0.5:8080]
  - name: orders
    endpoints: [http://10.0.0.7:9000, http://10.0.0.8:9000, https://10.0.0.9]
routes:
  - name: orders
    match: {path_prefix: /orders, methods: [GET, POST]}
    service: orders
    rewrite: {path_prefix: /v2/orders, host: orders.internal}
  - name: api
    match: {hosts: [api.example.com, "*.tenants.example.com"], path_prefix: /}
    service: orders
  - name: legacy-default
    match: {path_prefix: /}
    service: legacy
"""


@pytest.fixture
def table() -> RouteTable:
    return compile_document(Document.parse(yaml.safe_load(DOCUMENT)), 7)


def test_table_lists_routes_and_services(table: RouteTable) -> None:
    assert table.version == 7
    assert [r.name for r in table.routes] == ["api", "legacy-default", "orders"]
    assert set(table.services) == {"legacy", "orders"}
    orders = table.services["orders"]
    assert orders.name == "orders"
    assert [e.url for e in orders.endpoints] == ["http://10.0.0.7:9000", "http://10.0.0.8:9000",
                                                  "https://10.0.0.9:443"]
    route = table.route("orders")
    assert route is not None
    assert route.service is orders
    assert route.spec.match.methods == ("GET", "POST")
    assert route.priority == 0
    assert route.upstream_host == "orders.internal"
    assert route.rewrite_path("/orders/5") == "/v2/orders/5"


def test_match_uses_the_seam_arguments(table: RouteTable) -> None:
    hit = table.match("POST", "shop.example.com", "/orders/5", b"", [(b"host", b"shop.example.com")])
    assert hit is not None and hit.name == "orders" and hit.service.name == "orders"
    miss = table.match("DELETE", "shop.example.com", "/orders/5", b"", [])
    assert miss is not None and miss.name == "legacy-default"
    by_host = table.match("DELETE", "acme.tenants.example.com", "/orders/5", b"", [])
    assert by_host is not None and by_host.name == "api"


def test_routes_host(table: RouteTable) -> None:
    assert table.routes_host("api.example.com")
    assert table.routes_host("acme.tenants.example.com")
    assert table.routes_host("a.b.tenants.example.com")
    assert not table.routes_host("tenants.example.com")   # the bare suffix is not named
    assert not table.routes_host("www.example.com")
    assert not table.routes_host("evil.org")              # a hostless route names no host


def test_table_is_immutable(table: RouteTable) -> None:
    with pytest.raises(TypeError):
        table.services["x"] = table.services["legacy"]  # type: ignore[index]
    assert isinstance(table.routes, tuple)
    with pytest.raises(AttributeError):
        table.version = 8
    with pytest.raises(AttributeError):
        table.routes[0].service = table.services["legacy"]


def test_empty_document_gives_an_empty_table() -> None:
    table = compile_document(Document(), 0)
    assert table.version == 0 and table.routes == () and dict(table.services) == {}
    assert table.match("GET", "example.com", "/", b"", []) is None
    assert not table.routes_host("example.com")


def test_a_route_naming_no_service_is_refused() -> None:
    # Document.parse refuses this already; the compiler must not trust a hand-built document.
    document = Document(services=(Service("legacy", (Endpoint("http", "127.0.0.1", 80),)),),
                        routes=(Route.parse({"name": "r", "service": "ghost"}, "routes[0]"),))
    with pytest.raises(RuleError) as info:
        compile_document(document, 1)
    assert info.value.field == "routes[r].service"


def test_compiling_twice_gives_independent_equal_tables() -> None:
    document = Document.parse(yaml.safe_load(DOCUMENT))
    one, two = compile_document(document, 1), compile_document(document, 2)
    assert one.services["orders"] is not two.services["orders"]
    for path in ("/orders", "/x", "/orders/1/2"):
        a = one.match("GET", "h", path, b"", [])
        b = two.match("GET", "h", path, b"", [])
        assert a is not None and b is not None and a.name == b.name


def test_many_routes_compile_and_match() -> None:
    services = [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]}]
    routes = [{"name": f"r{i}", "match": {"path_prefix": f"/s{i % 100}/r{i}"}, "service": "legacy"}
              for i in range(3000)]
    routes += [{"name": f"t{i}", "match": {"hosts": [f"h{i}.example.com"], "path_template": "/x/{id}"},
                "service": "legacy"} for i in range(500)]
    table = compile_document(Document.parse({"services": services, "routes": routes}), 1)
    for i in (0, 1234, 2999):
        hit = table.match("GET", "a", f"/s{i % 100}/r{i}/deep/path", b"", [])
        assert hit is not None and hit.name == f"r{i}"
    hit = table.match("GET", "h42.example.com", "/x/9", b"", [])
    assert hit is not None and hit.name == "t42"
    assert table.match("GET", "h42.example.com", "/x/9/more", b"", []) is None
    assert len(table.candidates("h42.example.com", "/x/9")) == 1
