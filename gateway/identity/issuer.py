"""The control plane's side of join and renewal: check what is asked, then sign with the CA.

    Issuer(ca_dir, lifetime).join(csr_pem, service, now=...)      -> Issued
    Issuer(ca_dir, lifetime).renew(RenewalRequest, now=...)       -> Issued

The CA directory is opened per call (a few small files), so a `peel ca rotate` on the control plane
takes effect without a restart. No key of the CA ever leaves this module's process: answers carry
the leaf, the intermediate and the trust bundle, all public.

A join's credential (the token) is checked by the caller, which passes the service it names; a
renewal's credential is its current chain and proof of possession (`gateway.identity.proof`):
the chain's leaf must be issued by one of the CA's intermediates (the current generation or the
previous one during a root rotation; both under a root of the bundle), valid now, an X509-SVID of
this trust domain, and the new CSR must ask for that same SPIFFE ID.

Root rotation (`Issuer.signer`): for one leaf lifetime after `peel ca rotate` the *previous*
generation keeps signing, while every answer already carries the two-root bundle. A gateway
renewing then gets a certificate its peers still trust (they may not have the new root yet) and
the new bundle; once a lifetime has passed every gateway that renews on time (at half life) holds
the new root, and the new generation signs. Signing with the new generation at once would give the
first gateway to renew a certificate the others refuse until they renew too (measured in
tests/sockets/test_rotation.py: mTLS handshakes refused). So `--overlap` should be at least two
leaf lifetimes: one for the bundle to spread, one for the last leaves of the old root to expire.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from gateway.identity import certs, proof
from gateway.identity.ca import CertificateAuthority, Generation
from gateway.identity.errors import CsrRefused, IdentityError, NotAllowed, ProofRefused
from gateway.identity.files import read_private
from gateway.identity.spiffe import SpiffeId, parse, service_id


@dataclass(frozen=True, slots=True)
class Issued:
    """A signed leaf and what the workload keeps with it."""

    leaf: x509.Certificate
    chain_pem: bytes  # leaf, then the intermediate that signed it
    bundle_pem: bytes  # the trust bundle: one root, or two during a rotation
    identity: SpiffeId

    def to_json(self) -> dict[str, str]:
        return {"certificate": self.chain_pem.decode(), "bundle": self.bundle_pem.decode(),
                "spiffe_id": str(self.identity), "serial": format(self.leaf.serial_number, "x"),
                "not_after": self.leaf.not_valid_after_utc.isoformat()}


@dataclass(frozen=True, slots=True)
class RenewalRequest:
    """What a gateway sends to renew: its current chain, a new CSR, a timestamp, the proof."""

    chain_pem: bytes
    csr_pem: bytes
    timestamp: int
    signature: str


def requested_id(csr: x509.CertificateSigningRequest) -> str | None:
    """The one URI a CSR asks for, or None when it asks for no name or for several."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    names = list(san)
    if len(names) == 1 and isinstance(names[0], x509.UniformResourceIdentifier):
        return str(names[0].value)
    return None


def _check_asks_for(csr: x509.CertificateSigningRequest, allowed: SpiffeId) -> None:
    """`NotAllowed` when the CSR asks for one other identity; the rest is `certs.check_csr`'s."""
    asked = requested_id(csr)
    if asked is not None and asked != str(allowed):
        raise NotAllowed(f"the CSR asks for {asked!r}; this credential allows only {allowed}")
    certs.check_csr(csr, allowed)


def load_chain(pem: bytes) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ProofRefused(f"the current certificate chain is not PEM: {exc}") from None
    if not chain:
        raise ProofRefused("the current certificate chain is empty")
    return chain


class Issuer:
    """Signs workload certificates for joins and renewals with the CA in `ca_dir`."""

    def __init__(self, ca_dir: Path, lifetime: timedelta = certs.LEAF_LIFETIME) -> None:
        self.ca_dir = ca_dir
        self.lifetime = lifetime

    def signer(self, ca: CertificateAuthority, now: datetime) -> Generation:
        """The generation whose intermediate signs at `now`: the previous one for one leaf lifetime
        after a rotation started (module docstring), else the current one."""
        previous = ca.previous
        if previous is None:
            return ca.current
        # the new generation's CA certificates are backdated like leaves: its start is the rotation's
        started = ca.current.intermediate.not_valid_before_utc + certs.BACKDATE
        if (now < started + self.lifetime and previous.intermediate_key_path.is_file()
                and now < previous.intermediate.not_valid_after_utc):
            return previous
        return ca.current

    def _issue(self, ca: CertificateAuthority, csr: x509.CertificateSigningRequest, service: str,
               now: datetime) -> Issued:
        generation = self.signer(ca, now)
        identity = service_id(ca.trust_domain, service)
        path = generation.intermediate_key_path
        key = certs.load_key(read_private(path), str(path))
        leaf = certs.build_leaf(csr, identity, generation.intermediate, key, now=now, lifetime=self.lifetime)
        return Issued(leaf, certs.cert_pem(leaf, generation.intermediate), ca.bundle_pem(), identity)

    def check_join(self, csr_pem: bytes, service: str) -> tuple[CertificateAuthority,
                                                                 x509.CertificateSigningRequest]:
        """The CA and the parsed CSR when the CSR asks for exactly the service's identity."""
        ca = CertificateAuthority.open(self.ca_dir)
        csr = certs.load_csr(csr_pem)
        _check_asks_for(csr, service_id(ca.trust_domain, service))
        return ca, csr

    def join(self, csr_pem: bytes, service: str, *, now: datetime) -> Issued:
        """A leaf for `service` (named by a join token the caller checked) from `csr_pem`."""
        ca, csr = self.check_join(csr_pem, service)
        return self._issue(ca, csr, service, now)

    def renew(self, request: RenewalRequest, *, now: datetime) -> Issued:
        """A leaf for the same identity as the current, verified chain; see the module docstring."""
        ca = CertificateAuthority.open(self.ca_dir)
        leaf = load_chain(request.chain_pem)[0]
        self._check_current(ca, leaf, now)
        try:
            identity = parse(_leaf_uri(leaf))
        except IdentityError as exc:
            raise ProofRefused(f"the current certificate is not a workload certificate: {exc}") from None
        service = identity.service
        if identity.trust_domain != ca.trust_domain or service is None:
            raise ProofRefused(f"the current certificate's identity {identity} is not a service of the "
                               f"trust domain {ca.trust_domain}")
        proof.verify(leaf.public_key(), request.signature, request.csr_pem, request.timestamp,
                     now=now.timestamp())
        csr = certs.load_csr(request.csr_pem)
        _check_asks_for(csr, identity)
        if csr.public_key() == leaf.public_key():
            raise CsrRefused("the new CSR reuses the current key; renewal needs a fresh key")
        return self._issue(ca, csr, service, now)

    @staticmethod
    def _check_current(ca: CertificateAuthority, leaf: x509.Certificate, now: datetime) -> None:
        """The leaf was signed by one of the CA's intermediates and is valid at `now`."""
        issuers = [gen.intermediate for gen in (ca.current, ca.previous) if gen is not None]
        for intermediate in issuers:
            if leaf.issuer != intermediate.subject:
                continue
            try:
                leaf.verify_directly_issued_by(intermediate)
            except (InvalidSignature, ValueError, TypeError):
                continue
            if not intermediate.not_valid_before_utc <= now < intermediate.not_valid_after_utc:
                raise ProofRefused("the current certificate's intermediate is not valid now")
            break
        else:
            raise ProofRefused("the current certificate does not verify against the CA's trust bundle "
                               "(another CA, or a root no longer trusted): join again with a new token")
        if now >= leaf.not_valid_after_utc:
            expired = f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S}"
            raise ProofRefused(f"the current certificate expired at {expired} UTC: join again with a "
                               "new token")
        if now < leaf.not_valid_before_utc:
            raise ProofRefused("the current certificate is not valid yet")


def _leaf_uri(leaf: x509.Certificate) -> str:
    uris = certs.uri_names(leaf)
    if uris is None:
        raise ProofRefused("the current certificate has no SPIFFE ID")
    if len(uris) != 1:
        raise ProofRefused(f"the current certificate has {len(uris)} URI names; an X509-SVID has one")
    return uris[0]
