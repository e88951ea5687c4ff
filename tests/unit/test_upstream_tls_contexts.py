"""The contexts of services' `tls` policies in `gateway.upstream.dial.UpstreamTls`: built from the
files once per policy and contents (not per connection), rebuilt when the files change, a clear
`upstream-tls-config` failure when they cannot be loaded, the last good context kept when files
turn bad, and verification always on."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.core.errors import ConnectError, UpstreamTlsConfig, UpstreamTlsError
from gateway.policy.retry import failure_kind
from gateway.upstream.dial import RECHECK, UpstreamTls, server_name
from routes.compiler import compile_document
from routes.model import Document, Endpoint, Service
from routes.policies import ServiceTls
from tests.fakes.tls import TestCA


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def endpoint(policy: ServiceTls | None, url: str = "https://10.0.0.9:8443") -> Endpoint:
    return Service("payments", (Endpoint.parse(url, "e"),), tls=policy).endpoints[0]


def subjects(context: ssl.SSLContext) -> list[str]:
    return [dict(item[0] for item in c["subject"])["commonName"] for c in context.get_ca_certs()]


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    return TestCA("Payments CA").pem_path(tmp_path)


def test_one_context_per_policy_and_contents_built_before_the_first_dial(ca_file: Path) -> None:
    policy = ServiceTls(ca=str(ca_file), min_version="1.3")
    tls = UpstreamTls(clock=Clock())
    named = ServiceTls(ca=str(policy.ca), min_version="1.3", server_name="payments.internal")
    doc = Document.parse({"services": [
        {"name": "payments", "endpoints": ["https://10.0.0.9:8443"],
         "tls": {"ca": str(ca_file), "min_version": "1.3"}},
        {"name": "billing", "endpoints": ["https://10.0.0.7:8443"],
         "tls": {"ca": str(ca_file), "min_version": "1.3", "server_name": "payments.internal"}}]})
    tls.update(compile_document(doc, 1))
    ca_file.unlink()  # the table swap read it: dials need no file access
    context = tls.context_for(endpoint(policy))
    assert context is not None and tls.context_for(endpoint(policy)) is context
    assert subjects(context) == ["Payments CA"]  # the given CA only, not the system's
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    # Another service with the same files and settings shares the context (keyed by fingerprint).
    assert tls.context_for(endpoint(named)) is context


def test_no_ca_means_the_systems_cas_and_still_verifying() -> None:
    tls = UpstreamTls()
    context = tls.context_for(endpoint(ServiceTls(min_version="1.3")))
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert tls.context_for(endpoint(None)) is not context  # the shared default has 1.2


def test_changed_files_are_seen_within_the_recheck_interval(tmp_path: Path, ca_file: Path) -> None:
    clock = Clock()
    tls = UpstreamTls(clock=clock)
    policy = ServiceTls(ca=str(ca_file))
    first = tls.context_for(endpoint(policy))
    assert first is not None
    clock.now += RECHECK
    assert tls.context_for(endpoint(policy)) is first  # read again, same fingerprint: kept
    TestCA("Rotated CA").pem_path(tmp_path)  # the same path, new contents
    clock.now += RECHECK / 2
    assert tls.context_for(endpoint(policy)) is first  # not read again yet
    clock.now += RECHECK / 2
    second = tls.context_for(endpoint(policy))
    assert second is not None and second is not first and subjects(second) == ["Rotated CA"]


def test_a_table_swap_reads_the_files_at_once(tmp_path: Path, ca_file: Path) -> None:
    tls = UpstreamTls(clock=Clock())
    policy = ServiceTls(ca=str(ca_file))
    first = tls.context_for(endpoint(policy))
    TestCA("Rotated CA").pem_path(tmp_path)
    tls.refresh([policy])
    second = tls.context_for(endpoint(policy))
    assert second is not None and subjects(second) == ["Rotated CA"] and second is not first


def test_files_that_cannot_be_loaded_fail_that_service_with_upstream_tls_config(tmp_path: Path) -> None:
    clock = Clock()
    tls = UpstreamTls(clock=clock)
    missing = ServiceTls(ca=str(tmp_path / "nope.pem"))
    with pytest.raises(UpstreamTlsConfig, match=r"cannot read ca .*nope\.pem") as info:
        tls.context_for(endpoint(missing))
    assert info.value.status == 502 and info.value.code == "upstream-tls-config"
    # Other services are not touched.
    assert tls.context_for(endpoint(None)) is not None
    # Once the file is there, the next read (after the interval) succeeds.
    TestCA().pem_path(tmp_path).rename(tmp_path / "nope.pem")
    with pytest.raises(UpstreamTlsConfig):
        tls.context_for(endpoint(missing))
    clock.now += RECHECK
    assert tls.context_for(endpoint(missing)) is not None


@pytest.mark.parametrize(("content", "says"), [
    (b"hello", "is not a PEM file"),
    (b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "no usable PEM certificate"),
])
def test_a_bad_ca_file_is_named(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "ca.pem"
    path.write_bytes(content)
    with pytest.raises(UpstreamTlsConfig, match=says) as info:
        UpstreamTls().context_for(endpoint(ServiceTls(ca=str(path))))
    assert str(path) in str(info.value)


def test_files_that_turn_bad_keep_the_last_good_context(tmp_path: Path, ca_file: Path) -> None:
    clock = Clock()
    tls = UpstreamTls(clock=clock)
    policy = ServiceTls(ca=str(ca_file))
    good = tls.context_for(endpoint(policy))
    ca_file.write_bytes(b"")  # a rotation caught half-written
    clock.now += RECHECK
    assert tls.context_for(endpoint(policy)) is good
    tls.refresh([policy])
    assert tls.context_for(endpoint(policy)) is good


def test_client_certificates_load_and_bad_ones_are_named(tmp_path: Path) -> None:
    ca = TestCA()
    leaf = ca.issue(tmp_path / "peel", ["peel.internal"], client=True)
    other = ca.issue(tmp_path / "other", ["other.internal"], client=True)
    tls = UpstreamTls()
    assert tls.context_for(endpoint(ServiceTls(client_cert=str(leaf.cert),
                                               client_key=str(leaf.key)))) is not None
    # the key in the certificate's file
    both = tmp_path / "both.pem"
    both.write_bytes(leaf.cert.read_bytes() + leaf.key.read_bytes())
    assert tls.context_for(endpoint(ServiceTls(client_cert=str(both)))) is not None
    # a key that is not the certificate's
    with pytest.raises(UpstreamTlsConfig, match=r"client certificate .*peel\.pem \+ .*other\.key"):
        tls.context_for(endpoint(ServiceTls(client_cert=str(leaf.cert), client_key=str(other.key))))
    # an encrypted key: refused, never a passphrase prompt on the terminal
    key = load_pem_private_key(leaf.key.read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(UpstreamTlsConfig, match="encrypted"):
        tls.context_for(endpoint(ServiceTls(client_cert=str(leaf.cert), client_key=str(locked))))


def test_a_policy_no_table_has_is_forgotten(ca_file: Path) -> None:
    tls = UpstreamTls(clock=Clock())
    policy = ServiceTls(ca=str(ca_file))
    first = tls.context_for(endpoint(policy))
    tls.refresh([])
    ca_file.unlink()
    with pytest.raises(UpstreamTlsConfig):  # read again: nothing cached for it any more
        tls.context_for(endpoint(policy))
    assert first is not None


def test_the_server_name_is_the_policys_else_the_endpoints_host() -> None:
    assert server_name(endpoint(None, "https://Orders.Internal:8443")) == "orders.internal"
    assert server_name(endpoint(ServiceTls(), "https://10.0.0.9")) == "10.0.0.9"
    assert server_name(endpoint(ServiceTls(server_name="payments.internal"))) == "payments.internal"


def test_a_factory_still_wins_over_the_policy(ca_file: Path) -> None:
    mine = ssl.create_default_context()
    tls = UpstreamTls(lambda e: mine)
    assert tls.context_for(endpoint(ServiceTls(ca=str(ca_file)))) is mine


def test_a_failed_handshake_is_retried_as_a_connect_failure_and_unloadable_files_are_not() -> None:
    assert failure_kind(UpstreamTlsError("untrusted")) == "connect-failure"
    assert failure_kind(ConnectError("refused")) == "connect-failure"
    assert failure_kind(UpstreamTlsConfig("no ca")) is None  # every endpoint shares the files
