"""A service's upstream TLS through the admin API: applied and printed back unchanged, refusals as
422 naming the field. The files are not read here: the admin API may run on another machine."""

from __future__ import annotations

from typing import Any

import pytest

from tests.app.conftest import Admin

PROBLEM = "application/problem+json"
TLS = {"ca": "/etc/peel/upstream/payments-ca.pem", "client_cert": "/etc/peel/upstream/peel.pem",
       "client_key": "/etc/peel/upstream/peel.key", "server_name": "payments.internal",
       "min_version": "1.3"}
DOCUMENT: dict[str, Any] = {
    "services": [{"name": "payments", "endpoints": ["https://10.0.0.9:8443"], "tls": TLS}],
    "routes": [{"name": "pay", "match": {"path_prefix": "/pay"}, "service": "payments"}],
}

pytestmark = pytest.mark.anyio


async def test_a_tls_block_is_applied_without_its_files_and_exported_unchanged(admin: Admin) -> None:
    # None of these paths exists on this machine: only their shape is checked.
    version = await admin.apply(DOCUMENT)
    r = await admin.client.get("/api/v1/config")
    assert r.status_code == 200
    assert r.json()["document"]["services"][0]["tls"] == TLS
    # export -> apply changes nothing
    r = await admin.client.post("/api/v1/config/apply",
                                json={"document": r.json()["document"], "reason": "round trip"})
    assert r.status_code == 200 and r.json()["changed"] is False and admin.version() == version
    r = await admin.client.get("/api/v1/services/payments")
    assert r.json()["service"]["tls"] == TLS


@pytest.mark.parametrize(("service", "field"), [
    ({"endpoints": ["http://10.0.0.9:80"], "tls": {"ca": "/ca.pem"}}, "services[payments].tls"),
    ({"endpoints": ["https://10.0.0.9"], "tls": {"insecure": True}}, "services[payments].tls.insecure"),
    ({"endpoints": ["https://10.0.0.9"], "tls": {"ca": "ca.pem"}}, "services[payments].tls.ca"),
])
async def test_refusals_are_422_naming_the_field(admin: Admin, service: dict[str, Any], field: str) -> None:
    await admin.apply(DOCUMENT)
    r = await admin.client.put("/api/v1/services/payments", json=service)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM and r.json()["field"] == field
    assert admin.version() == 1
