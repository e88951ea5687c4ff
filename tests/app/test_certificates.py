"""`/api/v1/certificates/join` and `/renew` in-process, with a real CA in a temp dir: answers and
refusals (wrong service, reused, expired and unknown tokens, bad CSR, bad signature, stale
timestamp, another identity, a foreign chain)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.admin.app import build_admin_app
from gateway.core.settings import Settings
from gateway.identity import certs, proof, tokens
from gateway.identity.ca import CertificateAuthority
from gateway.identity.spiffe import service_id
from routes.store import Store

pytestmark = pytest.mark.anyio
TD = "peel.internal"


@pytest.fixture
async def client(store: Store, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    CertificateAuthority.init(tmp_path / "ca", TD, now=datetime.now(UTC))
    base = Settings()
    settings = replace(base, identity=replace(base.identity, ca_dir=str(tmp_path / "ca"),
                                              certificate_lifetime=3600.0))
    app = build_admin_app(store, ready=lambda: True, settings=settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        yield c


def token_for(store: Store, service: str, ttl: timedelta = timedelta(minutes=15)) -> str:
    token = tokens.make_token(service_id(TD, service))
    store.create_join_token(tokens.hash_token(token), service, datetime.now(UTC) + ttl)
    return token


def csr_pem(key: certs.PrivateKey, service: str, td: str = TD) -> str:
    return certs.build_csr(key, service_id(td, service)).public_bytes(serialization.Encoding.PEM).decode()


async def join(client: httpx.AsyncClient, token: str, csr: str) -> httpx.Response:
    return await client.post("/api/v1/certificates/join", json={"csr": csr},
                             headers={"Authorization": f"Bearer {token}"})


async def test_a_join_answers_the_chain_and_bundle_and_uses_the_token(client: httpx.AsyncClient,
                                                                      store: Store, tmp_path: Path) -> None:
    key = certs.new_key()
    token = token_for(store, "orders")
    r = await join(client, token, csr_pem(key, "orders"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["spiffe_id"] == "spiffe://peel.internal/svc/orders"
    chain = x509.load_pem_x509_certificates(body["certificate"].encode())
    assert len(chain) == 2 and chain[0].public_key() == key.public_key()
    ca = CertificateAuthority.open(tmp_path / "ca")
    assert chain[1] == ca.current.intermediate
    assert body["bundle"].encode() == ca.bundle_pem()
    assert "PRIVATE KEY" not in r.text
    life = chain[0].not_valid_after_utc - datetime.now(UTC)
    assert timedelta(minutes=58) < life <= timedelta(hours=1)  # certificate_lifetime = 3600
    assert body["not_after"] == chain[0].not_valid_after_utc.isoformat()
    # one use
    again = await join(client, token, csr_pem(certs.new_key(), "orders"))
    assert again.status_code == 401 and again.json()["code"] == "join-token-used"


async def test_join_refusals(client: httpx.AsyncClient, store: Store) -> None:
    key = certs.new_key()
    token = token_for(store, "orders")
    wrong = await join(client, token, csr_pem(key, "billing"))
    assert wrong.status_code == 403 and wrong.json()["code"] == "identity-not-allowed"
    other_domain = await join(client, token, csr_pem(key, "orders", "evil.example"))
    assert other_domain.status_code == 403
    garbage = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    bad = await join(client, token, garbage)
    assert bad.status_code == 400 and bad.json()["code"] == "csr-refused"
    # refused CSRs leave the token usable
    assert (await join(client, token, csr_pem(key, "orders"))).status_code == 200
    expired = token_for(store, "orders", ttl=timedelta(seconds=1))
    store.use_join_token("0" * 64)  # (no such hash: nothing happens)
    with store.engine.begin() as conn:
        from sqlalchemy import update

        from routes.schema import join_tokens
        conn.execute(update(join_tokens).where(join_tokens.c.token_hash == tokens.hash_token(expired))
                     .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    r = await join(client, expired, csr_pem(key, "orders"))
    assert r.status_code == 401 and r.json()["code"] == "join-token-expired"
    unknown = tokens.make_token(service_id(TD, "orders"))
    r = await join(client, unknown, csr_pem(key, "orders"))
    assert r.status_code == 401 and r.json()["code"] == "invalid-join-token"
    r = await client.post("/api/v1/certificates/join", json={"csr": csr_pem(key, "orders")})
    assert r.status_code == 401 and r.json()["code"] == "missing-join-token"
    assert r.headers["www-authenticate"].startswith("Bearer")
    # an admin token is no join token
    admin = store.create_token("alice")
    r = await join(client, admin, csr_pem(key, "orders"))
    assert r.status_code == 401 and r.json()["code"] == "invalid-join-token"


async def joined(client: httpx.AsyncClient, store: Store, service: str = "orders",
                 ) -> tuple[certs.PrivateKey, str]:
    key = certs.new_key()
    r = await join(client, token_for(store, service), csr_pem(key, service))
    assert r.status_code == 200, r.text
    return key, r.json()["certificate"]


def renewal(key: certs.PrivateKey, chain: str, new_key: certs.PrivateKey, *, service: str = "orders",
            timestamp: int | None = None, sign_with: certs.PrivateKey | None = None) -> dict[str, Any]:
    csr = csr_pem(new_key, service)
    ts = int(datetime.now(UTC).timestamp()) if timestamp is None else timestamp
    return {"chain": chain, "csr": csr, "timestamp": ts,
            "signature": proof.sign(sign_with or key, csr.encode(), ts)}


async def test_a_renewal_answers_a_new_certificate_for_the_same_identity(client: httpx.AsyncClient,
                                                                         store: Store) -> None:
    key, chain = await joined(client, store)
    fresh = certs.new_key()
    r = await client.post("/api/v1/certificates/renew", json=renewal(key, chain, fresh))
    assert r.status_code == 200, r.text
    leaf = x509.load_pem_x509_certificates(r.json()["certificate"].encode())[0]
    assert leaf.public_key() == fresh.public_key()
    assert r.json()["spiffe_id"] == "spiffe://peel.internal/svc/orders"
    old = x509.load_pem_x509_certificates(chain.encode())[0]
    assert leaf.serial_number != old.serial_number
    # and the renewed certificate renews in turn
    r2 = await client.post("/api/v1/certificates/renew",
                           json=renewal(fresh, r.json()["certificate"], certs.new_key()))
    assert r2.status_code == 200, r2.text


async def test_renewal_refusals(client: httpx.AsyncClient, store: Store, tmp_path: Path) -> None:
    key, chain = await joined(client, store)

    async def renew(body: dict[str, Any]) -> httpx.Response:
        return await client.post("/api/v1/certificates/renew", json=body)

    bad_sig = await renew(renewal(key, chain, certs.new_key(), sign_with=certs.new_key()))
    assert bad_sig.status_code == 401 and bad_sig.json()["code"] == "renewal-refused"
    assert "signature" in bad_sig.json()["detail"]
    stale = await renew(renewal(key, chain, certs.new_key(),
                                timestamp=int(datetime.now(UTC).timestamp()) - 600))
    assert stale.status_code == 401 and "timestamp" in stale.json()["detail"]
    wrong_id = await renew(renewal(key, chain, certs.new_key(), service="billing"))
    assert wrong_id.status_code == 403 and wrong_id.json()["code"] == "identity-not-allowed"
    same_key = await renew(renewal(key, chain, key))
    assert same_key.status_code == 400 and "fresh key" in same_key.json()["detail"]
    # a chain from another CA with the same identity
    other = CertificateAuthority.init(tmp_path / "other", TD, now=datetime.now(UTC))[0]
    foreign_key = certs.new_key()
    foreign = other.issue(certs.build_csr(foreign_key, service_id(TD, "orders")), "orders",
                          now=datetime.now(UTC))
    r = await renew(renewal(foreign_key, certs.cert_pem(foreign).decode(), certs.new_key()))
    assert r.status_code == 401 and "trust bundle" in r.json()["detail"]
    # an expired certificate of the right CA
    ca = CertificateAuthority.open(tmp_path / "ca")
    old_key = certs.new_key()
    expired = ca.issue(certs.build_csr(old_key, service_id(TD, "orders")), "orders",
                       now=datetime.now(UTC) - timedelta(hours=2), lifetime=timedelta(hours=1))
    r = await renew(renewal(old_key, certs.cert_pem(expired).decode(), certs.new_key()))
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    missing = await renew({"chain": chain})
    assert missing.status_code == 422
