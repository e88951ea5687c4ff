"""`POST /api/v1/migrations/{route}/guard` and the guard in the migration status, in-process:
set, change, freeze, take off; refusals name the field and write nothing; export/apply keeps it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.app.conftest import Admin

pytestmark = pytest.mark.anyio

DOC: dict[str, Any] = {
    "services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                 {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]}],
    "routes": [{"name": "orders", "match": {"path_prefix": "/orders"}, "service": "legacy",
                "migration": {"to": "orders", "stage": "canary", "percent": 5}},
               {"name": "plain", "match": {"path_prefix": "/"}, "service": "legacy"}],
}


async def guard(admin: Admin, body: dict[str, Any], route: str = "orders") -> Any:
    return await admin.client.post(f"/api/v1/migrations/{route}/guard", json=body)


async def test_set_freeze_and_take_off_each_one_version_and_one_transition(admin: Admin) -> None:
    await admin.apply(DOC)
    r = await guard(admin, {"guard": {"steps": [5, 25, "migrated"], "window": "30s"}, "reason": "go"})
    assert r.status_code == 200, r.text
    status = r.json()["migration"]
    assert status["migration"]["guard"] == {"steps": [5, 25, "migrated"], "window": "30s"}
    g = status["guard"]
    assert (g["action"], g["rule"]) == ("hold", "step-time") and g["window"]["seconds"] == 30
    assert g["frozen"] is False and g["evidence"]["to_requests"] == 0
    r = await guard(admin, {"freeze": True})
    assert r.json()["migration"]["guard"]["frozen"] is True
    assert r.json()["migration"]["migration"]["guard"]["freeze"] is True
    r = await guard(admin, {"off": True})
    assert r.json()["migration"]["guard"] is None and "guard" not in r.json()["migration"]["migration"]
    history = (await admin.client.get("/api/v1/migrations/orders/history")).json()["transitions"]
    assert [(t["action"], t["actor"]) for t in history] == [("guard", "alice")] * 3
    assert history[-1]["reason"] == "go" and history[0]["to_stage"] == "canary"
    listing = (await admin.client.get("/api/v1/migrations")).json()["migrations"]
    assert listing[0]["guard"] is None


@pytest.mark.parametrize(("body", "field", "status"), [
    ({"guard": {"steps": [25, 5]}}, "guard.steps[1]", 422),
    ({"guard": {"min_requests": "many"}}, "guard.min_requests", 422),
    ({"guard": {"nope": 1}}, "guard", 422),
    ({"freeze": "yes"}, "freeze", 422),
    ({"off": True, "freeze": True}, "off", 422),
    ({}, "guard", 422),
    ({"freeze": True}, "routes[orders].migration.guard", 409),   # no guard to freeze
])
async def test_refusals_name_the_field_and_write_nothing(admin: Admin, body: dict[str, Any], field: str,
                                                         status: int) -> None:
    await admin.apply(DOC)
    before = admin.version()
    r = await guard(admin, body)
    assert r.status_code == status, r.text
    assert r.json()["field"].startswith(field), r.json()
    assert admin.version() == before


async def test_a_route_without_a_migration_is_refused(admin: Admin) -> None:
    await admin.apply(DOC)
    r = await guard(admin, {"guard": {}}, route="plain")
    assert r.status_code == 409 and r.json()["field"] == "routes[plain].migration"


async def test_the_guard_block_survives_export_and_apply(admin: Admin) -> None:
    doc = {**DOC, "routes": [{**DOC["routes"][0], "migration": {
        **DOC["routes"][0]["migration"], "guard": {"window": "1m", "on_failure": "hold"}}},
        DOC["routes"][1]]}
    version = await admin.apply(doc)
    exported = (await admin.client.get("/api/v1/config")).json()["document"]
    assert exported["routes"][0]["migration"]["guard"] == {"window": "1m", "on_failure": "hold"}
    r = await admin.client.post("/api/v1/config/apply", json={"document": exported, "reason": "again"})
    assert r.status_code == 200 and admin.version() == version   # nothing changed
