"""`POST /api/v1/control/counts` in-process with a real CA: what a sidecar's flushers hand its
`ControlReport` reaches the control plane's store under the sidecar's identity, in one request per
flush; a body out of bounds or not signed by a sidecar is refused with its field and writes nothing.
And the report itself: a failed send keeps the deltas (bounded) for the next one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from facade.noise import ShadowCounts
from facade.shadow_counts import ShadowTotals, shadow_examples_of, shadow_since
from gateway.admin.app import build_admin_app
from gateway.core.settings import Settings
from gateway.identity.ca import CertificateAuthority
from gateway.identity.join import ControlError, ControlUnreachable
from gateway.server.report_control import ControlReport
from gateway.telemetry.metrics import BUCKETS
from routes.store import Store
from tests.app.test_control_api import ORDERS, TD, Sidecar

pytestmark = pytest.mark.anyio
PATH = "/api/v1/control/counts"
WIDTH = len(BUCKETS) + 3  # an edge's row: requests, errors, histogram


class Captured:
    """A `ControlReport`'s call: keeps the bodies, or fails while `down`."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.down = False
        self.refusing = False

    def __call__(self, method: str, path: str, body: dict[str, Any] | None,
                 timeout: float) -> tuple[int, dict[str, Any] | None]:
        assert (method, path) == ("POST", PATH) and body is not None
        if self.down:
            raise ControlUnreachable("cannot reach the control plane")
        if self.refusing:
            raise ControlError("the control plane refused (422 invalid-rule)", status=422)
        self.bodies.append(json.loads(json.dumps(body)))  # as it goes on the wire
        return 200, {}


def edge(requests: int, errors: int = 0) -> list[int]:
    row = [0] * WIDTH
    row[0], row[1], row[2] = requests, errors, requests
    return row


def flushed(report: ControlReport, minute: int = 1_800_000_000 // 60 * 60) -> None:
    """What the four flushers of a sidecar hand their store in one round."""
    report.add_traffic("vm-3:812", {("orders", 1): (5, 2, 1, 0)})
    report.add_edges("vm-3:812", minute, {("outbound", ORDERS, "payments"): edge(7, 1),
                                          ("inbound", "spiffe://peel.internal/svc/web", "orders"): edge(3)})
    report.add_guard_samples("vm-3:812", {("orders", "to", 1_800_000_001): (4, 1, {3: 2, 40: 2})})
    report.add_shadow("vm-3:812", {("orders", 1, minute): ShadowTotals(
        ShadowCounts(6, 1, 2, 0, {"body.total": [1, 0]}), dropped=1)}, {"orders": [{"path": "/o/1"}]})


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    CertificateAuthority.init(tmp_path / "ca", TD, now=datetime.now(UTC))
    return tmp_path / "ca"


@pytest.fixture
async def client(store: Store, ca: Path) -> AsyncIterator[httpx.AsyncClient]:
    base = Settings()
    settings = replace(base, identity=replace(base.identity, ca_dir=str(ca)))
    app = build_admin_app(store, ready=lambda: True, settings=settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        yield c


async def post(client: httpx.AsyncClient, sidecar: Sidecar | None, body: Any) -> httpx.Response:
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if sidecar is not None:
        headers |= sidecar.headers("POST", PATH, raw)
    return await client.post(PATH, content=raw, headers=headers)


def written(store: Store) -> tuple[Any, ...]:
    return (store.traffic_since("orders", 0), store.edges_since(0), store.guard_window("orders", 0, 2**40),
            shadow_since(store, "orders", 0).pairs, shadow_examples_of(store, "orders"))


NOTHING = ((0, 0, 0, 0), [], [], 0, [])


async def test_what_a_sidecar_flushed_is_in_the_control_planes_store_under_its_identity(
        client: httpx.AsyncClient, store: Store, ca: Path) -> None:
    captured = Captured()
    flushed(ControlReport(captured))
    assert [sorted(set(b) - {"instance"}) for b in captured.bodies] == [
        ["traffic"], ["edges"], ["samples"], ["examples", "shadow"]]
    orders = Sidecar(ca, "orders")
    for body in captured.bodies:
        r = await post(client, orders, body)
        assert r.status_code == 200, r.text
        assert r.json()["instance"] == f"{ORDERS} vm-3:812"
    assert store.traffic_since("orders", 1) == (5, 2, 1, 0)
    edges = {(e[0], e[1], e[2]): (e[3], e[4]) for e in store.edges_since(0)}
    assert edges == {("outbound", ORDERS, "payments"): (7, 1),
                     ("inbound", "spiffe://peel.internal/svc/web", "orders"): (3, 0)}
    [(side, requests, errors, hist)] = store.guard_window("orders", 1_800_000_000, 1_800_000_002)
    assert (side, requests, errors, hist) == ("to", 4, 1, {3: 2, 40: 2})
    shadow = shadow_since(store, "orders", 1)
    assert (shadow.pairs, shadow.mismatched, shadow.dropped, shadow.counts.fields) == (
        6, 1, 1, {"body.total": [1, 0]})
    assert shadow_examples_of(store, "orders") == [{"path": "/o/1"}]
    # a second report adds to the same rows (the sidecar's instance)
    r = await post(client, orders, captured.bodies[0])
    assert r.status_code == 200 and store.traffic_since("orders", 1) == (10, 4, 2, 0)


async def test_a_report_out_of_bounds_or_not_a_sidecars_is_refused_and_writes_nothing(
        client: httpx.AsyncClient, store: Store, ca: Path) -> None:
    orders = Sidecar(ca, "orders")
    good_traffic = [["orders", 1, 5, 2, 1, 0]]
    good_edge = ["inbound", "spiffe://peel.internal/svc/web", "orders", 1_800_000_000 // 60 * 60,
                 3, 0, [0] * (WIDTH - 2)]
    cases = [
        # valid rows first, the bad one last: the whole body is refused
        ({"instance": "vm", "traffic": good_traffic, "edges": [good_edge, ["sideways", *good_edge[1:]]]},
         "edges[1][0]"),
        # an outbound edge is the caller's own call: not another service's
        ({"instance": "vm", "edges": [["outbound", "spiffe://peel.internal/svc/web", *good_edge[2:]]]},
         "edges[0][1]"),
        ({"instance": "vm", "traffic": good_traffic, "samples": [["orders", "to", 1, 1, 0, {"999": 1}]]},
         "samples[0][5]"),
        ({"instance": "vm", "traffic": [["orders", 1, -5, 0, 0, 0]]}, "traffic[0][2]"),
        ({"instance": "vm", "traffic": good_traffic * 5001}, "traffic"),
        ({"instance": "vm", "traffic": good_traffic, "shadow": [["orders", 1, 60, {"pairs": 1}]]},
         "shadow[0][3]"),
        ({"instance": "", "traffic": good_traffic}, "instance"),
        ({"instance": "vm", "counts": []}, "counts"),
    ]
    for body, field in cases:
        r = await post(client, orders, body)
        assert r.status_code == 422, (field, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["field"] == field, r.text
    # not signed, or signed by a certificate of another CA
    r = await post(client, None, {"instance": "vm", "traffic": good_traffic})
    assert r.status_code == 401 and r.json()["code"] == "caller-refused"
    CertificateAuthority.init(ca.parent / "other", TD, now=datetime.now(UTC))
    stranger = Sidecar(ca.parent / "other", "orders")
    r = await post(client, stranger, {"instance": "vm", "traffic": good_traffic})
    assert r.status_code == 401
    assert written(store) == NOTHING


async def test_a_failed_send_keeps_the_deltas_for_the_next_one_within_bounds() -> None:
    captured = Captured()
    report = ControlReport(captured, max_rows=3)
    captured.down = True
    flushed(report)
    report.add_traffic("vm-3:812", {("orders", 1): (1, 0, 0, 0), ("cart", 2): (1, 1, 1, 1)})
    assert captured.bodies == [] and report.failures == 5 and report.pending() == 6
    captured.down = False
    report.add_traffic("vm-3:812", {("orders", 1): (1, 0, 0, 0)})
    report.add_edges("vm-3:812", 60, {})
    assert captured.bodies[0]["traffic"] == [["orders", 1, 7, 2, 1, 0], ["cart", 2, 1, 1, 1, 1]]
    assert [e[:6] for e in captured.bodies[1]["edges"]] == [
        ["outbound", ORDERS, "payments", 1_800_000_000 // 60 * 60, 7, 1],
        ["inbound", "spiffe://peel.internal/svc/web", "orders", 1_800_000_000 // 60 * 60, 3, 0]]
    assert report.failures == 0 and report.pending() == 2  # samples and shadow: their next flush
    # bounded: past `max_rows` keys kept, new keys are dropped and counted
    captured.down = True
    report.add_traffic("vm", {("r", n): (1, 0, 0, 0) for n in range(5)})
    assert report.dropped == 2 and report.pending() == 5


async def test_a_body_the_control_plane_refuses_is_dropped_not_sent_forever() -> None:
    captured = Captured()
    report = ControlReport(captured)
    captured.refusing = True
    report.add_traffic("vm", {("orders", 1): (1, 0, 0, 0)})
    assert (report.refused, report.failures, report.pending()) == (1, 0, 0)
    captured.refusing = False
    report.add_traffic("vm", {("orders", 1): (2, 0, 0, 0)})
    assert captured.bodies == [{"instance": "vm", "traffic": [["orders", 1, 2, 0, 0, 0]]}]
