"""Services and routes one at a time: CRUD, and every refusal leaves the config version alone."""

from __future__ import annotations

from typing import Any

import pytest

from tests.app.conftest import SAMPLE, Admin

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"


async def test_service_crud_round_trip(admin: Admin) -> None:
    r = await admin.client.post("/api/v1/services", json={"name": "legacy",
                                                          "endpoints": ["http://10.0.0.5:8080"]})
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1 and r.json()["changed"] is True
    assert r.headers["etag"] == '"1"'
    r = await admin.client.get("/api/v1/services/legacy")
    assert r.json()["service"] == {"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]}
    assert r.headers["etag"] == '"1"'
    r = await admin.client.put("/api/v1/services/legacy",
                               json={"endpoints": ["http://10.0.0.5:8080", "http://10.0.0.6:8080"]})
    assert r.status_code == 200 and r.json()["version"] == 2
    assert "~ service legacy" in r.json()["diff_text"]
    r = await admin.client.get("/api/v1/services")
    assert [s["name"] for s in r.json()["services"]] == ["legacy"]
    assert len(r.json()["services"][0]["endpoints"]) == 2
    r = await admin.client.delete("/api/v1/services/legacy")
    assert r.status_code == 200 and r.json()["version"] == 3
    assert (await admin.client.get("/api/v1/services/legacy")).status_code == 404
    assert (await admin.client.get("/api/v1/services")).json()["services"] == []


async def test_route_crud_round_trip(admin: Admin) -> None:
    await admin.apply(SAMPLE)
    route = {"name": "beta", "match": {"path_prefix": "/beta", "headers": [{"name": "X-Beta",
                                                                             "value": "1"}]},
             "service": "orders", "priority": 5}
    r = await admin.client.post("/api/v1/routes", json=route, headers={"Peel-Reason": "beta users"})
    assert r.status_code == 201, r.text
    assert (await admin.client.get("/api/v1/routes/beta")).json()["route"] == route
    r = await admin.client.put("/api/v1/routes/beta", json={**route, "service": "legacy"})
    assert r.json()["changed"] is True
    names = [x["name"] for x in (await admin.client.get("/api/v1/routes")).json()["routes"]]
    assert names == ["beta", "legacy-default", "orders"]
    assert (await admin.client.delete("/api/v1/routes/beta")).status_code == 200
    assert (await admin.client.get("/api/v1/routes/beta")).status_code == 404
    assert [i.reason for i in admin.store.history()][-2] == "beta users"


async def test_a_write_that_changes_nothing_creates_no_version(admin: Admin) -> None:
    await admin.apply(SAMPLE)
    r = await admin.client.put("/api/v1/services/legacy", json=SAMPLE["services"][0])
    assert r.status_code == 200
    assert r.json() | {"diff": None, "diff_text": None} == {
        "version": 1, "changed": False, "summary": "no change", "diff": None, "diff_text": None,
        "service": SAMPLE["services"][0]}
    assert admin.version() == 1


REFUSALS: list[tuple[str, str, dict[str, Any], int, str, object]] = [
    ("POST", "/api/v1/routes", {"name": "x", "match": {"path": "/x"}, "service": "nowhere"},
     422, "routes[x].service", "nowhere"),
    ("PUT", "/api/v1/routes/x", {"match": {"path_regex": "/(unclosed"}, "service": "orders"},
     422, "routes[x].match.path_regex", "/(unclosed"),
    ("POST", "/api/v1/services", {"name": "orders", "endpoints": ["http://10.9.9.9:1"]},
     409, "services[orders].name", "orders"),
    ("POST", "/api/v1/routes", {"name": "orders", "match": {"path": "/o"}, "service": "orders"},
     409, "routes[orders].name", "orders"),
    ("PUT", "/api/v1/routes/twin", {"match": {"path_prefix": "/orders", "methods": ["POST", "GET"]},
                                    "service": "legacy"},
     422, "routes[twin].match", {"path_prefix": "/orders", "methods": ["POST", "GET"]}),
    ("PUT", "/api/v1/services/orders", {"endpoints": ["http://a:1"], "weight": 3},
     422, "service.weight", None),
    ("PUT", "/api/v1/routes/orders", {"service": "orders", "match": {"path_prefixx": "/o"}},
     422, "routes[orders].match.path_prefixx", None),
    ("PUT", "/api/v1/services/new", {"endpoints": ["ftp://10.0.0.1:21"]},
     422, "services[new].endpoints[0]", "ftp://10.0.0.1:21"),
    ("PUT", "/api/v1/services/new", {"endpoints": ["http://10.0.0.1:99999"]},
     422, "services[new].endpoints[0]", "http://10.0.0.1:99999"),
    ("DELETE", "/api/v1/services/orders", {}, 422, "services[orders]", "orders"),
    ("DELETE", "/api/v1/services/ghost", {}, 404, "services[ghost]", "ghost"),
    ("DELETE", "/api/v1/routes/ghost", {}, 404, "routes[ghost]", "ghost"),
    ("PUT", "/api/v1/services/orders", {"name": "other", "endpoints": ["http://a:1"]},
     422, "name", "other"),
    ("PUT", "/api/v1/routes/Bad_Name", {"service": "orders"}, 422, "route.name", "Bad_Name"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "field", "value"), REFUSALS,
                         ids=[f"{r[0]} {r[1]} {r[4]}" for r in REFUSALS])
async def test_refused_changes_name_the_field_and_value_and_write_nothing(
        admin: Admin, method: str, path: str, body: dict[str, Any], status: int, field: str,
        value: object) -> None:
    await admin.apply(SAMPLE)
    kwargs: dict[str, Any] = {"json": body} if method != "DELETE" else {}
    r = await admin.client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    problem = r.json()
    assert problem["status"] == status
    assert problem["field"] == field
    if value is not None:
        assert problem["value"] == value
    assert field in problem["detail"]
    assert admin.version() == 1
    assert len(admin.store.history()) == 1


async def test_bad_json_is_400_and_writes_nothing(admin: Admin) -> None:
    for body in (b"{not json", b"", b"\xff\xfe"):
        r = await admin.client.put("/api/v1/services/x", content=body,
                                   headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == PROBLEM
        assert r.json()["field"] == "body"
    r = await admin.client.post("/api/v1/services", json=["a list"])
    assert r.status_code == 422
    assert admin.version() == 0


async def test_oversize_body_is_413(admin: Admin) -> None:
    r = await admin.client.put("/api/v1/services/x", content=b"{}",
                               headers={"Content-Type": "application/json",
                                        "Content-Length": str(64 * 1024 * 1024)})
    assert r.status_code == 413
    assert r.json()["code"] == "body-too-large"


async def test_stale_if_match_is_412_and_writes_nothing(admin: Admin) -> None:
    await admin.apply(SAMPLE)
    await admin.apply({**SAMPLE, "routes": SAMPLE["routes"][:1]})
    r = await admin.client.put("/api/v1/services/extra", json={"endpoints": ["http://10.1.1.1:80"]},
                               headers={"If-Match": '"1"'})
    assert r.status_code == 412, r.text
    assert r.json()["field"] == "If-Match" and r.json()["value"] == 1
    assert admin.version() == 2
    r = await admin.client.put("/api/v1/services/extra", json={"endpoints": ["http://10.1.1.1:80"]},
                               headers={"If-Match": '"2"'})
    assert r.status_code == 200 and r.json()["version"] == 3
    r = await admin.client.delete("/api/v1/services/extra", headers={"If-Match": "three"})
    assert r.status_code == 400 and r.json()["field"] == "If-Match"
    assert admin.version() == 3


async def test_unknown_method_is_a_problem_too(admin: Admin) -> None:
    r = await admin.client.patch("/api/v1/services/x", json={})
    assert r.status_code == 405
    assert r.headers["content-type"] == PROBLEM
