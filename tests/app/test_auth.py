"""No token, no access: every path but the health probes (and the dashboard's files, which hold no
data) needs a valid bearer token."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from starlette.routing import Route

from gateway.admin.app import build_admin_app
from gateway.admin.auth import (
    CACHE_SECONDS,
    FAILURE_BURST,
    FAILURE_RATE,
    OPEN_PATHS,
    SELF_AUTHENTICATED,
    TokenCache,
    TooManyFailures,
    required_scope,
)
from gateway.admin.dashboard import OPEN_PATHS as DASHBOARD_PATHS
from gateway.core.settings import Settings
from routes.store import Store
from routes.tokens import TokenGrant, closure
from tests.app.conftest import Admin

pytestmark = pytest.mark.anyio
OPEN = OPEN_PATHS | DASHBOARD_PATHS  # the health probes, and the dashboard's files: no data in them


def _every_path(store: Store) -> list[tuple[str, str]]:
    """Every path behind the admin token (the certificate paths check their own credentials:
    tests/app/test_certificates.py)."""
    app = build_admin_app(store, ready=lambda: True, settings=Settings())
    out = []
    for route in app.routes:
        assert isinstance(route, Route)
        if route.path in SELF_AUTHENTICATED:
            continue
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
            if path in OPEN:
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


def test_token_cache_remembers_successes_and_misses_only_for_a_while() -> None:
    calls: list[str] = []
    valid = {"good": TokenGrant("alice", closure(["write"]))}
    now = [100.0]

    def verify(token: str) -> TokenGrant | None:
        calls.append(token)
        return valid.get(token)

    cache = TokenCache(verify, ttl=5, miss_ttl=5, clock=lambda: now[0])
    assert cache.lookup("good") == valid["good"]
    assert cache.lookup("good") == valid["good"]
    assert calls == ["good"]
    assert cache.lookup("bad") is None
    assert cache.lookup("bad") is None
    assert calls == ["good", "bad"]
    grant = valid.pop("good")
    now[0] += 5.1
    assert cache.lookup("good") is None
    valid["good"] = grant  # a token that failed works again once the miss is forgotten
    assert cache.lookup("good") is None
    now[0] += 5.1
    assert cache.lookup("good") == grant


def test_a_cached_token_stops_at_its_expiry_not_at_the_end_of_the_cache_period() -> None:
    wall = [datetime(2026, 1, 1, tzinfo=UTC)]
    now = [0.0]
    grant = TokenGrant("temp", closure(["read"]), expires_at=wall[0] + timedelta(seconds=2))

    def verify(token: str) -> TokenGrant | None:
        return grant if wall[0] < grant.expires_at else None  # type: ignore[operator]

    cache = TokenCache(verify, ttl=60, clock=lambda: now[0], wall=lambda: wall[0])
    assert cache.lookup("t") == grant
    now[0] += 3
    wall[0] += timedelta(seconds=3)
    assert cache.lookup("t") is None


def test_a_thousand_bad_tokens_cost_a_bounded_number_of_store_queries() -> None:
    queries = [0]
    now = [0.0]

    def verify(token: str) -> TokenGrant | None:
        queries[0] += 1
        return None

    cache = TokenCache(verify, clock=lambda: now[0])
    refused = 0
    for i in range(1000):
        try:
            assert cache.lookup(f"peel_bad{i}", "203.0.113.9") is None
        except TooManyFailures as exc:
            refused += 1
            assert 0 < exc.retry_after <= 1 / FAILURE_RATE
        now[0] += 0.01  # 1,000 tries in 10 s
    assert queries[0] <= FAILURE_BURST + 10 * FAILURE_RATE + 1
    assert refused >= 1000 - queries[0]
    # another client is not held back by the first one's failures
    assert cache.lookup("peel_other", "198.51.100.7") is None
    assert queries[0] <= FAILURE_BURST + 10 * FAILURE_RATE + 2


async def test_bad_tokens_through_the_api_are_throttled_per_client(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    good = store.create_token("ops")
    queries = [0]
    real = store.grant

    def counting(token: str) -> TokenGrant | None:
        queries[0] += 1
        return real(token)

    monkeypatch.setattr(store, "grant", counting)
    app = build_admin_app(store, ready=lambda: True, settings=Settings())
    statuses: dict[int, int] = {}
    started = time.monotonic()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        r = await c.get("/api/v1/services", headers={"Authorization": f"Bearer {good}"})
        assert r.status_code == 200
        for i in range(1000):
            r = await c.get("/api/v1/services", headers={"Authorization": f"Bearer peel_{i:043d}"})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        throttled = r
        took = time.monotonic() - started
        # the good token, remembered, still works for the same client; on a machine so loaded that
        # the loop outlived the cache, it needs a store lookup, which the throttle refuses
        r = await c.get("/api/v1/services", headers={"Authorization": f"Bearer {good}"})
        if took < CACHE_SECONDS - 0.5:
            assert r.status_code == 200
        elif took > CACHE_SECONDS + 1.5:
            assert r.status_code == 429
    elapsed = time.monotonic() - started
    assert set(statuses) == {401, 429}
    assert queries[0] <= 1 + FAILURE_BURST + elapsed * FAILURE_RATE + 1
    assert throttled.status_code == 429 and throttled.json()["code"] == "too-many-token-failures"
    assert int(throttled.headers["retry-after"]) >= 1


SCOPED = {"metrics": ["metrics"], "read": ["read"], "write": ["write"]}


@pytest.mark.parametrize("scope", sorted(SCOPED))
async def test_every_path_needs_the_scope_of_its_method(admin: Admin, scope: str) -> None:
    token = admin.store.create_token(f"t-{scope}", scopes=SCOPED[scope])
    held = closure(SCOPED[scope])
    async with admin.other({"Authorization": f"Bearer {token}"}) as client:
        for method, path in _every_path(admin.store):
            if path in OPEN:
                continue
            needed = required_scope(method, path)
            r = await client.request(method, path, json={})
            if needed in held:
                assert r.status_code != 403, (scope, method, path, r.text)
                continue
            assert r.status_code == 403, (scope, method, path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "insufficient-scope" and r.json()["scope"] == needed
            assert f"{needed} scope" in r.json()["detail"]
            assert f'scope="{needed}"' in r.headers["www-authenticate"]
    assert admin.version() == 0


def test_the_scope_of_each_request() -> None:
    assert required_scope("GET", "/metrics") == "metrics"
    assert required_scope("GET", "/api/v1/services") == "read"
    assert required_scope("HEAD", "/api/v1/config") == "read"
    assert required_scope("POST", "/api/v1/match") == "read"
    assert required_scope("POST", "/api/v1/config/apply") == "write"
    assert required_scope("PUT", "/api/v1/routes/x") == "write"
    assert required_scope("DELETE", "/api/v1/routes/x") == "write"
    assert closure(["metrics"]) == {"metrics"}
    assert closure(["read"]) == {"read", "metrics"}
    assert closure(["write"]) == {"write", "read", "metrics"}


async def test_a_metrics_token_reads_metrics_and_nothing_else(admin: Admin) -> None:
    token = admin.store.create_token("prom", scopes=["metrics"])
    async with admin.other({"Authorization": f"Bearer {token}"}) as scraper:
        assert (await scraper.get("/metrics")).status_code == 200
        r = await scraper.get("/api/v1/config")
        assert r.status_code == 403 and r.json()["scope"] == "read"
        assert "metrics" in r.json()["detail"] and "'prom'" in r.json()["detail"]


async def test_health_and_readiness_are_open(admin: Admin, ready_flag: dict[str, bool]) -> None:
    async with admin.other({}) as anonymous:
        r = await anonymous.get("/healthz")
        assert (r.status_code, r.json()) == (200, {"status": "ok"})
        assert (await anonymous.get("/readyz")).status_code == 200
        ready_flag["ready"] = False
        r = await anonymous.get("/readyz")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
