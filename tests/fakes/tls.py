"""Certificates for tests, made with `cryptography`: a test CA and leaf certificates signed by it.

    ca = TestCA()
    shop = ca.issue(tmp_path / "shop", ["shop.example", "*.shop.example"])
    shop.cert, shop.key        # PEM files (the key 0600)
    ca.pem_path(tmp_path)      # the CA certificate for a client's trust store (curl --cacert)

Leaves are ECDSA P-256 by default (RSA 2048 with `rsa_key=True`), valid from an hour ago for a day unless
`not_before`/`not_after` say otherwise; `uris` adds URI SANs (SPIFFE IDs) and `client=True` makes a
client certificate, for the mTLS work that follows; `extensions` adds any other (non-critical), such as
`EMPTY_SAN`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

# A subjectAltName extension holding no name: an empty DER SEQUENCE. cryptography 51 refuses to build
# one (`SubjectAlternativeName([])`) and to parse one; a client or an operator's file can still hold it.
EMPTY_SAN = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x00")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class Leaf:
    """An issued certificate written to `cert` and `key` (PEM)."""

    cert: Path
    key: Path
    certificate: x509.Certificate

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    def fingerprint(self) -> str:
        """SHA-256 of the DER certificate, as `openssl x509 -fingerprint -sha256` prints it."""
        return self.certificate.fingerprint(hashes.SHA256()).hex(":").upper()


class TestCA:
    """A self-signed CA that issues leaf certificates into files."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "Peel Test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256()))

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def pem_path(self, directory: Path) -> Path:
        path = directory / "ca.pem"
        path.write_bytes(self.pem)
        return path

    def issue(self, stem: Path, dns: Sequence[str], *, ips: Sequence[str] = (), uris: Sequence[str] = (),
              not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None,
              rsa_key: bool = False, client: bool = False,
              extensions: Sequence[x509.ExtensionType] = ()) -> Leaf:
        """A leaf for `dns` names (and `ips`, `uris`) written to `<stem>.pem` and `<stem>.key`."""
        key: CertificateIssuerPrivateKeyTypes = (
            rsa.generate_private_key(65537, 2048) if rsa_key else ec.generate_private_key(ec.SECP256R1()))
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        names += [x509.UniformResourceIdentifier(uri) for uri in uris]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (dns or ["peel-test"])[0])])
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.certificate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before or _now() - datetime.timedelta(hours=1))
            .not_valid_after(not_after or _now() + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = stem.with_suffix(".pem"), stem.with_suffix(".key")
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(key_pem(key))
        return Leaf(cert_path, key_path, certificate)
