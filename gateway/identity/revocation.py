"""Is a peer's certificate revoked? The one check of the inbound listener, the mTLS dialer and renewal.

    found = revoked_peer(table.revocations, ssl_object)   # a Revocation, or None
    found = revoked_leaf(revocations, leaf)               # the same for a parsed x509 certificate

The revocations travel with the config version (`routes.revocations`, docs/mtls.md "Revocation").
A certificate is refused when its serial is listed, or when its SPIFFE ID is listed with a time at
or after its issue. Its issue time is `notBefore` plus the CA's backdating (`certs.BACKDATE`):
Peel's CA sets `notBefore` 5 minutes before it signs.

`revoked_peer` reads the parsed form of `getpeercert()`, which OpenSSL fills only for a certificate
it verified, so a peer without a (verified) certificate is never "revoked" here: it has no identity
to refuse, and the listener's mode decides whether it is served. No DER parsing, no cryptography
import: this runs once per accepted inbound connection and once per mTLS dial.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway.identity.errors import BadSpiffeId
from gateway.identity.spiffe import parse
from routes.revocations import Revocation, Revocations

if TYPE_CHECKING:
    from cryptography import x509

# gateway.identity.certs.BACKDATE, not imported: that module loads cryptography
BACKDATE = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class CertFacts:
    """What a revocation is checked against: serial (hex), SPIFFE ID (None: none), issue time."""

    serial: str | None
    identity: str | None
    issued: datetime | None

    def refused_by(self, revocations: Revocations) -> Revocation | None:
        if not revocations:
            return None
        return revocations.refuses(self.serial, self.identity, self.issued)


def peer_facts(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> CertFacts | None:
    """The facts of the verified certificate the peer presented, None without one."""
    if ssl_object is None:
        return None
    cert: Any = ssl_object.getpeercert()
    if not cert:
        return None
    uris = [pair[1] for pair in cert.get("subjectAltName", ()) if pair[0] == "URI"]
    identity: str | None = None
    if len(uris) == 1:
        try:
            identity = str(parse(str(uris[0])))
        except BadSpiffeId:
            identity = None
    issued: datetime | None = None
    not_before = cert.get("notBefore")
    if isinstance(not_before, str):
        try:
            issued = datetime.fromtimestamp(ssl.cert_time_to_seconds(not_before), UTC) + BACKDATE
        except ValueError:
            issued = None
    serial = cert.get("serialNumber")
    return CertFacts(str(serial) if serial else None, identity, issued)


def revoked_peer(revocations: Revocations, ssl_object: ssl.SSLObject | ssl.SSLSocket | None,
                 ) -> Revocation | None:
    """The revocation that refuses the peer of `ssl_object`, else None (also without a certificate)."""
    if not revocations:
        return None
    facts = peer_facts(ssl_object)
    return facts.refused_by(revocations) if facts is not None else None


def leaf_facts(leaf: x509.Certificate) -> CertFacts:
    """The facts of a parsed certificate (renewal reads the chain a gateway presents)."""
    from gateway.identity import certs

    uris = certs.uri_names(leaf) or []
    identity: str | None = None
    if len(uris) == 1:
        try:
            identity = str(parse(uris[0]))
        except BadSpiffeId:
            identity = None
    return CertFacts(format(leaf.serial_number, "x"), identity, leaf.not_valid_before_utc + BACKDATE)


def describe(found: Revocation) -> str:
    """One line for logs and refusals: what was revoked, when, and why."""
    why = f" ({found.reason})" if found.reason else ""
    return f"{found.subject} revoked at {found.at:%Y-%m-%d %H:%M:%S} UTC{why}"


__all__ = ["BACKDATE", "CertFacts", "describe", "leaf_facts", "peer_facts", "revoked_peer"]
