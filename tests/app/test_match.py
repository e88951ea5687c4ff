"""`POST /match`: which route and service would answer, as the data plane would decide."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest

from gateway.admin.app import build_admin_app
from gateway.core.settings import load_settings
from routes.store import Store
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
                        "upstream_host": "orders.internal", "side": None, "migration": None,
                        "from": None, "rate_limit": None, "max_body": None, "deadline_ms": None,
                        "websocket": False}
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


CANARY: dict[str, Any] = {
    "services": SAMPLE["services"],
    "routes": [SAMPLE["routes"][0],
               {"name": "orders", "match": {"path_prefix": "/orders"}, "service": "legacy",
                "migration": {"to": "orders", "stage": "canary", "percent": 50,
                              "cohort": {"header": "X-User-Id"},
                              "beta": {"header": "X-Beta-User", "allow": ["ada"], "deny": ["bob"]}}}],
}


def _oracle_side(salt: str, key: str, share: int) -> str:
    """The documented bucket (facade/bucketing.py), computed here independently."""
    digest = hashlib.sha256(salt.encode() + b"\0" + key.encode()).digest()
    return "to" if int.from_bytes(digest[:8], "big") % 10_000 < share else "from"


async def test_match_names_the_side_a_canary_picks_for_a_user(admin: Admin) -> None:
    await admin.apply(CANARY)
    sides = set()
    for user in ("u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"):
        r = await admin.client.post("/api/v1/match", json={"url": "http://shop/orders/1",
                                                           "headers": {"X-User-Id": user}})
        assert r.status_code == 200, r.text
        body = r.json()
        expected = _oracle_side("orders", user, 5000)
        assert body["side"] == expected, user
        assert body["service"] == ("orders" if expected == "to" else "legacy")
        migration = body["migration"]
        assert migration["stage"] == "canary" and migration["reason"] == "percent"
        assert migration["cohort"]["source"] == "header x-user-id" and migration["cohort"]["key"] == user
        assert migration["cohort"]["share"] == 5000
        assert (migration["cohort"]["bucket"] < 5000) == (expected == "to")
        sides.add(expected)
    assert sides == {"to", "from"}


async def test_match_reports_beta_values_trusted_or_not(admin: Admin, store: Store) -> None:
    await admin.apply(CANARY)
    # The admin's settings trust nobody for plain beta values: the value is reported, not honoured.
    r = await admin.client.post("/api/v1/match", json={"url": "http://shop/orders/1",
                                                       "headers": {"X-Beta-User": "ada"}})
    beta = r.json()["migration"]["beta"]
    assert beta == {"source": "header x-beta-user", "sent": True, "trusted": False, "user": None,
                    "list": None}
    app = build_admin_app(store, ready=lambda: True,
                          settings=load_settings(environ={"PEEL_FACADE_TRUSTED_NETWORKS": "10.1.0.0/16"}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test",
                                 headers={"Authorization": f"Bearer {admin.token}"}) as client:
        for sender, user, side, reason, listed in (("10.1.2.3", "ada", "to", "beta-allow", "allow"),
                                                   ("10.1.2.3", "bob", "from", "beta-deny", "deny"),
                                                   ("192.0.2.9", "ada", None, "percent", None)):
            r = await client.post("/api/v1/match", json={"url": "http://shop/orders/1", "from": sender,
                                                         "headers": {"X-Beta-User": user,
                                                                     "X-User-Id": "u1"}})
            body = r.json()
            assert body["from"] == sender
            migration = body["migration"]
            assert migration["reason"] == reason, (sender, user)
            assert migration["beta"]["trusted"] == (listed is not None)
            assert migration["beta"]["list"] == listed
            if side is not None:
                assert body["side"] == side
        r = await client.post("/api/v1/match", json={"url": "/orders/1", "from": "not-an-ip"})
        assert r.status_code == 422 and r.json()["field"] == "from"


async def test_match_takes_cookies_and_reports_route_policies(admin: Admin) -> None:
    route = {"name": "orders", "match": {"path_prefix": "/orders"}, "service": "legacy",
             "rate_limit": {"requests": 5, "per": "1s"}, "max_body": 1024,
             "timeouts": {"total": "2s"}, "websocket": True,
             "migration": {"to": "orders", "stage": "canary", "percent": 50, "cohort": {"cookie": "uid"}}}
    await admin.apply({"services": SAMPLE["services"], "routes": [route]})
    r = await admin.client.post("/api/v1/match", json={"url": "http://shop/orders",
                                                       "cookies": {"uid": "u7", "other": "x"}})
    body = r.json()
    assert body["migration"]["cohort"] == {"source": "cookie uid", "key": "u7",
                                           "bucket": body["migration"]["cohort"]["bucket"],
                                           "share": 5000}
    assert body["side"] == _oracle_side("orders", "u7", 5000)
    assert body["rate_limit"] == {"requests": 5, "per": 1.0}
    assert body["max_body"] == 1024 and body["websocket"] is True
    assert 1900 <= body["deadline_ms"] <= 2000
    # No token is taken: many more matches than the rate allows all answer.
    for _ in range(10):
        assert (await admin.client.post("/api/v1/match", json={"url": "/orders"})).status_code == 200
    r = await admin.client.post("/api/v1/match", json={"url": "/orders", "cookies": {"uid": "a;b"}})
    assert r.status_code == 422 and r.json()["field"] == "cookies.uid"
