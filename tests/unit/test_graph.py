"""The dependency graph (gateway.telemetry.graph, gateway.admin.graph.declared_by): edges recorded and
bounded, summed over gateways without counting a sidecar-to-sidecar call twice, p99 from the
histogram, and edges that no authorization policy declares marked unexpected."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.admin.graph import declared_by
from gateway.telemetry.graph import (
    EXTERNAL,
    OTHER,
    EdgeCounts,
    GraphFlusher,
    merge,
    minute,
    node_name,
    quantile,
    summarise,
)
from gateway.telemetry.metrics import BUCKETS
from routes.compiler import compile_document
from routes.errors import StoreError
from routes.model import Document

ORDERS = "spiffe://peel.internal/svc/orders"
BILLING = "spiffe://peel.internal/svc/billing"


def test_a_request_is_counted_on_its_edge_with_its_error_and_latency() -> None:
    edges = EdgeCounts(local=ORDERS)
    assert edges.source("outbound", None) == ORDERS
    assert edges.source("inbound", BILLING) == BILLING
    assert edges.source("public", None) == EXTERNAL
    edges.record("outbound", ORDERS, "payments", 200, False, 0.003)
    edges.record("outbound", ORDERS, "payments", 503, False, 0.020)
    edges.record("outbound", ORDERS, "payments", 200, True, 0.5)   # cut after it started
    edges.record("outbound", ORDERS, "payments", 404, False, 0.001)  # a 4xx is the caller's
    row = edges.take()[("outbound", ORDERS, "payments")]
    assert row[:2] == [4, 2]
    assert sum(row[2:]) == 4
    assert edges.take() == {}


def test_the_table_is_bounded_the_rest_counts_as_other() -> None:
    edges = EdgeCounts(max_edges=3)
    for i in range(50):
        edges.record("inbound", f"10.0.0.{i}", "orders", 200, False, 0.001)
    for service in ("a", "b", "c", "d"):
        edges.record("inbound", "10.9.9.9", service, 200, False, 0.001)
    taken = edges.take()
    assert len(taken) == 7  # 3 edges, 3 `other` rows by destination, then `other` -> `other`
    assert taken[("inbound", OTHER, "orders")][0] == 47
    assert taken[("inbound", OTHER, "a")][0] == 1
    assert taken[("inbound", OTHER, OTHER)][0] == 2
    assert sum(v[0] for v in taken.values()) == 54
    assert edges.overflow == 51
    # a name too long to be a label is `other` too
    edges.record("inbound", "spiffe://peel.internal/" + "x" * 300, "orders", 200, False, 0.001)
    assert list(edges.take()) == [("inbound", OTHER, "orders")]


def test_deltas_put_back_are_added_to_what_came_since() -> None:
    edges = EdgeCounts()
    edges.record("public", EXTERNAL, "orders", 200, False, 0.001)
    taken = edges.take()
    edges.record("public", EXTERNAL, "orders", 500, False, 0.001)
    edges.put_back(taken)
    assert edges.take()[("public", EXTERNAL, "orders")][:2] == [2, 1]


def test_p99_interpolates_within_the_bucket_like_prometheus() -> None:
    histogram = [0] * (len(BUCKETS) + 1)
    assert quantile(0.99, histogram) is None
    histogram[BUCKETS.index(0.01)] = 100  # all in (0.005, 0.01]
    assert quantile(0.99, histogram) == pytest.approx(0.005 + 0.005 * 0.99)
    histogram[-1] = 10  # beyond the last bound: the highest finite bound
    assert quantile(0.99, histogram) == BUCKETS[-1]


def _row(listener: str, source: str, destination: str, requests: int, errors: int = 0,
         seconds: float = 0.004) -> tuple[str, str, str, int, int, list[int]]:
    histogram = [0] * (len(BUCKETS) + 1)
    histogram[next(i for i, b in enumerate(BUCKETS) if seconds <= b)] = requests
    return listener, source, destination, requests, errors, histogram


def test_gateways_are_summed_and_a_call_seen_by_both_sidecars_counts_once() -> None:
    rows = [
        _row("outbound", ORDERS, "payments", 60, 3),   # orders' sidecar, caller side
        _row("inbound", ORDERS, "payments", 57, 0),    # payments' sidecar saw the same calls
        _row("public", EXTERNAL, "orders", 100),       # gateway A
        _row("public", EXTERNAL, "orders", 50, 5),     # gateway B
        _row("inbound", BILLING, "payments", 7),       # only the callee saw this one
    ]
    edges = {(e.source, e.destination): e for e in merge(rows)}
    assert edges[(ORDERS, "payments")].requests == 60
    assert edges[(ORDERS, "payments")].errors == 3
    assert edges[(ORDERS, "payments")].listeners == ["outbound", "inbound"]
    assert edges[(EXTERNAL, "orders")].requests == 150
    assert edges[(EXTERNAL, "orders")].errors == 5
    assert edges[(BILLING, "payments")].listeners == ["inbound"]


def test_summary_rates_error_rates_p99_and_unexpected_edges() -> None:
    rows = [_row("outbound", ORDERS, "payments", 600, 6, 0.04), _row("public", EXTERNAL, "orders", 300),
            _row("inbound", BILLING, "payments", 30), _row("inbound", "10.0.3.7", "payments", 3)]
    declared = {(ORDERS, "payments")}
    out = summarise(merge(rows), window=300.0, declared=lambda s, d: (s, d) in declared)
    edges = {(e["source"], e["destination"]): e for e in out["edges"]}
    orders = edges[("orders", "payments")]
    assert orders["identity"] == ORDERS
    assert orders["rate"] == 2.0
    assert orders["error_rate"] == 0.01
    assert 25 < orders["p99_ms"] <= 50
    assert orders["expected"] is True
    assert edges[("billing", "payments")]["expected"] is False     # no allow_from names billing
    assert edges[("10.0.3.7", "payments")]["expected"] is False    # no identity: never declared
    assert edges[(EXTERNAL, "orders")]["expected"] is None         # no policy can name the public
    assert out["unexpected"] == 2
    ids = {n["id"]: n["kinds"] for n in out["nodes"]}
    assert ids["orders"] == ["caller", "service"]  # one node for the identity and the service
    assert ids["payments"] == ["service"]


@pytest.mark.parametrize(("source", "node"), [
    (ORDERS, "orders"), ("spiffe://td/svc/a/b", "spiffe://td/svc/a/b"), ("10.0.0.1", "10.0.0.1"),
    ("spiffe://td/x/svc/orders", "spiffe://td/x/svc/orders"), (EXTERNAL, EXTERNAL)])
def test_node_names(source: str, node: str) -> None:
    assert node_name(source) == node


def document() -> dict[str, Any]:
    return {
        "services": [{"name": n, "endpoints": [f"http://{n}:80"]}
                     for n in ("orders", "payments", "payments-v2", "legacy")],
        "routes": [
            {"name": "payments", "match": {"hosts": ["payments"]}, "service": "payments",
             "migration": {"to": "payments-v2", "stage": "canary", "percent": 5},
             "authorization": {"allow_from": ["orders"], "deny_from": [ORDERS + "x"]}},
            {"name": "orders", "match": {"hosts": ["orders"]}, "service": "orders",
             "authorization": {"deny_from": ["legacy"]}},
            {"name": "default", "match": {"path_prefix": "/"}, "service": "legacy"},
        ],
    }


def test_an_edge_is_declared_by_an_allow_from_of_a_route_that_sends_to_its_service() -> None:
    declared = declared_by(compile_document(Document.parse(document()), 1))
    assert declared(ORDERS, "payments")
    assert declared(ORDERS, "payments-v2")                              # the migration's `to`
    assert declared("spiffe://elsewhere/svc/orders", "payments")        # a service name: any domain
    assert not declared(BILLING, "payments")
    assert not declared(ORDERS + "x", "payments")                       # denied
    assert not declared(BILLING, "orders")                              # only a deny_from: declares no one
    assert not declared(ORDERS, "legacy")                               # no policy at all


def test_minutes() -> None:
    assert minute(119.9) == 60
    assert minute(120) == 120


class FlakyStore:
    """A store whose writes fail while `down`; prunes fail always (they must not undo a write)."""

    def __init__(self) -> None:
        self.down = True
        self.added: list[dict[tuple[str, str, str], list[int]]] = []

    def add_edges(self, instance: str, minute: int, deltas: Any) -> None:
        if self.down:
            raise StoreError("the store is away", unreachable=True)
        self.added.append({k: list(v) for k, v in deltas.items()})

    def prune_edges(self, before: int) -> int:
        raise StoreError("the store is away", unreachable=True)


def test_a_failed_flush_keeps_the_edges_and_a_failed_prune_does_not_count_them_twice() -> None:
    store = FlakyStore()
    edges = EdgeCounts()
    flusher = GraphFlusher(store, edges, instance="a:1", clock=lambda: 600.0)
    edges.record("public", EXTERNAL, "orders", 200, False, 0.001)

    async def go() -> None:
        assert not await flusher.flush()
        edges.record("public", EXTERNAL, "orders", 200, False, 0.001)
        store.down = False
        assert await flusher.flush()  # written; its prune failed and changes nothing
        assert await flusher.flush()  # nothing new
    asyncio.run(go())
    assert [d[("public", EXTERNAL, "orders")][0] for d in store.added] == [2]
