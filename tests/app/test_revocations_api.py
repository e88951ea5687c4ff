"""`/api/v1/certificates/revocations` in-process: a revocation is a config version whose document
lists it (export, history), refused input names the field and writes nothing, the mesh switch
round-trips through apply and export, and a renewal with a revoked certificate is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from gateway.admin.app import build_admin_app
from gateway.core.settings import Settings
from gateway.identity import certs
from gateway.identity.ca import CertificateAuthority
from routes.store import Store
from tests.app.conftest import SAMPLE as SEED
from tests.app.test_certificates import joined, renewal

pytestmark = pytest.mark.anyio
TD = "peel.internal"


@pytest.fixture
async def client(store: Store, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    CertificateAuthority.init(tmp_path / "ca", TD, now=datetime.now(UTC))
    base = Settings()
    settings = replace(base, identity=replace(base.identity, ca_dir=str(tmp_path / "ca"), trust_domain=TD))
    token = store.create_token("alice")
    app = build_admin_app(store, ready=lambda: True, settings=settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a",
                                 headers={"Authorization": f"Bearer {token}"}) as c:
        r = await c.post("/api/v1/config/apply", json={"document": SEED, "reason": "seed"})
        assert r.status_code == 200, r.text
        yield c


async def revoke(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/api/v1/certificates/revocations", json=body)


async def test_a_revocation_is_a_config_version_listed_exported_and_in_history(
        client: httpx.AsyncClient, store: Store) -> None:
    before = store.latest_version()
    r = await revoke(client, {"serial": "0A:BC:01", "reason": "key copied to a laptop"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["changed"] and body["version"] == before + 1
    assert body["revocation"]["serial"] == "abc01"
    assert body["summary"] == "+1 revocation"
    r = await revoke(client, {"identity": "billing"})  # a service name: this trust domain's ID
    assert r.status_code == 201 and r.json()["revocation"]["identity"] == f"spiffe://{TD}/svc/billing"
    listed = (await client.get("/api/v1/certificates/revocations")).json()
    assert listed["version"] == before + 2
    assert {x.get("serial") or x.get("identity") for x in listed["revocations"]} == \
        {"abc01", f"spiffe://{TD}/svc/billing"}
    exported = (await client.get("/api/v1/config")).json()
    document = exported.get("document", exported)
    assert {x.get("serial") or x.get("identity") for x in document["revocations"]} == \
        {"abc01", f"spiffe://{TD}/svc/billing"}
    history = store.history()
    assert history[0].reason == f"revoke spiffe://{TD}/svc/billing"
    assert history[1].reason == "revoke serial abc01: key copied to a laptop"
    # a serial revoked again: no new version
    again = await revoke(client, {"serial": "abc01"})
    assert again.status_code == 200 and not again.json()["changed"]
    assert store.latest_version() == before + 2
    # other edits keep the revocations
    r = await client.put("/api/v1/routes/orders", json={"name": "orders", "match": {"path_prefix": "/o"},
                                                        "service": "orders"})
    assert r.status_code in (200, 201), r.text
    assert len(store.latest().document.revocations) == 2


@pytest.mark.parametrize(("body", "field"), [
    ({}, "serial"),
    ({"serial": "ab", "identity": "billing"}, "identity"),
    ({"serial": "not-hex"}, "serial"),
    ({"serial": 12}, "serial"),
    ({"identity": "spiffe://peel.internal/svc/a b"}, "identity"),
    ({"identity": "Not A Name"}, "identity"),
    ({"serial": "ab", "reason": 5}, "reason"),
    ({"serial": "ab", "reason": "two\nlines"}, "reason"),
    ({"serial": "ab", "at": "2026-01-01T00:00:00Z"}, "at"),
])
async def test_refused_input_names_the_field_and_writes_nothing(client: httpx.AsyncClient, store: Store,
                                                                body: dict[str, Any], field: str) -> None:
    before = store.latest_version()
    r = await revoke(client, body)
    assert r.status_code in (400, 422), r.text
    assert r.json()["field"] == field, r.json()
    assert store.latest_version() == before


async def test_revoking_needs_the_write_scope(client: httpx.AsyncClient, store: Store) -> None:
    reader = store.create_token("reader", scopes=["read"])
    r = await client.post("/api/v1/certificates/revocations", json={"serial": "ab"},
                          headers={"Authorization": f"Bearer {reader}"})
    assert r.status_code == 403 and r.json()["code"] == "insufficient-scope"
    listed = await client.get("/api/v1/certificates/revocations",
                              headers={"Authorization": f"Bearer {reader}"})
    assert listed.status_code == 200


async def test_the_mesh_switch_round_trips_through_apply_and_export(client: httpx.AsyncClient,
                                                                    store: Store) -> None:
    document = {**SEED, "mesh": {"inbound_mtls": "strict"}}
    r = await client.post("/api/v1/config/apply", json={"document": document, "reason": "strict mesh"})
    assert r.status_code == 200 and r.json()["summary"] == "~mesh", r.text
    assert store.latest().document.mesh is not None
    assert store.latest().document.to_dict()["mesh"] == {"inbound_mtls": "strict"}
    bad = await client.post("/api/v1/config/apply",
                            json={"document": {**SEED, "mesh": {"inbound_mtls": "off"}}, "reason": "x"})
    assert bad.status_code == 422 and bad.json()["field"] == "mesh.inbound_mtls"


async def test_a_renewal_with_a_revoked_certificate_is_refused(client: httpx.AsyncClient,
                                                               store: Store) -> None:
    key, chain = await joined(client, store)
    renewed_key = certs.new_key()
    ok = await client.post("/api/v1/certificates/renew", json=renewal(key, chain, renewed_key))
    assert ok.status_code == 200, ok.text
    renewed = ok.json()["certificate"]
    serial = format(x509.load_pem_x509_certificates(chain.encode())[0].serial_number, "x")
    assert (await revoke(client, {"serial": serial})).status_code == 201
    r = await client.post("/api/v1/certificates/renew", json=renewal(key, chain, certs.new_key()))
    assert r.status_code == 403 and r.json()["code"] == "certificate-revoked", r.text
    # the certificate renewed before the serial's revocation still renews ...
    newer_key = certs.new_key()
    r = await client.post("/api/v1/certificates/renew", json=renewal(renewed_key, renewed, newer_key))
    assert r.status_code == 200, r.text
    # ... until its identity is revoked: every certificate of it issued until now is refused
    assert (await revoke(client, {"identity": "orders"})).status_code == 201
    r = await client.post("/api/v1/certificates/renew",
                          json=renewal(newer_key, r.json()["certificate"], certs.new_key()))
    assert r.status_code == 403 and "revoked" in r.json()["detail"]
