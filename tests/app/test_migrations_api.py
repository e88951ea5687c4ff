"""`/api/v1/migrations` in-process: the lifecycle, refusals that write nothing, history, counts."""

from __future__ import annotations

from typing import Any

import pytest

from tests.app.conftest import Admin

pytestmark = pytest.mark.anyio

DOC: dict[str, Any] = {
    "services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                 {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]}],
    "routes": [{"name": "orders", "match": {"path_prefix": "/orders"}, "service": "legacy"},
               {"name": "default", "match": {"path_prefix": "/"}, "service": "legacy"}],
}


async def post(admin: Admin, path: str, body: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> Any:
    return await admin.client.post(f"/api/v1/migrations{path}", json=body, headers=headers or {})


async def test_the_whole_lifecycle_one_version_and_one_transition_each(admin: Admin) -> None:
    await admin.apply(DOC)
    start = await post(admin, "/orders/start", {"to": "orders", "cohort": {"header": "X-User-Id"},
                                                "beta": {"header": "X-Beta-User", "allow": ["alice"]},
                                                "reason": "peel orders"})
    assert start.status_code == 200, start.text
    body = start.json()
    assert body["changed"] and body["migration"]["stage"] == "legacy"
    assert body["migration"]["from"] == "legacy" and body["migration"]["to"] == "orders"
    assert start.headers["etag"] == f'"{body["version"]}"'
    steps = [("/orders/shift", {"percent": 10}, "canary", 10),
             ("/orders/shift", {"percent": 12.5}, "canary", 12.5),
             ("/orders/promote", None, "migrated", 12.5),
             ("/orders/retire", None, "retired", 12.5),
             ("/orders/rollback", None, "legacy", 0)]
    for path, payload, stage, percent in steps:
        before = admin.version()
        r = await post(admin, path, payload, {"Peel-Reason": f"step {path}"})
        assert r.status_code == 200, r.text
        assert r.json()["migration"]["stage"] == stage and r.json()["migration"]["percent"] == percent
        assert admin.version() == before + 1
    history = (await admin.client.get("/api/v1/migrations/orders/history")).json()["transitions"]
    assert [(t["action"], t["from_stage"], t["to_stage"]) for t in history] == [
        ("rollback", "retired", "legacy"), ("retire", "migrated", "retired"),
        ("promote", "canary", "migrated"), ("shift", "canary", "canary"), ("shift", "legacy", "canary"),
        ("start", None, "legacy")]
    assert history[0]["actor"] == "alice" and history[0]["reason"] == "step /orders/rollback"
    assert history[-1]["reason"] == "peel orders"
    assert history[0]["config_version"] == admin.version()
    # The migration is in the exported document and survives its round trip.
    exported = (await admin.client.get("/api/v1/config")).json()["document"]
    route = next(r for r in exported["routes"] if r["name"] == "orders")
    assert route["migration"]["to"] == "orders" and route["migration"]["beta"]["allow"] == ["alice"]
    before = admin.version()
    await admin.apply(exported)
    assert admin.version() == before


@pytest.mark.parametrize("path, payload, status, field", [
    ("/orders/start", {"to": "nobody"}, 422, "routes[orders].migration.to"),
    ("/orders/start", {"to": "legacy"}, 422, "routes[orders].migration.to"),
    ("/orders/start", {"to": "orders", "cohort": {"header": "a b"}}, 422, "cohort.header"),
    ("/nosuch/start", {"to": "orders"}, 404, "routes[nosuch]"),
    ("/orders/shift", {"percent": 10}, 409, "routes[orders].migration"),
    ("/orders/promote", None, 409, "routes[orders].migration"),
])
async def test_refusals_before_a_migration_exists_write_nothing(
        admin: Admin, path: str, payload: dict[str, Any] | None, status: int, field: str) -> None:
    await admin.apply(DOC)
    before = admin.version()
    r = await post(admin, path, payload)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == field
    assert admin.version() == before
    assert admin.store.transitions("orders") == []


@pytest.mark.parametrize("path, payload, status, field", [
    ("/orders/shift", {"percent": 101}, 422, "percent"),
    ("/orders/shift", {"percent": -5}, 422, "percent"),
    ("/orders/shift", {"percent": "ten"}, 422, "percent"),
    ("/orders/retire", None, 409, "routes[orders].migration.stage"),
    ("/orders/start", {"to": "orders"}, 409, "routes[orders].migration.stage"),
])
async def test_refused_transitions_name_the_reason_and_write_nothing(
        admin: Admin, path: str, payload: dict[str, Any] | None, status: int, field: str) -> None:
    await admin.apply(DOC)
    await post(admin, "/orders/start", {"to": "orders"})
    assert (await post(admin, "/orders/shift", {"percent": 5})).status_code == 200
    before = admin.version()
    r = await post(admin, path, payload)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field
    assert admin.version() == before and len(admin.store.transitions("orders")) == 2


async def test_stale_if_match_is_refused_with_412(admin: Admin) -> None:
    await admin.apply(DOC)
    stale = admin.version()
    await post(admin, "/orders/start", {"to": "orders"})
    r = await post(admin, "/orders/shift", {"percent": 10}, {"If-Match": f'"{stale}"'})
    assert r.status_code == 412
    assert admin.store.latest().document.route("orders").migration.stage == "legacy"  # type: ignore[union-attr]
    ok = await post(admin, "/orders/shift", {"percent": 10}, {"If-Match": f'"{admin.version()}"'})
    assert ok.status_code == 200


async def test_status_lists_counts_since_the_last_transition(admin: Admin) -> None:
    await admin.apply(DOC)
    await post(admin, "/orders/start", {"to": "orders"})
    shifted = admin.version() + 1
    await post(admin, "/orders/shift", {"percent": 50})
    # Two gateway processes report; counts from before the transition are not included.
    admin.store.add_traffic("gw-a", {("orders", shifted - 1): (0, 100, 0, 0),
                                     ("orders", shifted): (5, 6, 1, 0)})
    admin.store.add_traffic("gw-b", {("orders", shifted): (3, 4, 0, 0)})
    admin.store.add_traffic("gw-a", {("orders", shifted): (1, 0, 0, 0)})
    listed = (await admin.client.get("/api/v1/migrations")).json()["migrations"]
    assert [m["route"] for m in listed] == ["orders"]
    assert listed[0]["counts"] == {"to": 9, "from": 10, "fallback": 1, "retired_misses": 0}
    assert listed[0]["since"]["action"] == "shift" and listed[0]["since"]["config_version"] == shifted
    one = (await admin.client.get("/api/v1/migrations/orders")).json()["migration"]
    assert one == listed[0]
    missing = await admin.client.get("/api/v1/migrations/default")
    assert missing.status_code == 404 and missing.json()["field"] == "routes[default].migration"


async def test_rollback_of_a_legacy_migration_changes_nothing(admin: Admin) -> None:
    await admin.apply(DOC)
    await post(admin, "/orders/start", {"to": "orders"})
    before = admin.version()
    r = await post(admin, "/orders/rollback")
    assert r.status_code == 200 and r.json()["changed"] is False
    assert admin.version() == before
