"""The declarative document: what parses, what is refused (with which field), and round trips."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from routes.errors import RuleError
from routes.model import Document, Endpoint, Match

SAMPLE = """
services:
  - name: legacy
    endpoints: [http://10.0.0.5:8080]
  - name: orders
    endpoints: [http://10.0.0.7:9000, http://10.0.0.8:9000]
routes:
  - name: orders
    match: {path_prefix: /orders, methods: [GET, POST]}
    service: orders
  - name: legacy-default
    match: {path_prefix: /}
    service: legacy
"""


def doc(services: list[dict[str, Any]] | None = None, routes: list[dict[str, Any]] | None = None
        ) -> dict[str, Any]:
    return {"services": services if services is not None else
            [{"name": "legacy", "endpoints": ["http://127.0.0.1:8081"]}],
            "routes": routes or []}


def route(**fields: Any) -> dict[str, Any]:
    return {"name": "r", "service": "legacy", **fields}


def test_design_example_parses_and_round_trips() -> None:
    document = Document.parse(yaml.safe_load(SAMPLE))
    assert [s.name for s in document.services] == ["legacy", "orders"]
    assert [r.name for r in document.routes] == ["legacy-default", "orders"]
    assert document.route("orders") is not None
    assert document.route("orders").match.methods == ("GET", "POST")  # type: ignore[union-attr]
    again = Document.parse(yaml.safe_load(yaml.safe_dump(document.to_dict())))
    assert again == document
    assert again.to_dict() == document.to_dict()


def test_every_field_round_trips() -> None:
    data = doc(routes=[route(
        name="full", priority=5,
        match={"hosts": ["api.example.com", "*.example.org"], "path_template": "/orders/{id}",
               "methods": ["GET"], "headers": [{"name": "X-Beta", "value": "1"},
                                               {"name": "X-Trace", "present": False}],
               "query": [{"name": "debug", "regex": "^(1|true)$"}],
               "cookies": [{"name": "session", "present": True}]},
        rewrite={"path_regex": "^/orders/(.*)$", "replacement": r"/v2/orders/\1",
                 "host": "orders.internal:9000",
                 "request_headers": {"set": {"X-From": "peel"}, "add": {"Via": "peel"},
                                     "remove": ["Cookie"]},
                 "response_headers": {"remove": ["Server"]}})])
    document = Document.parse(data)
    assert document.to_dict() == data
    assert Document.parse(document.to_dict()) == document


def test_endpoint_default_ports_and_ipv6() -> None:
    assert Endpoint.parse("http://svc", "e").port == 80
    assert Endpoint.parse("https://svc", "e").port == 443
    assert Endpoint.parse("http://[::1]:9000", "e").url == "http://[::1]:9000"
    assert Endpoint.parse("http://API.Example.com:81/", "e").url == "http://api.example.com:81"


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top-level field", {"servicez": []}, "servicez"),
    ("unknown service field", doc([{"name": "a", "endpoints": ["http://x:1"], "weight": 1}]),
     "services[0].weight"),
    ("service without endpoints", doc([{"name": "a", "endpoints": []}]), "services[a].endpoints"),
    ("endpoint not a URL", doc([{"name": "a", "endpoints": ["10.0.0.1:80"]}]),
     "services[a].endpoints[0]"),
    ("endpoint with a path", doc([{"name": "a", "endpoints": ["http://x:1/api"]}]),
     "services[a].endpoints[0]"),
    ("endpoint bad port", doc([{"name": "a", "endpoints": ["http://x:99999"]}]),
     "services[a].endpoints[0]"),
    ("endpoint listed twice", doc([{"name": "a", "endpoints": ["http://x:1", "http://X:1"]}]),
     "services[a].endpoints[1]"),
    ("duplicate service", doc([{"name": "a", "endpoints": ["http://x:1"]},
                               {"name": "a", "endpoints": ["http://y:1"]}]), "services[a].name"),
    ("bad service name", doc([{"name": "Bad Name", "endpoints": ["http://x:1"]}]),
     "services[0].name"),
    ("route without service", doc(routes=[{"name": "r"}]), "routes[r].service"),
    ("unknown service", doc(routes=[route(service="nope")]), "routes[r].service"),
    ("duplicate route", doc(routes=[route(match={"path": "/a"}), route(match={"path": "/b"})]),
     "routes[r].name"),
    ("bad regex", doc(routes=[route(match={"path_regex": "(unclosed"})]),
     "routes[r].match.path_regex"),
    ("two path kinds", doc(routes=[route(match={"path": "/a", "path_prefix": "/a"})]),
     "routes[r].match.path_prefix"),
    ("path without slash", doc(routes=[route(match={"path_prefix": "orders"})]),
     "routes[r].match.path_prefix"),
    ("prefix with trailing slash", doc(routes=[route(match={"path_prefix": "/orders/"})]),
     "routes[r].match.path_prefix"),
    ("template half segment", doc(routes=[route(match={"path_template": "/o/x{id}"})]),
     "routes[r].match.path_template"),
    ("lower-case method", doc(routes=[route(match={"methods": ["get"]})]),
     "routes[r].match.methods[0]"),
    ("host with port", doc(routes=[route(match={"hosts": ["a.com:80"]})]),
     "routes[r].match.hosts[0]"),
    ("header predicate with two forms",
     doc(routes=[route(match={"headers": [{"name": "X", "value": "1", "present": True}]})]),
     "routes[r].match.headers[0]"),
    ("bad header name", doc(routes=[route(match={"headers": [{"name": "X Y", "value": "1"}]})]),
     "routes[r].match.headers[0].name"),
    ("unknown match field", doc(routes=[route(match={"paths": "/"})]), "routes[r].match.paths"),
    ("priority not an int", doc(routes=[route(priority="high")]), "routes[r].priority"),
    ("regex without replacement", doc(routes=[route(rewrite={"path_regex": "^/a"})]),
     "routes[r].rewrite.replacement"),
    ("replacement group missing",
     doc(routes=[route(rewrite={"path_regex": "^/a", "replacement": r"/\2"})]),
     "routes[r].rewrite.replacement"),
    ("prefix rewrite without prefix match",
     doc(routes=[route(match={"path": "/a"}, rewrite={"path_prefix": "/b"})]),
     "routes[r].rewrite.path_prefix"),
    ("header value with newline",
     doc(routes=[route(rewrite={"request_headers": {"set": {"X-A": "a\r\nB: c"}}})]),
     "routes[r].rewrite.request_headers.set.X-A"),
    ("same match and priority",
     doc(routes=[route(name="a", match={"path_prefix": "/x", "methods": ["GET", "POST"]}),
                 route(name="b", match={"methods": ["POST", "GET"], "path_prefix": "/x"})]),
     "routes[b].match"),
]


@pytest.mark.parametrize(("data", "field"), [(d, f) for _, d, f in REFUSED],
                         ids=[name for name, _, _ in REFUSED])
def test_refused_documents_name_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(RuleError) as caught:
        Document.parse(data)
    assert caught.value.field == field
    assert field in str(caught.value)


def test_same_match_with_another_priority_is_allowed() -> None:
    Document.parse(doc(routes=[route(name="a", match={"path": "/x"}),
                               route(name="b", match={"path": "/x"}, priority=1)]))


def test_refusal_carries_the_value() -> None:
    with pytest.raises(RuleError) as caught:
        Document.parse(doc([{"name": "a", "endpoints": ["ftp://x"]}]))
    assert caught.value.value == "ftp://x"


names = st.from_regex(r"^[a-z][a-z0-9-]{0,10}[a-z0-9]$", fullmatch=True)


@given(st.lists(names, min_size=1, max_size=6, unique=True),
       st.lists(st.from_regex(r"^(/[a-z0-9]{1,5}){1,3}$", fullmatch=True), max_size=6, unique=True))
def test_round_trip_property(service_names: list[str], prefixes: list[str]) -> None:
    services = [{"name": n, "endpoints": [f"http://h{i}:80{i}"]} for i, n in enumerate(service_names)]
    routes = [{"name": f"r{i}", "match": {"path_prefix": p}, "service": service_names[i % len(service_names)]}
              for i, p in enumerate(prefixes)]
    document = Document.parse({"services": services, "routes": routes})
    assert Document.parse(document.to_dict()) == document


def test_a_service_of_sidecars_may_leave_its_endpoints_to_the_registry() -> None:
    from datetime import UTC, datetime, timedelta

    from routes.compiler import compile_document
    from routes.registry import Registration

    identity = "spiffe://peel.internal/svc/payments"
    data = doc([{"name": "payments", "endpoints": [], "identity": identity,
                 "health_check": {"path": "/healthz"}}],
               routes=[route(service="payments")])
    document = Document.parse(data)
    assert document.services[0].endpoints == ()
    assert Document.parse(document.to_dict()) == document
    assert compile_document(document, 1).services["payments"].endpoints == ()  # 503 until one joins
    now = datetime.now(UTC)
    joined = Registration("payments", "https://10.0.2.15:15443", identity, now, now,
                          now + timedelta(seconds=30))
    service = compile_document(document, 2, [joined]).services["payments"]
    assert [e.url for e in service.endpoints] == ["https://10.0.2.15:15443"]
    assert service.endpoints[0].tls is not None and service.endpoints[0].tls.identity == identity
    assert service.health_check is not None  # the document's policies apply to registered endpoints


def test_what_routes_do_not_set_is_shared_not_held_per_route() -> None:
    # a 10,000-route table keeps every Route in memory: empty sets, header rules and rewrites were
    # a third of a plain route's size (five 216-byte frozensets, two HeaderRules, a Rewrite)
    import tracemalloc

    from routes.model import NO_HEADER_RULES, NO_REWRITE

    data = {"routes": [{"name": f"r{i}", "match": {"path_prefix": f"/r{i}"}, "service": "s"}
                       for i in range(2000)],
            "services": [{"name": "s", "endpoints": ["http://127.0.0.1:9"]}]}
    tracemalloc.start()
    try:
        document = Document.parse(data)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size / len(document.routes) < 1000, size / len(document.routes)  # 1,772 before
    plain = document.routes[0]
    assert plain.rewrite is NO_REWRITE and plain.rewrite.request_headers is NO_HEADER_RULES
    assert plain.match.key() == (1, "/r0")  # a prefix and nothing else: no empty sets in its key
    edited = Document.parse({**data, "routes": [
        {"name": "e", "match": {"methods": ["GET"]}, "service": "s",
         "rewrite": {"request_headers": {"set": {"x-a": "1"}}}}]})
    route = edited.routes[0]
    assert route.rewrite.request_headers.set == (("x-a", "1"),)
    assert route.rewrite.response_headers is NO_HEADER_RULES
    assert route.match.key() == (4, None, frozenset(), frozenset({"GET"}))


def test_a_match_key_is_the_same_for_matches_that_take_the_same_requests() -> None:
    def key(**match: Any) -> tuple[object, ...]:
        return Match.parse(match, "m").key()

    assert key(hosts=["b.example", "a.example"], methods=["POST", "GET"], path_prefix="/x") == \
        key(path_prefix="/x", methods=["GET", "POST"], hosts=["a.example", "b.example"])
    assert key(headers=[{"name": "X-A", "value": "1"}, {"name": "x-b", "present": True}]) == \
        key(headers=[{"name": "x-b", "present": True}, {"name": "x-a", "value": "1"}])
    # the path's kind counts, and so does each predicate, wherever it stands
    assert len({key(path="/x"), key(path_prefix="/x"), key(path_template="/x"),
                key(path_regex="/x"), key()}) == 5
    assert key(path="/x", cookies=[{"name": "c", "value": "1"}]) != key(path="/x")
    assert key(path="/x", query=[{"name": "c", "value": "1"}]) != \
        key(path="/x", cookies=[{"name": "c", "value": "1"}])


def test_the_routes_of_one_service_share_its_name() -> None:
    # each route's service name comes from its own JSON string; one object for all of them
    import json
    data = json.loads(json.dumps(doc(routes=[route(name=f"r{i}", match={"path_prefix": f"/r{i}"})
                                             for i in range(3)])))
    names = [r["service"] for r in data["routes"]]
    assert names[0] is not names[1]
    routes = Document.parse(data).routes
    assert routes[0].service is routes[1].service is routes[2].service == "legacy"
