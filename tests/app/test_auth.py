"""No token, no access: every path but the health probes needs a valid bearer token."""

from __future__ import annotations

import httpx
import pytest
from starlette.routing import Route

from gateway.admin.app import build_admin_app
from gateway.admin.auth import TokenCache
from gateway.core.settings import Settings
from routes.store import Store
from tests.app.conftest import Admin

pytestmark = pytest.mark.anyio


def _every_path(store: Store) -> list[tuple[str, str]]:
    app = build_admin_app(store, ready=lambda: True, settings=Settings())
    out = []
    for route in app.routes:
        assert isinstance(route, Route)
        path = route.path.replace("{name}", "orders").replace("{n:int}", "1")
        out += [(method, path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return out


@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Bearer peel_forged", "Basic YTpi",
                                           "Bearer", ""])
async def test_every_path_refuses_without_a_valid_token(admin: Admin, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with admin.other(headers) as anonymous:
        for method, path in _every_path(admin.store):
            r = await anonymous.request(method, path, json={})
            if path in ("/healthz", "/readyz"):
                assert r.status_code == 200, (method, path)
                continue
            assert r.status_code == 401, (method, path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["status"] == 401
    assert admin.version() == 0


async def test_unknown_paths_are_also_behind_auth(admin: Admin) -> None:
    r = await admin.client.get("/api/v1/nothing", headers={"Authorization": ""})
    assert r.status_code == 401


async def test_a_valid_token_is_the_actor_of_its_changes(admin: Admin) -> None:
    bob = admin.store.create_token("bob")
    r = await admin.client.put("/api/v1/services/legacy", json={"endpoints": ["http://10.0.0.5:80"]},
                               headers={"Authorization": f"Bearer {bob}", "Peel-Reason": "first VM"})
    assert r.status_code == 200, r.text
    (info,) = admin.store.history()
    assert (info.actor, info.reason) == ("bob", "first VM")


async def test_revoked_token_stops_working(store: Store) -> None:
    token = store.create_token("carol")
    app = build_admin_app(store, ready=lambda: True, settings=Settings(), token_cache_seconds=0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        assert (await client.get("/api/v1/services")).status_code == 200
        store.revoke_token("carol")
        assert (await client.get("/api/v1/services")).status_code == 401


def test_token_cache_remembers_only_successes_and_only_for_a_while() -> None:
    calls: list[str] = []
    valid = {"good": "alice"}
    now = [100.0]

    def verify(token: str) -> str | None:
        calls.append(token)
        return valid.get(token)

    cache = TokenCache(verify, ttl=5, clock=lambda: now[0])
    assert cache.lookup("good") == "alice"
    assert cache.lookup("good") == "alice"
    assert calls == ["good"]
    assert cache.lookup("bad") is None
    assert cache.lookup("bad") is None
    assert calls == ["good", "bad", "bad"]
    del valid["good"]
    now[0] += 5.1
    assert cache.lookup("good") is None


async def test_health_and_readiness_are_open(admin: Admin, ready_flag: dict[str, bool]) -> None:
    async with admin.other({}) as anonymous:
        r = await anonymous.get("/healthz")
        assert (r.status_code, r.json()) == (200, {"status": "ok"})
        assert (await anonymous.get("/readyz")).status_code == 200
        ready_flag["ready"] = False
        r = await anonymous.get("/readyz")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
