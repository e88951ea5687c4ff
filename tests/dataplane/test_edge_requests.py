"""Edge rules through the whole data plane (in process): absolute-form targets (issue 11, item 5),
canonical hosts (item 14), beta spellings (item 8) and untrusted claims (item 13)."""

from __future__ import annotations

from typing import Any

from gateway.core.asgi import TARGET
from tests.dataplane.conftest import PlaneFactory
from tests.fakes.asgi import ASGIApp, AsgiResponse, asgi_request
from tests.fakes.upstream import echo, ok

SHOP, SITE, NEW = "http://shop:80", "http://site:80", "http://new:80"
DOCUMENT: dict[str, Any] = {
    "services": [{"name": "shop", "endpoints": [SHOP], "outlier": False},
                 {"name": "site", "endpoints": [SITE], "outlier": False},
                 {"name": "new", "endpoints": [NEW], "outlier": False}],
    "routes": [
        {"name": "shop", "match": {"hosts": ["shop.example"], "path_prefix": "/"}, "service": "shop",
         "migration": {"to": "new", "stage": "canary", "percent": 0,
                       "beta": {"header": "X-Beta-User", "allow": ["ada"]}}},
        {"name": "site", "match": {"path_prefix": "/"}, "service": "site"},
    ],
}


def with_target(app: ASGIApp, target: bytes) -> ASGIApp:
    """`app` behind an edge that read `target` on the request line (as gateway.edge.protocol sets it)."""
    async def edge(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["extensions"][TARGET] = target
        await app(scope, receive, send)
    return edge


def test_an_absolute_form_target_replaces_the_host_upstream(plane: PlaneFactory) -> None:
    p = plane(DOCUMENT, {SHOP: echo(), SITE: echo(), NEW: ok(b"new")})

    async def go() -> None:
        r = await asgi_request(with_target(p.app, b"http://shop.example/orders"), "GET", "/orders",
                               host="evil.example")
        assert r.status == 200
        seen = p[SHOP].requests[0]
        assert seen.target == "/orders"
        assert seen.header("host") == "shop.example"
        assert not p[SITE].requests
    p.run(go)


def test_a_trailing_dot_does_not_escape_host_routes(plane: PlaneFactory) -> None:
    p = plane(DOCUMENT, {SHOP: ok(b"shop"), SITE: ok(b"site"), NEW: ok(b"new")})

    async def go() -> None:
        for host in ("shop.example.", "SHOP.example.:8080"):
            r = await p.request("GET", "/x", host=host)
            assert (r.status, r.body) == (200, b"shop"), host
        assert not p[SITE].requests
    p.run(go)


def test_a_host_that_is_not_host_port_is_refused(plane: PlaneFactory) -> None:
    p = plane(DOCUMENT, {SHOP: ok(), SITE: ok(), NEW: ok()})

    async def go() -> None:
        for host in ("evil.com:80:90", "shop.example..", "a b"):
            r: AsgiResponse = await p.request("GET", "/x", host=host)
            assert r.status == 400, host
            assert r.json()["code"] == "bad-host"
        assert not p[SITE].requests and not p[SHOP].requests
    p.run(go)


def test_beta_spellings_and_claims_from_untrusted_clients_never_reach_the_upstream(
        plane: PlaneFactory) -> None:
    p = plane(DOCUMENT, {SHOP: echo(), SITE: echo(), NEW: ok(b"new")})

    async def go() -> None:
        r = await p.request("GET", "/x", host="shop.example", client="192.0.2.9", headers={
            "X_Beta_User": "ada", "X-Beta-User": "ada", "Client-IP": "10.0.0.1",
            "X-HTTP-Method-Override": "DELETE", "X-SSL-Client-Verify": "SUCCESS", "Remote-User": "root",
            "X_Real_IP": "10.0.0.1", "Accept": "*/*"})
        assert r.status == 200
        names = p[SHOP].requests[0].names()
        assert not names & {"x_beta_user", "x-beta-user", "client-ip", "x-http-method-override",
                            "x-ssl-client-verify", "remote-user", "x_real_ip"}
        assert "accept" in names
        assert not p[NEW].requests
    p.run(go)
