"""The shadow stage over the admin API in-process: `POST .../shadow` moves a migration into it, and
`GET .../shadow` reports the counts stored since the newest transition, noise marked as noise."""

from __future__ import annotations

from typing import Any

import pytest

from facade.compare import CompareRules, Reply, compare
from facade.shadow_counts import ShadowStats, add_shadow
from tests.app.conftest import Admin

pytestmark = pytest.mark.anyio

DOC: dict[str, Any] = {
    "services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                 {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]}],
    "routes": [{"name": "orders", "match": {"path_prefix": "/orders"}, "service": "legacy"},
               {"name": "default", "match": {"path_prefix": "/"}, "service": "legacy"}],
}
JSON = ((b"content-type", b"application/json"),)


def reply(price: int, nonce: str) -> Reply:
    return Reply(200, JSON, b'{"price": %d, "nonce": "%s"}' % (price, nonce.encode()))


async def test_shadow_is_a_transition_between_legacy_and_canary(admin: Admin) -> None:
    await admin.apply(DOC)
    started = await admin.client.post("/api/v1/migrations/orders/start", json={"to": "orders"})
    assert started.status_code == 200
    steps = [("shadow", "shadow"), ("shift", "canary"), ("shadow", "shadow"), ("promote", "migrated")]
    for action, stage in steps:
        body = {"percent": 5} if action == "shift" else None
        r = await admin.client.post(f"/api/v1/migrations/orders/{action}", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["migration"]["stage"] == stage
    # Not from migrated: refused, naming the stage, and nothing written.
    before = admin.version()
    r = await admin.client.post("/api/v1/migrations/orders/shadow")
    assert r.status_code == 409 and "only from legacy, canary" in r.text
    assert admin.version() == before
    history = (await admin.client.get("/api/v1/migrations/orders/history")).json()["transitions"]
    assert [(t["action"], t["to_stage"], t["percent"]) for t in history][1:4] == [
        ("shadow", "shadow", 0), ("shift", "canary", 5), ("shadow", "shadow", 0)]


async def test_the_report_counts_since_the_newest_transition(admin: Admin) -> None:
    await admin.apply(DOC)
    await admin.client.post("/api/v1/migrations/orders/start", json={"to": "orders"})
    r = await admin.client.post("/api/v1/migrations/orders/shadow")
    version = r.json()["version"]
    rules = CompareRules()
    stats = ShadowStats()
    stats.compared("orders", version - 1, compare(reply(10, "a"), reply(99, "z"), rules))  # before
    for i in range(300):
        new = compare(reply(10, f"a{i}"), reply(11, f"b{i}"), rules)
        old = compare(reply(10, f"a{i}"), reply(10, f"c{i}"), rules)
        stats.compared("orders", version, new, old,
                       example={"method": "GET", "path": "/orders", "primary": {"status": 200, "headers": {}},
                                "candidate": {"status": 200, "headers": {}}, "differences": [],
                                "total": 2})
    stats.dropped("orders", version)
    add_shadow(admin.store, "gw:1", *stats.take())

    r = await admin.client.get("/api/v1/migrations/orders/shadow", params={"examples": 2})
    assert r.status_code == 200, r.text
    report = r.json()["shadow"]
    assert (report["route"], report["stage"]) == ("orders", "shadow")
    assert report["since"]["config_version"] == version
    assert (report["pairs"], report["mismatched"], report["dropped"]) == (300, 300, 1)
    assert report["baseline"]["pairs"] == 300
    assert report["interval"][0] > 0.98 and report["interval"][1] == 1.0
    verdicts = {f["field"]: f["verdict"] for f in report["fields"]}
    assert verdicts == {"$.price": "regression", "$.nonce": "noise"}
    assert report["fields"][0]["field"] == "$.price"  # regressions first
    assert report["regressions"] == 1 and len(report["examples"]) == 2


async def test_refusals(admin: Admin) -> None:
    await admin.apply(DOC)
    r = await admin.client.get("/api/v1/migrations/default/shadow")
    assert r.status_code == 404 and "has no migration" in r.text
    r = await admin.client.get("/api/v1/migrations/nope/shadow")
    assert r.status_code == 404 and "no such route" in r.text
    r = await admin.client.get("/api/v1/migrations/default/shadow", params={"top": "0"})
    assert r.status_code == 400
