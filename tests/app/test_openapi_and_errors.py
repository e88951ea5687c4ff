"""The OpenAPI document covers every registered route; unexpected errors are 500 without a traceback."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from starlette.routing import Route

from gateway.admin.app import build_admin_app
from gateway.core.settings import Settings
from routes.model import Route as RouteRule
from routes.model import Service as ServiceRule
from routes.policies import (
    Balancer,
    CircuitBreaker,
    HashOn,
    HealthCheck,
    OutlierDetection,
    RateLimit,
    RetryPolicy,
    Timeouts,
)
from routes.store import Store
from tests.app.conftest import Admin

pytestmark = pytest.mark.anyio


async def test_openapi_is_3_1_and_covers_every_route_and_method(admin: Admin) -> None:
    r = await admin.client.get("/openapi.json")
    assert r.status_code == 200
    doc = json.loads(r.content)
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "A token from `peel token create NAME`"}
    app = build_admin_app(admin.store, ready=lambda: True, settings=Settings())
    registered = 0
    for route in app.routes:
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        assert path in doc["paths"], path
        for method in route.methods or ():
            if method != "HEAD":
                operation = doc["paths"][path][method.lower()]
                assert operation["responses"], (method, path)
                registered += 1
    described = sum(1 for item in doc["paths"].values() for key in item if key != "parameters")
    assert described == registered


async def test_openapi_is_built_once_and_served_the_same(admin: Admin) -> None:
    first, second = (await admin.client.get("/openapi.json")), (await admin.client.get("/openapi.json"))
    assert first.headers["content-type"] == "application/json"
    assert first.content == second.content and json.loads(first.content)["openapi"] == "3.1.0"


async def test_openapi_request_bodies_and_refs_resolve(admin: Admin) -> None:
    doc = (await admin.client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    refs = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(doc))
    assert refs and all(name in schemas for name in refs)
    writes = [(p, m) for p, item in doc["paths"].items() for m in ("post", "put") if m in item]
    assert writes
    for path, method in writes:
        assert "requestBody" in doc["paths"][path][method], (path, method)
    # the schemas list exactly the fields of the model, so a new route, service or policy field
    # cannot be forgotten
    # (refused_regex is what a stored parse kept, never a field of the document; _line is the
    # item's line in the stored text, routes.document_text)
    assert set(schemas["Route"]["properties"]) == \
        {f.name for f in dataclasses.fields(RouteRule)} - {"refused_regex", "_line"}
    # (identity is kept in the service's tls policy: ServiceTls.identity, docs/mtls.md)
    assert set(schemas["Service"]["properties"]) == \
        {f.name for f in dataclasses.fields(ServiceRule)} - {"_line"} | {"identity"}
    for policy in (HashOn, Balancer, HealthCheck, OutlierDetection, CircuitBreaker, RetryPolicy,
                   Timeouts, RateLimit):
        assert set(schemas[policy.__name__]["properties"]) == \
            {f.name for f in dataclasses.fields(policy)}, policy
    assert set(schemas["MatchRequest"]["properties"]) == {"method", "url", "headers", "cookies", "from"}
    assert set(schemas["Match"]["properties"]) >= {"hosts", "path_prefix", "methods", "headers",
                                                     "query", "cookies"}


class BrokenStore(Store):
    def latest(self) -> object:  # type: ignore[override]
        raise ZeroDivisionError("secret internals")


async def test_unexpected_errors_are_500_problems_without_traceback(store: Store) -> None:
    import httpx

    broken = BrokenStore(str(store.engine.url))
    token = broken.create_token("alice")
    app = build_admin_app(broken, ready=lambda: True, settings=Settings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        r = await client.get("/api/v1/services")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert "secret" not in r.text and "Traceback" not in r.text
    assert r.json()["code"] == "internal-error"
