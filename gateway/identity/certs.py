"""Certificate building for Peel's CA, pure: keys, CA certificates, CSRs and workload leaves.

No file or network I/O here (the CA's files are `gateway.identity.ca`); the clock is injected (`now`).
What is built, and why (RFC 5280; the SPIFFE X.509-SVID spec, `standards/X509-SVID.md`):

- root: self-signed, `CA:true, pathlen:1` (one intermediate under it, no more), key usage
  `keyCertSign, cRLSign`, both critical; SKI and AKI.
- intermediate: `CA:true, pathlen:0` (it signs leaves only), the same key usage; SKI, AKI = the
  root's SKI. It is the key that is online and signs leaves, so the root key can be kept offline.
- both CAs carry a critical name constraint: permitted URI subtree = the trust domain. OpenSSL
  (and BoringSSL, Go) read a URI constraint as the URI's host, so a leaf of this CA can only be
  `spiffe://<trust-domain>/...`; a stolen intermediate cannot mint an ID in another trust domain
  that a peer trusting the same bundle for several domains would accept. A verifier that does not
  implement URI constraints refuses the chain (the constraint is critical): `name_constraints=False`.
- leaf (an X509-SVID): exactly one URI SAN, the SPIFFE ID; no CN requirement (subject `O=Peel`);
  `CA:false` and key usage `digitalSignature` only, critical; EKU `serverAuth, clientAuth` (the same
  certificate serves the inbound listener and dials peers); SKI, AKI. Lifetime 24 h by default,
  never past its issuer's; `notBefore` backdated `BACKDATE` for clocks a little behind.
- leaves come from a CSR: the key is made by the workload and never leaves it. The CSR's signature
  must verify, and it must ask for exactly the one SPIFFE ID the caller allows (a join token names
  it); nothing else of the CSR (subject, requested extensions) is copied into the certificate.

Keys are ECDSA P-256 by default; CSRs may also carry P-384, RSA >= 2048 or Ed25519 keys.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.identity.errors import CaError, CsrRefused
from gateway.identity.spiffe import SpiffeId, check_trust_domain, parse

#: Private keys Peel signs with (its own CA keys are P-256 unless given another).
PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

ROOT_LIFETIME = timedelta(days=3650)
INTERMEDIATE_LIFETIME = timedelta(days=365)
LEAF_LIFETIME = timedelta(hours=24)
#: notBefore is set this far in the past: a peer whose clock is a little behind still accepts it.
BACKDATE = timedelta(minutes=5)
_CURVES = (ec.SECP256R1, ec.SECP384R1)
MIN_RSA_BITS = 2048
ORGANIZATION = "Peel"

_CA_USAGE = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                          crl_sign=True, encipher_only=False, decipher_only=False)
_LEAF_USAGE = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                            crl_sign=False, encipher_only=False, decipher_only=False)


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


def _hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return hashes.SHA384()
    return hashes.SHA256()


def _check_public_key(key: object) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _CURVES):
            raise CsrRefused(f"the key's curve {key.curve.name} is not P-256 or P-384")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CsrRefused(f"the RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are needed")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise CsrRefused(f"the key type {type(key).__name__} is not ECDSA, RSA or Ed25519")


def _ski(key: PublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key)


def _ca_name(kind: str, trust_domain: str, key: PublicKey) -> x509.Name:
    # The SKI in the CN keeps two generations' names apart (a bundle holds two roots in a rotation).
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, trust_domain),
                      x509.NameAttribute(NameOID.COMMON_NAME,
                                         f"Peel {kind} CA {_ski(key).digest.hex()[:12]}")])


def _constraints(trust_domain: str) -> x509.NameConstraints:
    return x509.NameConstraints(permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain)],
                                excluded_subtrees=None)


def _ca_builder(subject: x509.Name, issuer: x509.Name, key: PublicKey, *, now: datetime,
                lifetime: timedelta, path_length: int, trust_domain: str,
                name_constraints: bool) -> x509.CertificateBuilder:
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - BACKDATE).not_valid_after(now + lifetime)
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
               .add_extension(_CA_USAGE, critical=True)
               .add_extension(_ski(key), critical=False))
    if name_constraints:
        builder = builder.add_extension(_constraints(trust_domain), critical=True)
    return builder


def build_root(key: PrivateKey, trust_domain: str, *, now: datetime,
               lifetime: timedelta = ROOT_LIFETIME, name_constraints: bool = True) -> x509.Certificate:
    """A self-signed root CA certificate for `trust_domain` (`CA:true, pathlen:1`)."""
    check_trust_domain(trust_domain)
    public = _check_public_key(key.public_key())
    name = _ca_name("root", trust_domain, public)
    builder = _ca_builder(name, name, public, now=now, lifetime=lifetime, path_length=1,
                          trust_domain=trust_domain, name_constraints=name_constraints)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(public)), critical=False)
    return builder.sign(key, _hash(key))


def build_intermediate(public: PublicKey, trust_domain: str, issuer: x509.Certificate,
                       issuer_key: PrivateKey, *, now: datetime,
                       lifetime: timedelta = INTERMEDIATE_LIFETIME,
                       name_constraints: bool = True) -> x509.Certificate:
    """An intermediate CA (`CA:true, pathlen:0`) for `public`, signed by the root `issuer`.

    Its life ends no later than the root's."""
    check_trust_domain(trust_domain)
    _check_public_key(public)
    not_after = min(now + lifetime, issuer.not_valid_after_utc)
    builder = _ca_builder(_ca_name("intermediate", trust_domain, public), issuer.subject, public,
                          now=now, lifetime=not_after - now, path_length=0, trust_domain=trust_domain,
                          name_constraints=name_constraints)
    builder = builder.add_extension(_aki(issuer), critical=False)
    return builder.sign(issuer_key, _hash(issuer_key))


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def build_csr(key: PrivateKey, identity: SpiffeId) -> x509.CertificateSigningRequest:
    """The CSR a workload sends for `identity`: its SPIFFE ID as the one URI SAN, signed by `key`."""
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
                           critical=False)
            .sign(key, _hash(key)))


def check_csr(csr: x509.CertificateSigningRequest, allowed: SpiffeId) -> PublicKey:
    """The CSR's public key when its signature verifies and it asks for exactly `allowed`.

    Refused (`CsrRefused`, with the reason): a bad signature, a weak or unknown key type, no SAN,
    a second name of any kind, or a SPIFFE ID other than `allowed`."""
    if not csr.is_signature_valid:
        raise CsrRefused("the CSR's signature does not verify")
    public = _check_public_key(csr.public_key())
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CsrRefused(f"the CSR asks for no SPIFFE ID; it must ask for {allowed}") from None
    except ValueError as exc:
        # cryptography parses the extensions when first read: from 51 on, an empty SAN is an error
        raise CsrRefused(f"the CSR's extensions do not parse ({exc}); it must ask for {allowed}") from None
    names = list(san)
    if len(names) != 1 or not isinstance(names[0], x509.UniformResourceIdentifier):
        raise CsrRefused(f"the CSR must ask for exactly one name, the URI {allowed}; it asks for "
                         f"{', '.join(_describe(n) for n in names) or 'none'}")
    asked = names[0].value
    if asked != str(allowed):
        raise CsrRefused(f"the CSR asks for {asked!r}; only {allowed} is allowed")
    return public


def _describe(name: x509.GeneralName) -> str:
    return f"{type(name).__name__} {getattr(name, 'value', name)!s}"


def build_leaf(csr: x509.CertificateSigningRequest, identity: SpiffeId, issuer: x509.Certificate,
               issuer_key: PrivateKey, *, now: datetime,
               lifetime: timedelta = LEAF_LIFETIME) -> x509.Certificate:
    """The workload certificate (X509-SVID) for `identity`, from a CSR checked by `check_csr`."""
    public = check_csr(csr, identity)
    if lifetime <= timedelta(0):
        raise CaError("a certificate's lifetime must be positive")
    issuer_end = issuer.not_valid_after_utc
    if now >= issuer_end:
        raise CaError(f"the issuing CA expired at {issuer_end:%Y-%m-%d %H:%M:%S} UTC")
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]))
            .issuer_name(issuer.subject).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(min(now + lifetime, issuer_end))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_LEAF_USAGE, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
                           critical=False)
            .add_extension(_ski(public), critical=False)
            .add_extension(_aki(issuer), critical=False)
            .sign(issuer_key, _hash(issuer_key)))


def uri_names(cert: x509.Certificate) -> list[str] | None:
    """The URI names of a certificate's subjectAltName; None when it has no SAN at all, none when
    its extensions do not parse (a chain a client presents is read before it is trusted)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of an X509-SVID: its one URI SAN (`BadSpiffeId` / `CsrRefused` otherwise)."""
    uris = uri_names(cert)
    if uris is None:
        raise CsrRefused("the certificate has no subject alternative name")
    if len(uris) != 1:
        raise CsrRefused(f"the certificate has {len(uris)} URI names; an X509-SVID has exactly one")
    return parse(uris[0])


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER, as `openssl x509 -fingerprint -sha256` prints it (AB:CD:...)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: the file's mode (0600) and directory (0700) protect it."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(data: bytes, where: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CaError(f"{where} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise CaError(f"{where} holds a {type(key).__name__}, not an ECDSA, RSA or Ed25519 key")
    return key


def load_csr(data: bytes, where: str = "the CSR") -> x509.CertificateSigningRequest:
    """A CSR from PEM (or DER)."""
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise CsrRefused(f"{where} is not a PEM or DER certificate signing request: {exc}") from None
