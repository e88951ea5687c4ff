"""What the rotation proofs (tests/sockets/test_rotation.py) found, pinned down without processes:
during a root rotation the previous generation signs for one leaf lifetime; a renewal's retries
are capped by the certificate's remaining life; an identity reload refused while the files were
still changing is retried; a late renewal is presented at once by the process that made it, not at
the next poll (the rotation under load once refused handshakes for the 1.4 s between the two), and
within a quarter second by the others."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.core.errors import ConfigError
from gateway.identity import bundle as bundle_module
from gateway.identity import certs, renewal
from gateway.identity.bundle import IdentityBundle
from gateway.identity.ca import CertificateAuthority
from gateway.identity.files import KEY_MODE, PUBLIC_MODE, private_dir, write_atomic
from gateway.identity.issuer import Issuer
from gateway.identity.join import State, parse_answer, read_state, write_state
from gateway.identity.renewal import backoff, start_renewal
from gateway.identity.spiffe import service_id

TD = "peel.internal"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def csr(service: str = "orders") -> bytes:
    return certs.build_csr(certs.new_key(), service_id(TD, service)).public_bytes(serialization.Encoding.PEM)


def test_the_previous_generation_signs_for_one_leaf_lifetime_after_a_rotation(tmp_path: Path) -> None:
    ca, _ = CertificateAuthority.init(tmp_path / "ca", TD, now=NOW - timedelta(days=1))
    issuer = Issuer(tmp_path / "ca", MINUTE)
    first = ca.current.intermediate
    assert issuer.join(csr(), "orders", now=NOW).leaf.issuer == first.subject
    rotated, _ = ca.rotate(now=NOW, overlap=timedelta(minutes=2))
    second = rotated.current.intermediate
    # a gateway renewing now gets the two-root bundle with a leaf its peers already trust
    during = issuer.join(csr(), "orders", now=NOW + timedelta(seconds=59))
    assert during.leaf.issuer == first.subject
    assert certs.cert_pem(rotated.current.root, ca.current.root) == during.bundle_pem
    assert during.chain_pem.endswith(certs.cert_pem(first))
    # one lifetime later every gateway renewing on time holds the new root: the new generation signs
    after = issuer.join(csr(), "orders", now=NOW + timedelta(seconds=61))
    assert after.leaf.issuer == second.subject and after.chain_pem.endswith(certs.cert_pem(second))
    # with 24-hour leaves the old generation signs for a day
    daily = Issuer(tmp_path / "ca").join(csr(), "orders", now=NOW + timedelta(hours=23))
    assert daily.leaf.issuer == first.subject
    # finished (or its keys gone): the new generation signs at once
    rotated.finish_rotation(now=NOW, force=True)
    assert issuer.join(csr(), "orders", now=NOW + timedelta(seconds=1)).leaf.issuer == second.subject


def test_without_the_old_intermediate_key_the_new_generation_signs(tmp_path: Path) -> None:
    ca, _ = CertificateAuthority.init(tmp_path / "ca", TD, now=NOW - timedelta(days=1))
    rotated, _ = ca.rotate(now=NOW)
    assert rotated.previous is not None
    rotated.previous.intermediate_key_path.unlink()
    leaf = Issuer(tmp_path / "ca", MINUTE).join(csr(), "orders", now=NOW + timedelta(seconds=1)).leaf
    assert leaf.issuer == rotated.current.intermediate.subject


def test_retries_wait_at_most_a_quarter_of_the_remaining_life() -> None:
    top = lambda: 1.0  # noqa: E731 - the largest draw of the jitter
    assert backoff(10, top) == 60.0  # without `left`, as before
    assert backoff(10, top, left=20.0) == 5.0  # a 1-minute certificate 40 s old
    assert backoff(10, top, left=2.0) == 1.0  # never below the base
    assert backoff(10, top, left=12 * 3600.0) == 60.0  # a long certificate: the usual cap
    assert backoff(2, top, left=20.0) == 2.0  # the doubling still applies below the cap
    assert backoff(10, lambda: 0.5, left=20.0) == 2.5


def write_identity(ca: CertificateAuthority, directory: Path, service: str) -> None:
    key = certs.new_key()
    leaf = ca.issue(certs.build_csr(key, service_id(TD, service)), service, now=datetime.now(UTC))
    private_dir(directory)
    write_atomic(directory / "key.pem", certs.key_pem(key), KEY_MODE)
    write_atomic(directory / "cert.pem", certs.cert_pem(leaf, ca.current.intermediate), PUBLIC_MODE)
    write_atomic(directory / "bundle.pem", ca.bundle_pem(), PUBLIC_MODE)
    write_atomic(directory / "identity.json",
                 f'{{"spiffe_id": "{service_id(TD, service)}", "not_after": "x"}}'.encode(), PUBLIC_MODE)


def test_a_reload_refused_while_the_files_changed_is_tried_again(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ca, _ = CertificateAuthority.init(tmp_path / "ca", TD, now=datetime.now(UTC) - timedelta(days=1))
    state = tmp_path / "identity"
    write_identity(ca, state, "orders")
    identity = IdentityBundle(str(state))
    real_load = bundle_module.load

    def caught_mid_renewal(directory: Path) -> object:
        # the load saw a half-written renewal; the renewal completes before the refusal is noted
        write_identity(ca, state, "billing")
        raise ConfigError("identity.state_dir", "the key does not match the certificate")

    monkeypatch.setattr(bundle_module, "load", caught_mid_renewal)
    assert identity.changed() is False
    write_identity(ca, state, "orders")  # a renewal starts
    assert identity.changed()
    assert identity.reload(why="test") is False
    monkeypatch.setattr(bundle_module, "load", real_load)
    # the files are whole now and differ from what was refused: the next poll loads them
    assert identity.changed()
    assert identity.reload(why="test") and str(identity.identity) == f"spiffe://{TD}/svc/billing"


def joined(issuer: Issuer, directory: Path, now: datetime) -> None:
    """What `peel join` writes, issued at `now` by `issuer` without a control plane in between."""
    key = certs.new_key()
    pem = certs.build_csr(key, service_id(TD, "orders")).public_bytes(serialization.Encoding.PEM)
    answer = parse_answer(issuer.join(pem, "orders", now=now).to_json(), key, service_id(TD, "orders"))
    write_state(directory, key, answer, "https://control.invalid")


def test_the_renewing_process_presents_its_new_certificate_without_waiting_for_the_poll(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now(UTC)
    CertificateAuthority.init(tmp_path / "ca", TD, now=now - timedelta(days=1))
    issuer, state_dir = Issuer(tmp_path / "ca", MINUTE), tmp_path / "identity"
    joined(issuer, state_dir, now - timedelta(seconds=40))  # a late renewal: 20 s of life left

    def renew_here(state: State, *, cafile: str | None, now: datetime) -> State:
        joined(issuer, state.directory, now)  # the control plane's part, in this process
        return read_state(state.directory)

    monkeypatch.setattr(renewal, "renew_state", renew_here)
    identity = IdentityBundle(str(state_dir))  # its watch() is not running: no poll will reload
    before = identity.not_after
    seen: list[tuple[str, str]] = []

    async def main() -> None:
        renewed = asyncio.Event()

        def on_new_certificate() -> None:
            identity.refresh(why="renewed")
            written = json.loads((state_dir / "identity.json").read_text())["not_after"]
            seen.append((identity.not_after, written))
            renewed.set()

        (task,) = start_renewal(SimpleNamespace(state_dir=str(state_dir), control_cacert=""),
                                SimpleNamespace(identity=None), on_new_certificate)
        try:
            await asyncio.wait_for(renewed.wait(), 30)
        finally:
            task.cancel()

    asyncio.run(main())
    (loaded, written), = seen
    assert loaded == written != before
    assert identity.refresh(why="poll") is False  # nothing left for the poll to load


def test_the_files_are_looked_at_more_often_near_the_certificate_s_expiry(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    CertificateAuthority.init(tmp_path / "ca", TD, now=now - timedelta(days=1))
    issuer, state_dir = Issuer(tmp_path / "ca", MINUTE), tmp_path / "identity"
    joined(issuer, state_dir, now)
    identity = IdentityBundle(str(state_dir))
    expires = datetime.fromisoformat(identity.not_after).timestamp()
    assert identity.next_poll(now=expires - 30) == bundle_module.POLL_SECONDS
    # the last seconds of its life, and the first after it: another worker's late renewal is
    # presented within a quarter second
    assert identity.next_poll(now=expires - 5) == bundle_module.URGENT_POLL_SECONDS
    assert identity.next_poll(now=expires + 5) == bundle_module.URGENT_POLL_SECONDS
    assert identity.next_poll(now=expires + 3600) == bundle_module.POLL_SECONDS  # long gone: join again
    assert identity.next_poll(0.1, now=expires - 5) == 0.1  # never slower than asked


def test_another_worker_s_late_renewal_is_loaded_within_a_quarter_second(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    CertificateAuthority.init(tmp_path / "ca", TD, now=now - timedelta(days=1))
    issuer, state_dir = Issuer(tmp_path / "ca", MINUTE), tmp_path / "identity"
    joined(issuer, state_dir, now - timedelta(seconds=55))  # 5 s of life left
    identity = IdentityBundle(str(state_dir))
    before = identity.not_after

    async def main() -> float:
        watcher = asyncio.create_task(identity.watch())
        try:
            await asyncio.sleep(0.05)
            joined(issuer, state_dir, datetime.now(UTC))  # renewed by another process
            written = time.monotonic()
            while identity.not_after == before:
                assert time.monotonic() - written < 1.0, "not loaded within a second"
                await asyncio.sleep(0.01)
            return time.monotonic() - written
        finally:
            watcher.cancel()

    assert asyncio.run(main()) < 1.0
