"""Proof of possession for renewals, pure: what the current key signs and how the CA checks it.

A gateway renews by sending its current chain, a new CSR (for a fresh key), a timestamp and a
signature by its *current* key over

    b"peel-renew/1\\n" + <timestamp, decimal unix seconds> + b"\\n" + <the CSR, PEM>

so the request proves the sender holds the key of a certificate the CA issued, for this CSR, now.
A request is refused when the timestamp is more than `MAX_SKEW` (5 minutes) away from the CA's
clock. A replayed request within that window gains nothing: it can only get a certificate for the
CSR's key, which only the original sender holds.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from gateway.identity.certs import PrivateKey
from gateway.identity.errors import ProofRefused

CONTEXT = b"peel-renew/1\n"
MAX_SKEW = 300  # seconds


def message(csr_pem: bytes, timestamp: int, context: bytes = CONTEXT) -> bytes:
    return context + str(timestamp).encode() + b"\n" + csr_pem


def sign(key: PrivateKey, csr_pem: bytes, timestamp: int, *, context: bytes = CONTEXT) -> str:
    """The proof, base64: `key` (the current certificate's) signs the CSR and the timestamp.

    `context` separates uses: a renewal's proof (`CONTEXT`) never verifies as another's, such as a
    request to the control plane (`gateway.identity.caller`), which signs a request in place of a CSR."""
    data = message(csr_pem, timestamp, context)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.sign(data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        raw = key.sign(data)
    return base64.b64encode(raw).decode()


def verify(public: CertificatePublicKeyTypes, proof: str, csr_pem: bytes, timestamp: int, *,
           now: float, context: bytes = CONTEXT) -> None:
    """Refuse (`ProofRefused`, with the reason) a stale or future timestamp or a bad signature."""
    if abs(now - timestamp) > MAX_SKEW:
        raise ProofRefused(f"the request's timestamp is {int(now - timestamp)} s from the CA's clock; "
                           f"at most {MAX_SKEW} s are accepted (check both clocks)")
    try:
        raw = base64.b64decode(proof, validate=True)
    except (binascii.Error, ValueError):
        raise ProofRefused("the signature is not base64") from None
    data = message(csr_pem, timestamp, context)
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(raw, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(raw, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(raw, data)
        else:  # never accept a key type this function does not check
            raise ProofRefused(f"cannot check a signature of a {type(public).__name__}")
    except InvalidSignature:
        raise ProofRefused("the signature does not verify with the current certificate's key") from None
