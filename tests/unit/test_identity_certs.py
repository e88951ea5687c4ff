"""Certificate building (issue 12, item 3): root, intermediate and workload leaves, every
extension read back with cryptography's x509 API; CSR checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.identity import certs
from gateway.identity.errors import CaError, CsrRefused
from gateway.identity.spiffe import service_id
from tests.fakes.tls import EMPTY_SAN

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TD = "peel.internal"
ORDERS = service_id(TD, "orders")
Chain = tuple[certs.PrivateKey, x509.Certificate, certs.PrivateKey, x509.Certificate]


@pytest.fixture(scope="module")
def chain() -> Chain:
    root_key, inter_key = certs.new_key(), certs.new_key()
    root = certs.build_root(root_key, TD, now=NOW)
    inter = certs.build_intermediate(inter_key.public_key(), TD, root, root_key, now=NOW)
    return root_key, root, inter_key, inter


E = TypeVar("E", bound=x509.ExtensionType)


def ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def ski(cert: x509.Certificate) -> bytes:
    value = ext(cert, x509.SubjectKeyIdentifier).value
    assert isinstance(value, x509.SubjectKeyIdentifier)
    return value.digest


def aki(cert: x509.Certificate) -> bytes | None:
    value = ext(cert, x509.AuthorityKeyIdentifier).value
    assert isinstance(value, x509.AuthorityKeyIdentifier)
    return value.key_identifier


def check_ca_usage(cert: x509.Certificate) -> None:
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    assert isinstance(usage.value, x509.KeyUsage)
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature and not usage.value.key_encipherment


def check_constraints(cert: x509.Certificate) -> None:
    nc = ext(cert, x509.NameConstraints)
    assert nc.critical
    assert isinstance(nc.value, x509.NameConstraints)
    assert nc.value.permitted_subtrees == [x509.UniformResourceIdentifier(TD)]
    assert nc.value.excluded_subtrees is None


def test_the_root_is_a_self_signed_ca_for_one_more_level(chain: Chain) -> None:
    root_key, root, _, _ = chain
    assert root.subject == root.issuer
    root.verify_directly_issued_by(root)
    bc = ext(root, x509.BasicConstraints)
    assert bc.critical and bc.value == x509.BasicConstraints(ca=True, path_length=1)
    check_ca_usage(root)
    check_constraints(root)
    assert ski(root) == x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()).digest
    assert aki(root) == ski(root)
    assert root.not_valid_before_utc == NOW - certs.BACKDATE
    assert root.not_valid_after_utc == NOW + certs.ROOT_LIFETIME
    public = root.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1)
    assert isinstance(root.signature_hash_algorithm, hashes.SHA256)
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == TD


def test_the_intermediate_signs_leaves_only(chain: Chain) -> None:
    _, root, inter_key, inter = chain
    inter.verify_directly_issued_by(root)
    bc = ext(inter, x509.BasicConstraints)
    assert bc.critical and bc.value == x509.BasicConstraints(ca=True, path_length=0)
    check_ca_usage(inter)
    check_constraints(inter)
    assert ski(inter) == x509.SubjectKeyIdentifier.from_public_key(inter_key.public_key()).digest
    assert aki(inter) == ski(root)
    assert inter.issuer == root.subject and inter.subject != root.subject
    assert inter.not_valid_after_utc == NOW + certs.INTERMEDIATE_LIFETIME


def test_an_intermediate_never_outlives_its_root() -> None:
    root_key = certs.new_key()
    root = certs.build_root(root_key, TD, now=NOW, lifetime=timedelta(days=10))
    inter = certs.build_intermediate(certs.new_key().public_key(), TD, root, root_key, now=NOW,
                                     lifetime=timedelta(days=365))
    assert inter.not_valid_after_utc == root.not_valid_after_utc


def test_name_constraints_can_be_left_out() -> None:
    root = certs.build_root(certs.new_key(), TD, now=NOW, name_constraints=False)
    with pytest.raises(x509.ExtensionNotFound):
        root.extensions.get_extension_for_class(x509.NameConstraints)


def test_two_roots_of_one_trust_domain_have_different_names() -> None:
    # A bundle holds two roots during a rotation; chain building must not confuse them.
    a = certs.build_root(certs.new_key(), TD, now=NOW)
    b = certs.build_root(certs.new_key(), TD, now=NOW)
    assert a.subject != b.subject


def test_a_leaf_is_an_x509_svid(chain: Chain) -> None:
    _, _, inter_key, inter = chain
    workload = certs.new_key()
    leaf = certs.build_leaf(certs.build_csr(workload, ORDERS), ORDERS, inter, inter_key, now=NOW)
    leaf.verify_directly_issued_by(inter)
    assert leaf.public_key() == workload.public_key()  # the workload's key, not one made here
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert list(san) == [x509.UniformResourceIdentifier("spiffe://peel.internal/svc/orders")]
    assert certs.spiffe_id_of(leaf) == ORDERS
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    bc = ext(leaf, x509.BasicConstraints)
    assert bc.critical and bc.value == x509.BasicConstraints(ca=False, path_length=None)
    usage = ext(leaf, x509.KeyUsage)
    assert usage.critical and isinstance(usage.value, x509.KeyUsage)
    assert usage.value.digital_signature
    assert not (usage.value.key_cert_sign or usage.value.crl_sign or usage.value.key_encipherment)
    eku = ext(leaf, x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ski(leaf) == x509.SubjectKeyIdentifier.from_public_key(workload.public_key()).digest
    assert aki(leaf) == ski(inter)
    assert leaf.not_valid_before_utc == NOW - certs.BACKDATE
    assert leaf.not_valid_after_utc == NOW + timedelta(hours=24)
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.NameConstraints)


def test_a_leaf_lifetime_is_capped_by_its_issuer(chain: Chain) -> None:
    _, _, inter_key, inter = chain
    csr = certs.build_csr(certs.new_key(), ORDERS)
    late = inter.not_valid_after_utc - timedelta(hours=1)
    leaf = certs.build_leaf(csr, ORDERS, inter, inter_key, now=late)
    assert leaf.not_valid_after_utc == inter.not_valid_after_utc
    short = certs.build_leaf(csr, ORDERS, inter, inter_key, now=NOW, lifetime=timedelta(minutes=1))
    assert short.not_valid_after_utc == NOW + timedelta(minutes=1)
    with pytest.raises(CaError, match="expired"):
        certs.build_leaf(csr, ORDERS, inter, inter_key, now=inter.not_valid_after_utc)
    with pytest.raises(CaError, match="positive"):
        certs.build_leaf(csr, ORDERS, inter, inter_key, now=NOW, lifetime=timedelta(0))


def _csr(key: certs.PrivateKey, names: list[x509.GeneralName] | None) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orders")]))
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names) if names else EMPTY_SAN,
                                        critical=False)
    return builder.sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())


URI = x509.UniformResourceIdentifier


@pytest.mark.parametrize(("names", "reason"), [
    (None, "asks for no SPIFFE ID"),
    ([], "asks for none|extensions do not parse"),  # cryptography < 51 reads an empty list; 51 refuses
    ([URI("spiffe://peel.internal/svc/billing")], "only spiffe://peel.internal/svc/orders"),
    ([URI("spiffe://other.internal/svc/orders")], "only spiffe://peel.internal/svc/orders"),
    ([URI("spiffe://peel.internal/svc/orders/x")], "only spiffe://peel.internal/svc/orders"),
    ([URI("spiffe://peel.internal/svc/orders"), URI("spiffe://peel.internal/svc/billing")], "exactly one"),
    ([URI("spiffe://peel.internal/svc/orders"), x509.DNSName("orders.internal")], "DNSName"),
    ([x509.DNSName("orders.internal")], "exactly one"),
])
def test_a_csr_must_ask_for_exactly_the_allowed_id(names: list[x509.GeneralName] | None, reason: str) -> None:
    with pytest.raises(CsrRefused, match=reason):
        certs.check_csr(_csr(certs.new_key(), names), ORDERS)


def test_a_certificate_whose_names_do_not_parse_has_no_uri_name(chain: Chain) -> None:
    # a chain a client presents for renewal is read before it is trusted: never an exception
    _, _, inter_key, inter = chain
    key = certs.new_key()
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
            .issuer_name(inter.subject).public_key(key.public_key()).serial_number(7)
            .not_valid_before(NOW).not_valid_after(NOW + timedelta(hours=1))
            .add_extension(EMPTY_SAN, critical=False).sign(inter_key, hashes.SHA256()))
    assert certs.uri_names(cert) == []
    with pytest.raises(CsrRefused, match="0 URI names"):
        certs.spiffe_id_of(cert)


def test_a_csr_with_a_bad_signature_is_refused(chain: Chain) -> None:
    _, _, inter_key, inter = chain
    good = certs.build_csr(certs.new_key(), ORDERS)
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(CsrRefused, match="signature"):
        certs.build_leaf(tampered, ORDERS, inter, inter_key, now=NOW)


@pytest.mark.parametrize(("key", "ok"), [
    (ec.generate_private_key(ec.SECP384R1()), True),
    (ed25519.Ed25519PrivateKey.generate(), True),
    (rsa.generate_private_key(public_exponent=65537, key_size=2048), True),
    (rsa.generate_private_key(public_exponent=65537, key_size=1024), False),
    (ec.generate_private_key(ec.SECP256K1()), False),
])
def test_csr_key_types(key: certs.PrivateKey, ok: bool, chain: Chain) -> None:
    _, _, inter_key, inter = chain
    csr = _csr(key, [URI(str(ORDERS))])
    if ok:
        assert certs.build_leaf(csr, ORDERS, inter, inter_key, now=NOW).public_key() == key.public_key()
    else:
        with pytest.raises(CsrRefused, match=r"RSA key has 1024 bits|curve secp256k1"):
            certs.check_csr(csr, ORDERS)


def test_fingerprint_is_sha256_of_the_der(chain: Chain) -> None:
    root = chain[1]
    assert certs.fingerprint(root).replace(":", "").lower() == root.fingerprint(hashes.SHA256()).hex()
    assert len(certs.fingerprint(root).split(":")) == 32
