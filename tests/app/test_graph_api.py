"""`GET /api/v1/graph`: edges flushed by two gateways' processes, summed over the window, with the
authorization policies of the latest config version deciding which are expected."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.cli.graph import dot, text
from gateway.telemetry.graph import EXTERNAL, EdgeCounts, GraphFlusher, minute
from routes.store import Store
from tests.app.conftest import Admin

pytestmark = pytest.mark.anyio

ORDERS = "spiffe://peel.internal/svc/orders"
BILLING = "spiffe://peel.internal/svc/billing"

DOCUMENT: dict[str, Any] = {
    "services": [{"name": n, "endpoints": [f"http://{n}:80"]} for n in ("orders", "payments", "legacy")],
    "routes": [
        {"name": "payments", "match": {"hosts": ["payments"]}, "service": "payments",
         "authorization": {"allow_from": ["orders"]}},
        {"name": "orders", "match": {"path_prefix": "/orders"}, "service": "orders"},
        {"name": "default", "match": {"path_prefix": "/"}, "service": "legacy"},
    ],
}


async def flush(store: Store, instance: str, record: list[tuple[str, str, str, int, float]],
                local: str | None = None) -> None:
    """One serving process's edges, written the way `peel serve` writes them."""
    edges = EdgeCounts(local=local)
    for listener, source, destination, status, seconds in record:
        edges.record(listener, source, destination, status, False, seconds)
    assert await GraphFlusher(store, edges, instance=instance).flush()


async def test_the_graph_sums_gateways_and_marks_undeclared_calls(admin: Admin) -> None:
    version = await admin.apply(DOCUMENT)
    # gateway A (edge): the public; sidecar of orders: its app calls payments; sidecar of payments:
    # the same calls seen inbound, plus billing, which no policy lets in
    await flush(admin.store, "edge:1", [("public", EXTERNAL, "orders", 200, 0.01)] * 30)
    await flush(admin.store, "edge:2", [("public", EXTERNAL, "orders", 502, 0.02)] * 10)
    await flush(admin.store, "orders:1", [("outbound", ORDERS, "payments", 200, 0.004)] * 20
                + [("outbound", ORDERS, "payments", 500, 0.2)] * 2, local=ORDERS)
    await flush(admin.store, "payments:1", [("inbound", ORDERS, "payments", 200, 0.003)] * 21
                + [("inbound", BILLING, "payments", 200, 0.003)] * 4)
    r = await admin.client.get("/api/v1/graph", params={"window": "5m"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["window"] == 300 and body["config_version"] == version
    edges = {(e["source"], e["destination"]): e for e in body["edges"]}
    assert set(edges) == {(EXTERNAL, "orders"), ("orders", "payments"), ("billing", "payments")}
    public = edges[(EXTERNAL, "orders")]
    assert (public["requests"], public["errors"], public["error_rate"]) == (40, 10, 0.25)
    assert public["expected"] is None
    assert public["rate"] > 0
    orders = edges[("orders", "payments")]
    assert (orders["requests"], orders["errors"]) == (22, 2)  # the caller's view, once
    assert orders["observed_by"] == ["outbound", "inbound"]
    assert orders["expected"] is True
    assert orders["identity"] == ORDERS
    assert 100 <= orders["p99_ms"] <= 250
    assert edges[("billing", "payments")]["expected"] is False
    assert body["unexpected"] == 1
    assert {n["id"] for n in body["nodes"]} == {EXTERNAL, "orders", "payments", "billing"}
    # what `peel graph` prints from it
    lines = text(body, "5m")
    assert any("billing" in line and "UNEXPECTED" in line for line in lines)
    assert lines[-1] == "3 edge(s) in the last 5m, 1 unexpected: no authorization policy's allow_from " \
                        "declares them"
    graph = dot(body)
    assert graph.startswith("digraph peel {")
    assert '"billing" -> "payments"' in graph and "color=red" in graph
    assert graph.count("style=dashed") == 1

    # a policy that declares billing makes the edge expected at the next config version
    document = {**DOCUMENT, "routes": [{**DOCUMENT["routes"][0],
                                        "authorization": {"allow_from": ["orders", "billing"]}},
                                       *DOCUMENT["routes"][1:]]}
    await admin.apply(document)
    r = await admin.client.get("/api/v1/graph")
    assert r.json()["unexpected"] == 0


async def test_minutes_before_the_window_are_left_out_and_pruned(admin: Admin) -> None:
    await admin.apply(DOCUMENT)
    old = minute(time.time() - 3 * 3600)
    await asyncio.to_thread(admin.store.add_edges, "edge:1", old,
                            {("public", EXTERNAL, "legacy"): [5, 0] + [0] * 15})
    await flush(admin.store, "edge:1", [("public", EXTERNAL, "orders", 200, 0.01)])
    body = (await admin.client.get("/api/v1/graph", params={"window": "1h"})).json()
    assert [(e["source"], e["destination"]) for e in body["edges"]] == [(EXTERNAL, "orders")]
    body = (await admin.client.get("/api/v1/graph", params={"window": "24h"})).json()
    assert len(body["edges"]) == 2
    assert admin.store.prune_edges(minute(time.time() - 3600)) == 1
    assert admin.store.count_edges() == 1


@pytest.mark.parametrize("window", ["soon", "-5m", "25h"])
async def test_a_bad_window_is_refused_naming_it(admin: Admin, window: str) -> None:
    r = await admin.client.get("/api/v1/graph", params={"window": window})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == "window"


async def test_the_graph_needs_a_token(admin: Admin) -> None:
    async with admin.other({}) as anonymous:
        assert (await anonymous.get("/api/v1/graph")).status_code == 401
