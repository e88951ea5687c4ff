"""GET /api/v1/services/{name} shows the serving processes' live view of the service, when there is one."""

from __future__ import annotations

from typing import Any

import pytest

from tests.app.conftest import SAMPLE, Admin

pytestmark = pytest.mark.anyio

# The shape of `gateway.telemetry.procstats.LiveView.service()`: the service snapshots of the serving
# processes (gateway.upstream.endpoints) merged, endpoints keyed by URL, and each process's own snapshot.
ORDERS_LIVE: dict[str, Any] = {
    "balancer": "ewma", "in_flight": 3, "pending": 0, "max_requests": 1024, "max_pending": 1024,
    "ejections_total": 4, "circuit_open_total": 2, "panic_total": 0, "name": "orders",
    "endpoints": {
        "http://10.0.0.7:9000": {"weight": 1, "state": "up", "healthy": True, "ejected": False,
                                 "ejected_for": None, "ejections": 0, "in_flight": 2,
                                 "latency_ewma_ms": 12.5, "slow_start": None},
        "http://10.0.0.8:9000": {"weight": 1, "state": "ejected", "healthy": False, "ejected": True,
                                 "ejected_for": 29.5, "ejections": 3, "in_flight": 1,
                                 "latency_ewma_ms": 480.0, "slow_start": None},
    },
    "processes": [{"pid": 4242, "in_flight": 3}],
}


class FakeLiveView:
    """The `gateway.telemetry.procstats.LiveView` seam: `service(name) -> dict | None`, recording the asks."""

    def __init__(self, services: dict[str, dict[str, Any]]) -> None:
        self.services = services
        self.asked: list[str] = []

    def service(self, name: str) -> dict[str, Any] | None:
        self.asked.append(name)
        return self.services.get(name)


def set_live(admin: Admin, live: FakeLiveView | None) -> None:
    admin.transport.app.state.live = live  # type: ignore[attr-defined]


async def test_service_shows_live_endpoint_state(admin: Admin) -> None:
    version = await admin.apply(SAMPLE)
    set_live(admin, FakeLiveView({"orders": ORDERS_LIVE}))
    r = await admin.client.get("/api/v1/services/orders")
    assert r.status_code == 200
    body = r.json()
    assert body["live"] == ORDERS_LIVE
    # The stored service is still there, unchanged, and the ETag is still the config version.
    assert body["service"]["endpoints"] == ["http://10.0.0.7:9000", "http://10.0.0.8:9000"]
    assert body["version"] == version and r.headers["etag"] == f'"{version}"'


async def test_no_live_key_without_a_live_view(admin: Admin) -> None:
    await admin.apply(SAMPLE)
    r = await admin.client.get("/api/v1/services/orders")
    assert r.status_code == 200 and "live" not in r.json()
    set_live(admin, None)
    r = await admin.client.get("/api/v1/services/orders")
    assert r.status_code == 200 and "live" not in r.json()


async def test_no_live_key_for_a_service_no_process_serves_yet(admin: Admin) -> None:
    await admin.apply(SAMPLE)
    live = FakeLiveView({"orders": ORDERS_LIVE})
    set_live(admin, live)
    r = await admin.client.get("/api/v1/services/legacy")
    assert r.status_code == 200 and "live" not in r.json()
    assert live.asked == ["legacy"]


async def test_unknown_service_is_404_even_when_live(admin: Admin) -> None:
    # The store says what exists; a live view of a service deleted a moment ago does not revive it.
    await admin.apply(SAMPLE)
    set_live(admin, FakeLiveView({"gone": ORDERS_LIVE}))
    r = await admin.client.get("/api/v1/services/gone")
    assert r.status_code == 404


async def test_routes_and_lists_have_no_live_view(admin: Admin) -> None:
    await admin.apply(SAMPLE)
    live = FakeLiveView({"orders": ORDERS_LIVE})
    set_live(admin, live)
    r = await admin.client.get("/api/v1/routes/orders")
    assert r.status_code == 200 and "live" not in r.json()
    r = await admin.client.get("/api/v1/services")
    assert all("live" not in s for s in r.json()["services"])
    assert live.asked == []
