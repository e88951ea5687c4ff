"""The outbound listener's classification and derived tables, and CONNECT parsing (issue 14, pure)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.core.asgi import TARGET
from gateway.dataplane.outbound import (
    SERVICE_ROUTE,
    Destination,
    OutboundApp,
    Refused,
    app_endpoint,
    classify,
    follow_derived,
    outbound_table,
    sidecar_table,
)
from gateway.edge.outbound import connect_allowed, parse_connect
from routes.compiler import compile_document
from routes.errors import RuleError
from routes.holder import TableHolder
from routes.model import Document
from routes.table import RouteTable

DOCUMENT = {
    "services": [
        {"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
        {"name": "orders", "endpoints": ["https://10.0.2.15:15443"],
         "identity": "spiffe://peel.internal/svc/orders"},
        {"name": "payments", "endpoints": ["http://10.0.3.1:9000"]},
    ],
    "routes": [
        {"name": "default", "match": {"path_prefix": "/"}, "service": "legacy"},
        {"name": "payments-api", "match": {"hosts": ["payments"], "path_prefix": "/api"},
         "service": "payments", "authorization": {"allow_from": ["orders"]}},
        {"name": "shop", "match": {"hosts": ["shop.example.com"]}, "service": "legacy",
         "migration": {"to": "orders", "stage": "canary", "percent": 10}},
        {"name": "orders-by-path", "match": {"path_prefix": "/orders"}, "service": "orders"},
    ],
}


def table() -> RouteTable:
    return compile_document(Document.parse(DOCUMENT), 7)


def test_every_service_name_is_a_destination_and_unknown_hosts_are_not() -> None:
    out = outbound_table(table())
    assert out.version == 7
    # orders and legacy get a route for their own host; payments keeps the routes that name it
    assert out.route(f"{SERVICE_ROUTE}orders") is not None
    assert out.route(f"{SERVICE_ROUTE}legacy") is not None
    assert out.route(f"{SERVICE_ROUTE}payments") is None
    for host in ("orders", "legacy", "payments", "shop.example.com"):
        assert out.routes_host(host), host
    assert not out.routes_host("example.com")
    # the service's own host beats the host-less default route on any path
    route = out.match("GET", "orders", "/anything", b"", [])
    assert route is not None and route.service.name == "orders"
    # authorization is left to the destination's inbound listener
    payments = out.route("payments-api")
    assert payments is not None and payments.authorization is None
    assert table().route("payments-api").authorization is not None  # type: ignore[union-attr]


@pytest.mark.parametrize(("target", "host", "port", "expected"), [
    (b"http://orders/x", None, 15001, Destination("orders")),
    (b"http://ORDERS.:80/x?y=1", None, 15001, Destination("orders")),
    (b"http://shop.example.com/", b"ignored", 15001, Destination("shop.example.com")),
    (b"/x", b"payments:8080", 15001, Destination("payments")),
    (b"/x", b"orders", 15101, Destination("orders", service_port=True)),
    (b"http://example.com/x", None, 15101, Destination("orders", service_port=True)),
    (b"/x", b"payments", 15102, Refused(503, "unknown-service", "")),
    (b"http://example.com/", None, 15001, Refused(403, "unknown-destination", "")),
    (b"http://10.0.0.5:8080/", None, 15001, Refused(403, "unknown-destination", "")),
    (b"/x", b"example.com", 15001, Refused(403, "unknown-destination", "")),
    (b"ftp://orders/x", None, 15001, Refused(400, "bad-target", "")),
    (b"/x", None, 15001, None),            # no Host: the resolve step refuses it
    (b"/x", b"bad host", 15001, None),     # a malformed Host: the same
])
def test_classify(target: bytes, host: bytes | None, port: int,
                  expected: Destination | Refused | None) -> None:
    found = classify(outbound_table(table()), target, host, port, {15101: "orders", 15102: "nothing"})
    if isinstance(expected, Refused):
        assert isinstance(found, Refused) and (found.status, found.code) == (expected.status, expected.code)
        if found.code == "unknown-destination":
            assert "not an open proxy" in found.detail
    else:
        assert found == expected


def test_no_table_yet_is_left_to_the_resolve_step() -> None:
    assert classify(None, b"http://example.com/", None, 15001, {}) is None


def test_sidecar_table_sends_its_services_routes_to_the_local_app() -> None:
    app = app_endpoint("http://127.0.0.1:9000")
    inbound = sidecar_table(table(), "orders", app)
    assert inbound.services["orders"].endpoints == (app,)
    assert inbound.services["orders"].tls is None
    assert set(inbound.services) == {"orders"}
    names = {r.name for r in inbound.routes}
    # its own route, a migration towards it (without the migration), its own host
    assert names == {"orders-by-path", "shop", f"{SERVICE_ROUTE}orders"}
    shop = inbound.route("shop")
    assert shop is not None and shop.migration is None and shop.service.name == "orders"
    assert inbound.match("GET", "legacy", "/x", b"", []) is None  # the default route is not its
    payments = sidecar_table(table(), "payments", app)
    route = payments.match("GET", "payments", "/api/x", b"", [])
    assert route is not None and route.authorization is not None  # checked here, by identity
    # a service the table does not (yet) hold: its own host only
    unknown = sidecar_table(table(), "billing", app)
    assert [r.name for r in unknown.routes] == [f"{SERVICE_ROUTE}billing"]


def test_follow_derived_swaps_with_the_source_and_keeps_the_last_good() -> None:
    source = TableHolder()
    calls: list[int] = []

    def build(t: RouteTable) -> RouteTable:
        calls.append(t.version)
        if t.version == 8:
            raise RuleError("routes[x].match", "cannot be derived")
        return outbound_table(t)

    derived = follow_derived(source, build)
    assert derived.table is None
    source.swap(table())
    assert derived.table is not None and derived.table.version == 7
    other = Document.parse({"services": [{"name": "a", "endpoints": ["http://x:1"]}], "routes": []})
    source.swap(compile_document(other, 8))
    assert derived.table.version == 7  # the last good one stays
    source.swap(compile_document(other, 9))
    assert derived.table.version == 9 and derived.table.routes_host("a")
    assert calls == [7, 8, 9]


def run(app: OutboundApp, scope: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    passed: list[dict[str, Any]] = []

    async def proxy(scope: Any, receive: Any, send: Any) -> None:
        passed.append(scope)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    app._proxy = proxy
    asyncio.run(app(scope, receive, send))
    return sent, passed


def scope(target: bytes, headers: list[tuple[bytes, bytes]], port: int = 15001) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/x", "raw_path": b"/x", "query_string": b"",
            "headers": headers, "server": ("127.0.0.1", port), "extensions": {TARGET: target}}


def test_the_app_strips_proxy_headers_refuses_and_counts() -> None:
    holder = TableHolder()
    holder.swap(outbound_table(table()))
    app = OutboundApp(None, holder, service_ports={15101: "orders"})  # type: ignore[arg-type]
    sent, passed = run(app, scope(b"http://orders/x", [(b"host", b"orders"), (b"proxy", b"http://evil:1"),
                                                     (b"proxy-authorization", b"Basic eA=="),
                                                     (b"accept", b"*/*")]))
    assert not sent and passed[0]["headers"] == [(b"host", b"orders"), (b"accept", b"*/*")]
    sent, passed = run(app, scope(b"http://example.com/", [(b"host", b"example.com")]))
    assert not passed and sent[0]["status"] == 403
    assert json.loads(sent[1]["body"])["code"] == "unknown-destination"
    assert app.counts.refused == {"unknown-destination": 1}
    assert app.counts.forwarded == {"orders": 1}
    # the service port: its service is the Host, an absolute-form target is read as a path
    sent, passed = run(app, scope(b"http://example.com/x", [(b"host", b"example.com")], port=15101))
    assert not sent and passed[0]["headers"] == [(b"host", b"orders")]
    assert passed[0]["extensions"][TARGET] is None


@pytest.mark.parametrize(("line", "expected"), [
    (b"CONNECT api.github.com:443 HTTP/1.1", ("api.github.com", 443)),
    (b"CONNECT API.GitHub.com:443 HTTP/1.0", ("api.github.com", 443)),
    (b"CONNECT [::1]:8443 HTTP/1.1", ("::1", 8443)),
    (b"CONNECT api.github.com HTTP/1.1", None),
    (b"CONNECT api.github.com:0 HTTP/1.1", None),
    (b"CONNECT api.github.com:99999 HTTP/1.1", None),
    (b"CONNECT http://x/ HTTP/1.1", None),
    (b"CONNECT a b:1 HTTP/1.1", None),
    (b"CONNECT a:1 HTTP/2", None),
    (b"GET a:1 HTTP/1.1", None),
])
def test_parse_connect(line: bytes, expected: tuple[str, int] | None) -> None:
    assert parse_connect(line) == expected


@pytest.mark.parametrize(("host", "port", "allowed"), [
    ("api.github.com", 443, True),
    ("api.github.com", 80, False),
    ("github.com", 443, False),
    ("s3.eu.example.com", 443, True),
    ("example.com", 443, False),     # *.example.com needs one more label
    ("evil-example.com", 443, False),
    ("10.0.0.9", 5432, True),
])
def test_connect_allow_list(host: str, port: int, allowed: bool) -> None:
    allow = ("api.github.com:443", "*.example.com:443", "10.0.0.9:5432")
    assert connect_allowed(host, port, allow) is allowed
    assert not connect_allowed(host, port, ())


def test_proxy_header_never_reaches_an_upstream_from_any_listener() -> None:
    """httpoxy: the public and inbound listeners strip `Proxy` too (the hop-by-hop rules)."""
    from gateway.http.headers import strip_hop_by_hop

    headers = [(b"proxy", b"http://evil.example:1"), (b"accept", b"*/*")]
    assert strip_hop_by_hop(headers) == [(b"accept", b"*/*")]


def test_a_peer_gateway_of_the_trust_domain_sets_the_deadline() -> None:
    """The caller's hop sends its remaining budget; the peer's inbound listener honours it from an
    mTLS peer of its trust domain whatever its address, and from nobody else outside the trusted
    networks."""
    from gateway.core.asgi import Peer
    from gateway.core.settings import DeadlineSettings
    from gateway.dataplane.resolve import Incoming, Resolution, Resolver
    from gateway.policy.deadline import DeadlineRules

    resolver = Resolver(deadlines=DeadlineRules(DeadlineSettings()), trust_domain="peel.internal")
    inbound = sidecar_table(table(), "orders", app_endpoint("http://127.0.0.1:9000"))
    headers = [(b"host", b"orders"), (b"peel-timeout-ms", b"500")]

    def deadline(peer: Peer | None) -> float | None:
        found = resolver.resolve(inbound, Incoming("GET", b"/x", b"", list(headers), "10.0.3.7",
                                                   peer=peer), 100.0)
        assert isinstance(found, Resolution), found
        assert all(name != b"peel-timeout-ms" for name, _ in found.headers)
        return found.deadline

    gateway = Peer("spiffe://peel.internal/svc/monolith", mtls=True, strict=False, address="10.0.3.7")
    assert deadline(gateway) == pytest.approx(100.5)
    foreign = Peer("spiffe://other.example/svc/monolith", mtls=True, strict=False, address="10.0.3.7")
    assert deadline(foreign) is None
    assert deadline(Peer(None, mtls=False, strict=False, address="10.0.3.7")) is None
    assert deadline(None) is None


def test_a_peer_gateway_continues_the_trace_and_no_one_else_outside_trusted_networks() -> None:
    """One trace spans every hop: the inbound listener continues a peer gateway's trace context."""
    from gateway.core.asgi import Peer
    from gateway.core.settings import TracingSettings
    from gateway.dataplane.resolve import from_gateway
    from gateway.telemetry.tracing import Tracing

    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    headers = [(b"host", b"orders"), (b"traceparent", f"00-{trace_id}-{parent}-01".encode())]
    tracing = Tracing(TracingSettings(sample_ratio=0.0, trusted_networks=()))
    gateway = Peer("spiffe://peel.internal/svc/monolith", mtls=True, strict=True, address="10.0.3.7")
    assert from_gateway(gateway, "peel.internal")
    continued = tracing.start(headers, "10.0.3.7", "GET", "/", "orders",
                              trusted=from_gateway(gateway, "peel.internal"))
    assert (continued.trace_id, continued.parent_id, continued.sampled) == (trace_id, parent, True)
    for peer, domain in ((gateway, "other.example"), (gateway, None), (None, "peel.internal"),
                         (Peer("spiffe://peel.internal/svc/x", mtls=False, strict=False, address="a"),
                          "peel.internal"),
                         (Peer(None, mtls=True, strict=False, address="10.0.3.7"), "peel.internal")):
        assert not from_gateway(peer, domain)
        fresh = tracing.start(headers, "10.0.3.7", "GET", "/", "orders", trusted=from_gateway(peer, domain))
        assert fresh.trace_id != trace_id and fresh.parent_id is None


def test_refusals_and_tunnels_are_metrics() -> None:
    from gateway.dataplane.outbound import OutboundCounts
    from gateway.telemetry.metrics import Metrics, render

    metrics = Metrics()
    counts = OutboundCounts(metrics)
    counts.refuse("unknown-destination")
    counts.refuse("unknown-destination")
    counts.refuse("connect-refused")
    counts.tunnel("api.github.com:443")
    counts.forward("orders")
    text = render([{"pid": 1, "metrics": metrics.snapshot()}], admin_process=False).decode()
    assert 'peel_outbound_refused_total{code="unknown-destination",listener="outbound"} 2.0' in text
    assert 'peel_outbound_refused_total{code="connect-refused",listener="outbound"} 1.0' in text
    assert 'peel_outbound_tunnels_total{destination="api.github.com:443",listener="outbound"} 1.0' in text
    assert counts.forwarded == {"orders": 1}


def test_later_tables_are_derived_off_the_event_loop_and_the_newest_wins() -> None:
    import threading

    other = Document.parse({"services": [{"name": "a", "endpoints": ["http://x:1"]}], "routes": []})

    async def main() -> list[tuple[int, bool]]:
        source = TableHolder()
        built: list[tuple[int, bool]] = []

        def build(t: RouteTable) -> RouteTable:
            built.append((t.version, threading.current_thread() is threading.main_thread()))
            return outbound_table(t)

        derived = follow_derived(source, build)
        source.swap(table())
        assert derived.table is not None and derived.table.version == 7  # the first: at once
        source.swap(compile_document(other, 8))
        source.swap(compile_document(other, 9))
        assert derived.table.version == 7  # the loop never waited for a compile
        for _ in range(1000):
            if derived.table.version == 9:
                break
            await asyncio.sleep(0.01)
        assert derived.table.version == 9 and derived.table.routes_host("a")
        return built

    # 8 was superseded before its turn: never derived
    assert asyncio.run(main()) == [(7, True), (9, False)]
