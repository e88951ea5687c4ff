"""`POST /match`: which route and service would answer, as the data plane would decide."""

from __future__ import annotations

import pytest

from tests.app.conftest import SAMPLE, Admin

pytestmark = pytest.mark.anyio


async def test_match_names_route_service_and_rewrite(admin: Admin) -> None:
    await admin.apply(SAMPLE)
    r = await admin.client.post("/api/v1/match", json={"method": "GET",
                                                       "url": "http://Shop.Example:8080/orders/12?x=1"})
    assert r.status_code == 200, r.text
    assert r.json() == {"version": 1, "route": "orders", "service": "orders",
                        "endpoints": ["http://10.0.0.7:9000", "http://10.0.0.8:9000"], "priority": 0,
                        "path": "/orders/12", "upstream_path": "/v2/orders/12",
                        "upstream_host": "orders.internal"}
    r = await admin.client.post("/api/v1/match", json={"method": "DELETE", "url": "http://shop/orders/1"})
    assert r.json()["route"] == "legacy-default"
    assert r.json()["upstream_host"] is None


async def test_match_normalises_the_path_like_the_data_plane(admin: Admin) -> None:
    await admin.apply(SAMPLE)
    r = await admin.client.post("/api/v1/match", json={"url": "http://shop/static/../orders/%31"})
    assert r.json()["route"] == "orders"
    assert r.json()["path"] == "/orders/1"
    r = await admin.client.post("/api/v1/match", json={"url": "http://shop/a%2Fb"})
    assert r.status_code == 400 and r.json()["field"] == "url"


async def test_match_uses_headers_and_host(admin: Admin) -> None:
    doc = {**SAMPLE, "routes": [*SAMPLE["routes"],
                                {"name": "beta", "match": {"hosts": ["api.example.com"],
                                                           "headers": [{"name": "X-Beta", "value": "1"}]},
                                 "service": "orders", "priority": 10}]}
    await admin.apply(doc)
    r = await admin.client.post("/api/v1/match", json={"url": "/anything",
                                                       "headers": {"Host": "API.example.com:443",
                                                                   "X-Beta": "1"}})
    assert r.json()["route"] == "beta"
    r = await admin.client.post("/api/v1/match", json={"url": "http://api.example.com/anything"})
    assert r.json()["route"] == "legacy-default"


async def test_no_route_is_404_no_route_and_follows_new_versions(admin: Admin) -> None:
    await admin.apply({"services": SAMPLE["services"], "routes": [SAMPLE["routes"][1]]})
    r = await admin.client.post("/api/v1/match", json={"method": "GET", "url": "http://shop/cart"})
    assert r.status_code == 404
    assert r.json()["code"] == "no-route"
    await admin.apply(SAMPLE)
    r = await admin.client.post("/api/v1/match", json={"url": "http://shop/cart"})
    assert r.json()["route"] == "legacy-default" and r.json()["version"] == 2


async def test_match_refuses_bad_requests(admin: Admin) -> None:
    await admin.apply(SAMPLE)
    for body, field in (({"method": "G ET", "url": "/"}, "method"), ({"url": "ftp://x/"}, "url"),
                        ({"url": "/", "headers": {"Bad Name": "x"}}, "headers.Bad Name"),
                        ({"url": "/", "body": "x"}, "body"), ({}, "url")):
        r = await admin.client.post("/api/v1/match", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["field"] == field
