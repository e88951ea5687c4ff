"""`peel ca` as an operator runs it (a subprocess), checked from outside with `openssl`
(issue 12, items 3 and 4): issued leaves verify against the bundle, foreign, expired and
out-of-domain ones do not, key files are 0600 whatever the umask, a root rotation overlaps.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.identity import certs
from gateway.identity.ca import CertificateAuthority
from gateway.identity.spiffe import service_id

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def peel(*args: str, cwd: Path, expect: int = 0, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=60, preexec_fn=lambda: os.umask(umask))
    assert done.returncode == expect, (args, done.stdout, done.stderr)
    return done


def openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], cwd=cwd, text=True, capture_output=True, timeout=60)


def csr(cwd: Path, name: str, uri: str) -> Path:
    """A key and CSR made by openssl, as a workload would: the key stays in `cwd`."""
    assert openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key",
                   cwd=cwd).returncode == 0
    done = openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/O={name}", "-addext",
                   f"subjectAltName=URI:{uri}", "-out", f"{name}.csr", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return cwd / f"{name}.csr"


def verify(cwd: Path, bundle: Path, intermediate: Path, leaf: Path) -> subprocess.CompletedProcess[str]:
    return openssl("verify", "-CAfile", str(bundle), "-untrusted", str(intermediate), str(leaf), cwd=cwd)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_issued_leaf_verifies_and_nothing_else_does(tmp_path: Path) -> None:
    peel("ca", "init", "--dir", "ca", "--trust-domain", "peel.internal", cwd=tmp_path, umask=0o022)
    ca_dir = tmp_path / "ca"
    gen = ca_dir / "generations" / "1"
    # keys 0600 and directories 0700 although the command ran under umask 022
    assert mode(gen / "root.key") == 0o600 and mode(gen / "intermediate.key") == 0o600
    assert mode(ca_dir) == 0o700 and mode(gen) == 0o700
    assert not [p for p in ca_dir.rglob("*") if p.name.startswith(".")]  # no temporary file left

    orders_csr = csr(tmp_path, "orders", "spiffe://peel.internal/svc/orders")
    peel("ca", "issue", "--dir", "ca", "--service", "orders", "--csr", str(orders_csr), "--out", "leaf.pem",
         cwd=tmp_path)
    bundle, inter = ca_dir / "bundle.pem", gen / "intermediate.pem"
    ok = verify(tmp_path, bundle, inter, tmp_path / "leaf.pem")
    assert ok.returncode == 0 and "leaf.pem: OK" in ok.stdout, ok.stdout + ok.stderr
    text = openssl("x509", "-in", "leaf.pem", "-noout", "-text", cwd=tmp_path).stdout
    assert "URI:spiffe://peel.internal/svc/orders" in text
    assert "CA:FALSE" in text and "TLS Web Server Authentication, TLS Web Client Authentication" in text
    # the same key, to the end: the certificate carries the workload's public key
    key_pub = openssl("pkey", "-in", "orders.key", "-pubout", cwd=tmp_path).stdout
    assert openssl("x509", "-in", "leaf.pem", "-noout", "-pubkey", cwd=tmp_path).stdout == key_pub
    # --chain: leaf then intermediate, what a TLS server sends
    chain = peel("ca", "issue", "--dir", "ca", "--service", "orders", "--csr", str(orders_csr), "--chain",
                 cwd=tmp_path).stdout
    assert chain.count("BEGIN CERTIFICATE") == 2 and chain.endswith(inter.read_text())

    # a leaf of another CA (same trust domain, same service) does not verify against this bundle
    peel("ca", "init", "--dir", "other", "--trust-domain", "peel.internal", cwd=tmp_path)
    peel("ca", "issue", "--dir", "other", "--service", "orders", "--csr", str(orders_csr), "--out",
         "foreign.pem", cwd=tmp_path)
    foreign = verify(tmp_path, bundle, inter, tmp_path / "foreign.pem")
    assert foreign.returncode != 0
    other = tmp_path / "other"
    assert verify(tmp_path, other / "bundle.pem", other / "generations/1/intermediate.pem",
                  tmp_path / "foreign.pem").returncode == 0

    # an expired leaf of this very CA does not verify
    ca = CertificateAuthority.open(ca_dir)
    request = certs.load_csr(orders_csr.read_bytes())
    old = ca.issue(request, "orders", now=datetime.now(UTC) - timedelta(days=2), lifetime=timedelta(hours=1))
    (tmp_path / "expired.pem").write_bytes(certs.cert_pem(old))
    expired = verify(tmp_path, bundle, inter, tmp_path / "expired.pem")
    assert expired.returncode != 0 and "expired" in expired.stdout + expired.stderr

    # the name constraint: even the CA's own intermediate cannot mint an ID in another trust domain
    evil = service_id("evil.internal", "orders")
    inter_key = certs.load_key((gen / "intermediate.key").read_bytes(), "intermediate.key")
    wrong = certs.build_leaf(certs.build_csr(certs.new_key(), evil), evil, ca.current.intermediate, inter_key,
                             now=datetime.now(UTC))
    (tmp_path / "evil.pem").write_bytes(certs.cert_pem(wrong))
    refused = verify(tmp_path, bundle, inter, tmp_path / "evil.pem")
    assert refused.returncode != 0 and "permitted subtree violation" in refused.stdout + refused.stderr


def test_a_csr_for_another_identity_is_refused(tmp_path: Path) -> None:
    peel("ca", "init", "--dir", "ca", cwd=tmp_path)
    billing = csr(tmp_path, "billing", "spiffe://peel.internal/svc/billing")
    done = peel("ca", "issue", "--dir", "ca", "--service", "orders", "--csr", str(billing), cwd=tmp_path,
                expect=1)
    assert done.stdout == ""
    assert done.stderr.strip() == ("peel: the CSR asks for 'spiffe://peel.internal/svc/billing'; only "
                                   "spiffe://peel.internal/svc/orders is allowed")
    assert peel("ca", "init", "--dir", "ca", cwd=tmp_path, expect=1).stderr.startswith("peel: a CA already")
    assert peel("ca", "status", "--dir", "nowhere", cwd=tmp_path, expect=1).stderr.startswith("peel: no CA")
    peel("ca", "rotate", "--dir", "ca", "--force", cwd=tmp_path, expect=2)
    peel("ca", "init", "--dir", "x", "--trust-domain", "Peel.Internal", cwd=tmp_path, expect=1)


def test_the_root_key_can_be_kept_offline(tmp_path: Path) -> None:
    done = peel("ca", "init", "--dir", "ca", "--offline-root", cwd=tmp_path)
    offline = tmp_path / "ca" / "offline" / "root-1.key"
    assert str(offline) in done.stderr or "offline/root-1.key" in done.stderr
    assert mode(offline) == 0o600 and mode(offline.parent) == 0o700
    assert not (tmp_path / "ca" / "generations" / "1" / "root.key").exists()
    offline.rename(tmp_path / "moved-away.key")  # the operator takes it away
    key = serialization.load_pem_private_key((tmp_path / "moved-away.key").read_bytes(), None)
    assert key.public_key() == CertificateAuthority.open(tmp_path / "ca").current.root.public_key()
    # the intermediate still signs leaves
    peel("ca", "issue", "--dir", "ca", "--service", "orders", "--out", "leaf.pem",
         "--csr", str(csr(tmp_path, "orders", "spiffe://peel.internal/svc/orders")), cwd=tmp_path)
    assert verify(tmp_path, tmp_path / "ca/bundle.pem", tmp_path / "ca/generations/1/intermediate.pem",
                  tmp_path / "leaf.pem").returncode == 0
    status = json.loads(peel("ca", "status", "--dir", "ca", "--json", cwd=tmp_path).stdout)
    assert [(c["role"], c["key"]) for c in status["certificates"]] == [("current root", "offline"),
                                                                       ("current intermediate", "here")]


def test_a_root_rotation_overlaps_then_drops_the_old_root(tmp_path: Path) -> None:
    peel("ca", "init", "--dir", "ca", "--trust-domain", "peel.internal", cwd=tmp_path)
    ca_dir = tmp_path / "ca"
    request = csr(tmp_path, "orders", "spiffe://peel.internal/svc/orders")
    peel("ca", "issue", "--dir", "ca", "--service", "orders", "--csr", str(request), "--out", "old.pem",
         cwd=tmp_path)
    before = json.loads(peel("ca", "status", "--dir", "ca", "--json", cwd=tmp_path).stdout)

    peel("ca", "rotate", "--dir", "ca", "--overlap", "48h", cwd=tmp_path)
    peel("ca", "issue", "--dir", "ca", "--service", "orders", "--csr", str(request), "--out", "new.pem",
         cwd=tmp_path)
    bundle = ca_dir / "bundle.pem"
    assert bundle.read_text().count("BEGIN CERTIFICATE") == 2
    old_inter = ca_dir / "generations/1/intermediate.pem"
    new_inter = ca_dir / "generations/2/intermediate.pem"
    assert verify(tmp_path, bundle, old_inter, tmp_path / "old.pem").returncode == 0
    assert verify(tmp_path, bundle, new_inter, tmp_path / "new.pem").returncode == 0
    # the new leaf really is under the new root: the old root alone does not verify it
    old_root = ca_dir / "generations/1/root.pem"
    assert verify(tmp_path, old_root, new_inter, tmp_path / "new.pem").returncode != 0
    during = json.loads(peel("ca", "status", "--dir", "ca", "--json", cwd=tmp_path).stdout)
    assert during["bundle_roots"] == 2 and during["overlap_until"]
    assert during["certificates"][2]["sha256"] == before["certificates"][0]["sha256"]  # previous root
    assert peel("ca", "rotate", "--dir", "ca", cwd=tmp_path, expect=1).stderr.startswith(
        "peel: a rotation is already in progress")

    # before the overlap ends, --finish refuses; --force finishes
    assert "overlap lasts until" in peel("ca", "rotate", "--dir", "ca", "--finish", cwd=tmp_path,
                                         expect=1).stderr
    peel("ca", "rotate", "--dir", "ca", "--finish", "--force", cwd=tmp_path)
    assert bundle.read_text().count("BEGIN CERTIFICATE") == 1
    assert verify(tmp_path, bundle, old_inter, tmp_path / "old.pem").returncode != 0
    assert verify(tmp_path, bundle, new_inter, tmp_path / "new.pem").returncode == 0
    assert not (ca_dir / "generations/1/intermediate.key").exists()
    assert not (ca_dir / "generations/1/root.key").exists()
    assert mode(ca_dir / "generations/2/intermediate.key") == 0o600
    after = peel("ca", "status", "--dir", "ca", cwd=tmp_path).stdout
    assert "previous" not in after and "(1 root)" in after


def test_the_ca_dir_comes_from_the_settings(tmp_path: Path) -> None:
    (tmp_path / "peel.toml").write_text('[identity]\ntrust_domain = "corp.example"\nca_dir = "pki"\n')
    peel("--config", "peel.toml", "ca", "init", cwd=tmp_path)
    status = json.loads(peel("ca", "status", "--config", "peel.toml", "--json", cwd=tmp_path).stdout)
    assert status["trust_domain"] == "corp.example"
    assert status["directory"] == str(tmp_path / "pki")  # relative to the settings file
