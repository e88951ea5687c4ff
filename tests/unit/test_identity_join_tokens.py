"""Join tokens' format and hashing, and the renewal proof of possession (pure)."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.identity import certs, proof, tokens
from gateway.identity.errors import ProofRefused
from gateway.identity.renewal import backoff, renewal_delay
from gateway.identity.spiffe import service_id

ORDERS = service_id("peel.internal", "orders")


def test_a_token_names_its_identity_and_is_stored_as_its_sha256() -> None:
    token = tokens.make_token(ORDERS)
    assert token.startswith("peel_join.") and token.count(".") == 2
    assert tokens.token_identity(token) == ORDERS
    assert tokens.hash_token(token) == hashlib.sha256(token.encode()).hexdigest()
    assert tokens.make_token(ORDERS) != token  # random secret
    # every character is legal in a bearer token (RFC 6750 b64token)
    assert all(c.isalnum() or c in "-._~+/" for c in token)


@pytest.mark.parametrize("bad", ["", "peel_abc", "peel_join.x", "peel_join..secret", "nope.a.b",
                                 "peel_join." + base64.urlsafe_b64encode(b"spiffe://td/x").decode() + ".s",
                                 "peel_join.!!!.secret", "peel_join.a.b.c"])
def test_things_that_are_not_tokens_are_refused(bad: str) -> None:
    with pytest.raises(tokens.BadJoinToken):
        tokens.token_identity(bad)


def test_an_edited_identity_changes_the_hash() -> None:
    token = tokens.make_token(ORDERS)
    forged_part = base64.urlsafe_b64encode(b"spiffe://peel.internal/svc/billing").decode().rstrip("=")
    forged = ".".join([token.split(".")[0], forged_part, token.split(".")[2]])
    assert tokens.token_identity(forged).service == "billing"
    assert tokens.hash_token(forged) != tokens.hash_token(token)


NOW = 1_800_000_000


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP256R1()),
                                 rsa.generate_private_key(65537, 2048),
                                 ed25519.Ed25519PrivateKey.generate()])
def test_the_proof_verifies_with_the_signing_key_only(key: certs.PrivateKey) -> None:
    csr = b"-----BEGIN CERTIFICATE REQUEST-----\nxyz\n-----END CERTIFICATE REQUEST-----\n"
    signature = proof.sign(key, csr, NOW)
    proof.verify(key.public_key(), signature, csr, NOW, now=NOW + 10)
    with pytest.raises(ProofRefused, match="does not verify"):
        proof.verify(key.public_key(), signature, csr + b"x", NOW, now=NOW)  # another CSR
    with pytest.raises(ProofRefused, match="does not verify"):
        proof.verify(key.public_key(), signature, csr, NOW + 1, now=NOW)  # another timestamp
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ProofRefused, match="does not verify"):
        proof.verify(other.public_key(), signature, csr, NOW, now=NOW)
    with pytest.raises(ProofRefused, match="base64"):
        proof.verify(key.public_key(), "not base64!", csr, NOW, now=NOW)


@pytest.mark.parametrize("skew", [301, -301, 3600])
def test_a_timestamp_more_than_five_minutes_off_is_refused(skew: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signature = proof.sign(key, b"csr", NOW)
    with pytest.raises(ProofRefused, match="timestamp"):
        proof.verify(key.public_key(), signature, b"csr", NOW, now=NOW + skew)
    proof.verify(key.public_key(), signature, b"csr", NOW, now=NOW + (300 if skew > 0 else -300))


def test_renewal_is_due_at_half_the_life_counted_from_issue_with_ten_percent_jitter() -> None:
    issued = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
    not_before, not_after = issued - certs.BACKDATE, issued + timedelta(hours=24)
    assert renewal_delay(not_before, not_after, issued, lambda: 0.5) == pytest.approx(12 * 3600)
    assert renewal_delay(not_before, not_after, issued, lambda: 0.0) == pytest.approx(0.45 * 24 * 3600)
    assert renewal_delay(not_before, not_after, issued, lambda: 1.0) == pytest.approx(0.55 * 24 * 3600)
    # a 1-minute certificate: about 30 s after issue, not 3 minutes (notBefore is backdated 5 min)
    short_after = issued + timedelta(minutes=1)
    assert renewal_delay(not_before, short_after, issued, lambda: 0.5) == pytest.approx(30)
    # past due: now
    assert renewal_delay(not_before, not_after, issued + timedelta(hours=13), lambda: 0.5) == 0.0


def test_backoff_doubles_with_full_jitter_up_to_a_cap() -> None:
    assert [backoff(n, lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(30, lambda: 1.0) == 60.0
    assert backoff(3, lambda: 0.25) == 1.0
