"""The CA directory (issue 12, item 3): what survives a crash, and keys others can read."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.identity import certs
from gateway.identity.ca import CertificateAuthority
from gateway.identity.errors import CaError, CsrRefused
from gateway.identity.spiffe import service_id

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_a_generation_left_by_a_crash_is_never_used(tmp_path: Path) -> None:
    ca, _ = CertificateAuthority.init(tmp_path / "ca", "peel.internal", now=NOW)
    # a rotation that died after writing generation 2 and before ca.json named it
    shutil.copytree(tmp_path / "ca/generations/1", tmp_path / "ca/generations/2")
    again = CertificateAuthority.open(tmp_path / "ca")
    assert again.current.number == 1 and again.previous is None
    rotated, _ = again.rotate(now=NOW)
    assert rotated.current.number == 3 and rotated.previous is not None and rotated.previous.number == 1
    assert rotated.current.root.subject != ca.current.root.subject


def test_a_stale_bundle_is_rewritten_from_ca_json(tmp_path: Path) -> None:
    ca, _ = CertificateAuthority.init(tmp_path / "ca", "peel.internal", now=NOW)
    rotated, _ = ca.rotate(now=NOW, overlap=timedelta(hours=1))
    (tmp_path / "ca/bundle.pem").write_bytes(certs.cert_pem(ca.current.root))  # the crash's leftover
    CertificateAuthority.open(tmp_path / "ca")
    assert (tmp_path / "ca/bundle.pem").read_bytes() == certs.cert_pem(rotated.current.root, ca.current.root)


def test_finish_waits_for_the_overlap(tmp_path: Path) -> None:
    ca, _ = CertificateAuthority.init(tmp_path / "ca", "peel.internal", now=NOW)
    rotated, _ = ca.rotate(now=NOW, overlap=timedelta(hours=48))
    with pytest.raises(CaError, match="overlap lasts until 2026-03-03 12:00:00"):
        rotated.finish_rotation(now=NOW + timedelta(hours=47))
    done = rotated.finish_rotation(now=NOW + timedelta(hours=48))
    assert done.previous is None
    with pytest.raises(CaError, match="no rotation"):
        done.finish_rotation(now=NOW)


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    ca, _ = CertificateAuthority.init(tmp_path / "ca", "peel.internal", now=NOW)
    request = certs.build_csr(certs.new_key(), service_id("peel.internal", "orders"))
    assert ca.issue(request, "orders", now=NOW).not_valid_after_utc == NOW + timedelta(hours=24)
    os.chmod(ca.current.intermediate_key_path, 0o644)
    with pytest.raises(CaError, match="readable by others"):
        ca.issue(request, "orders", now=NOW)


def test_leaves_are_issued_in_the_cas_trust_domain(tmp_path: Path) -> None:
    ca, _ = CertificateAuthority.init(tmp_path / "ca", "corp.example", now=NOW)
    mine = certs.build_csr(certs.new_key(), service_id("corp.example", "orders"))
    assert str(certs.spiffe_id_of(ca.issue(mine, "orders", now=NOW))) == "spiffe://corp.example/svc/orders"
    theirs = certs.build_csr(certs.new_key(), service_id("peel.internal", "orders"))
    with pytest.raises(CsrRefused, match=r"only spiffe://corp\.example/svc/orders"):
        ca.issue(theirs, "orders", now=NOW)
