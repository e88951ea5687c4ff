"""`/api/v1/control` in-process with a real CA: a sidecar reads the config and registers its endpoint
as itself (a certificate and a signature of its key), the long poll answers a change and 304s
without one, and every way of not being that sidecar is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from gateway.admin.app import build_admin_app
from gateway.core.settings import Settings
from gateway.identity import caller, certs
from gateway.identity.ca import CertificateAuthority
from gateway.identity.spiffe import service_id
from routes.model import Document
from routes.store import Store
from tests.app.conftest import SAMPLE

pytestmark = pytest.mark.anyio
TD = "peel.internal"
ORDERS = "spiffe://peel.internal/svc/orders"


class Sidecar:
    """A key and the chain the CA issued for it; signs requests as `gateway.identity.caller` does."""

    def __init__(self, ca_dir: Path, service: str, td: str = TD) -> None:
        self.key = certs.new_key()
        ca = CertificateAuthority.open(ca_dir)
        leaf = ca.issue(certs.build_csr(self.key, service_id(td, service)), service, now=datetime.now(UTC))
        self.chain = certs.cert_pem(leaf, ca.current.intermediate)

    def headers(self, method: str, target: str, body: bytes = b"", *, skew: int = 0) -> dict[str, str]:
        return caller.sign(self.key, self.chain, method, target, body,
                           timestamp=int(datetime.now(UTC).timestamp()) + skew)


@pytest.fixture
async def client(store: Store, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    CertificateAuthority.init(tmp_path / "ca", TD, now=datetime.now(UTC))
    base = Settings()
    settings = replace(base, identity=replace(base.identity, ca_dir=str(tmp_path / "ca")))
    app = build_admin_app(store, ready=lambda: True, settings=settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        yield c


async def register(client: httpx.AsyncClient, sidecar: Sidecar, body: bytes) -> httpx.Response:
    path = "/api/v1/control/endpoints"
    return await client.post(path, content=body, headers={"Content-Type": "application/json",
                                                           **sidecar.headers("POST", path, body)})


async def test_a_sidecar_reads_the_config_and_registers_as_itself(client: httpx.AsyncClient, store: Store,
                                                                  tmp_path: Path) -> None:
    store.commit(Document.parse(SAMPLE), actor="t", reason="seed")
    orders = Sidecar(tmp_path / "ca", "orders")
    r = await client.get("/api/v1/control/config",
                         headers=orders.headers("GET", "/api/v1/control/config"))
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["version"] == 1 and first["document"] == Document.parse(SAMPLE).to_dict()
    assert first["registered"] == [] and r.headers["etag"] == f'"{first["tag"]}"'

    r = await register(client, orders, b'{"endpoint": "https://10.0.2.15:15443", "ttl": 30}')
    assert r.status_code == 200, r.text
    assert (r.json()["service"], r.json()["identity"]) == ("orders", ORDERS)
    [registered] = store.registrations()
    assert (registered.service, registered.url, registered.identity) == (
        "orders", "https://10.0.2.15:15443", ORDERS)

    # the registry moved: the tag the sidecar holds is stale, so the poll answers at once
    target = f"/api/v1/control/config?known={first['tag']}&wait=5"
    r = await client.get(target, headers=orders.headers("GET", target))
    assert r.status_code == 200
    second = r.json()
    assert second["tag"] != first["tag"] and [e["endpoint"] for e in second["registered"]] == [
        "https://10.0.2.15:15443"]
    # nothing moves: 304 after the wait
    target = f"/api/v1/control/config?known={second['tag']}&wait=0.5"
    r = await client.get(target, headers=orders.headers("GET", target))
    assert r.status_code == 304

    # a commit during a long poll ends it
    target = f"/api/v1/control/config?known={second['tag']}&wait=20"
    waiting = asyncio.create_task(client.get(target, headers=orders.headers("GET", target)))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await asyncio.to_thread(store.commit, Document.parse({**SAMPLE, "routes": SAMPLE["routes"][:1]}),
                            actor="t", reason="two")
    r = await asyncio.wait_for(waiting, 10)
    assert r.status_code == 200 and r.json()["version"] == 2

    path = "/api/v1/control/endpoints"
    body = b'{"endpoint": "https://10.0.2.15:15443"}'
    r = await client.request("DELETE", path, content=body, headers=orders.headers("DELETE", path, body))
    assert r.status_code == 200 and r.json()["removed"] is True
    assert store.registrations() == []


async def test_who_is_not_a_sidecar_of_this_ca_is_refused(client: httpx.AsyncClient, store: Store,
                                                           tmp_path: Path) -> None:
    orders = Sidecar(tmp_path / "ca", "orders")
    path = "/api/v1/control/config"
    # no proof (an admin token is not what these paths take)
    r = await client.get(path)
    assert r.status_code == 401 and r.json()["code"] == "caller-refused"
    assert r.headers["www-authenticate"].startswith("PeelProof")
    # another CA's certificate
    CertificateAuthority.init(tmp_path / "other", TD, now=datetime.now(UTC))
    stranger = Sidecar(tmp_path / "other", "orders")
    r = await client.get(path, headers=stranger.headers("GET", path))
    assert r.status_code == 401 and "does not verify" in r.json()["detail"]
    # a stale proof, and a proof for another request
    r = await client.get(path, headers=orders.headers("GET", path, skew=-600))
    assert r.status_code == 401 and "timestamp" in r.json()["detail"]
    r = await client.get(path + "?wait=1", headers=orders.headers("GET", path))
    assert r.status_code == 401 and "signature" in r.json()["detail"]
    # a body other than the one signed
    endpoints = "/api/v1/control/endpoints"
    signed = orders.headers("POST", endpoints, b'{"endpoint": "https://10.0.2.15:15443"}')
    r = await client.post(endpoints, content=b'{"endpoint": "https://10.6.6.6:15443"}', headers=signed)
    assert r.status_code == 401
    # a plain-http endpoint is refused with its field; nothing was registered
    r = await register(client, orders, b'{"endpoint": "http://10.0.2.15:15443"}')
    assert r.status_code == 422 and r.json()["field"] == "endpoint"
    assert store.registrations() == []
    # a revoked identity (revocations travel with the config version) is refused, as at renewal
    r = await client.get(path, headers=orders.headers("GET", path))
    assert r.status_code == 200
    revoked = datetime.now(UTC) + timedelta(seconds=1)
    store.commit(Document.parse({**SAMPLE, "revocations": [{"identity": ORDERS, "at": revoked.isoformat()}]}),
                 actor="t", reason="revoke orders")
    deadline = asyncio.get_running_loop().time() + 10  # the feed looks again within 0.25 s
    while (r := await client.get(path, headers=orders.headers("GET", path))).status_code == 200:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    assert r.status_code == 403 and r.json()["code"] == "certificate-revoked"
    r = await register(client, orders, b'{"endpoint": "https://10.0.2.15:15443"}')
    assert r.status_code == 403 and store.registrations() == []


async def test_the_services_list_shows_registered_endpoints_and_their_source(
        client: httpx.AsyncClient, store: Store, tmp_path: Path) -> None:
    store.commit(Document.parse(SAMPLE), actor="t", reason="seed")
    token = store.create_token("ops")
    store.register_endpoint("orders", "https://10.0.2.15:15443", ORDERS)
    store.register_endpoint("payments", "https://10.0.3.9:15443", "spiffe://peel.internal/svc/payments",
                            ttl=timedelta(seconds=5), now=datetime.now(UTC) - timedelta(seconds=10))
    r = await client.get("/api/v1/services", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    body = r.json()
    # the document's services as the document has them (export round trip unchanged)
    assert body["services"] == [s.to_dict() for s in Document.parse(SAMPLE).services]
    rows = {(e["service"], e["endpoint"]): (e["live"], e["identity"]) for e in body["registered"]}
    assert rows == {("orders", "https://10.0.2.15:15443"): (True, ORDERS),
                    ("payments", "https://10.0.3.9:15443"): (False, "spiffe://peel.internal/svc/payments")}
