"""A gateway's side of its identity: joining, the state directory, and talking to the control plane.

    key, issued = join(control, token, cafile=...)     # POST /api/v1/certificates/join
    write_state(state_dir, key, issued, control)       # the four files below
    state = read_state(state_dir)                      # what renewal and the listeners use

The key is made here (ECDSA P-256) and never sent: only the CSR travels. The state directory
(`[identity] state_dir`, 0700) holds exactly:

    key.pem        this gateway's private key, 0600
    cert.pem       the leaf, then the intermediate (PEM)
    bundle.pem     the trust bundle: one root, or two during a root rotation (PEM)
    identity.json  {"spiffe_id", "serial" (hex), "not_before", "not_after" (ISO 8601), "control"}

**Write order.** Every file is written to a temporary name, synced and renamed (`files.write_atomic`).
A new pair is first written whole as `key.pem.new` and `cert.pem.new`; then `bundle.pem` is
replaced (so the roots of a new generation are trusted before a certificate of it is used); then
`key.pem.new` is renamed to `key.pem` and `cert.pem.new` to `cert.pem`; `identity.json` last. Two
renames cannot be one atomic step: between them a reader sees the new key with the old
certificate. A reader must load the pair and refuse it when the key does not match (OpenSSL's
`load_cert_chain` does: "key values mismatch") and read again a moment later, keeping what it had
meanwhile (`gateway.identity.bundle` does). `cert.pem` is the commit point: after a crash between
the two renames, `read_state` finds `cert.pem.new` matching `key.pem` and finishes the rename; a
crash before them leaves the old, consistent pair (the `.new` files are removed).
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from gateway.core.settings import is_loopback
from gateway.identity import certs
from gateway.identity.errors import IdentityError, StateError
from gateway.identity.files import KEY_MODE, PUBLIC_MODE, private_dir, read_private, sync_dir, write_atomic
from gateway.identity.spiffe import SpiffeId, parse
from gateway.identity.tokens import token_identity

KEY_FILE, CERT_FILE, BUNDLE_FILE, INFO_FILE = "key.pem", "cert.pem", "bundle.pem", "identity.json"
NEW = ".new"
JOIN_PATH = "/api/v1/certificates/join"
RENEW_PATH = "/api/v1/certificates/renew"
TIMEOUT = 30.0


class ControlError(IdentityError):
    """The control plane refused a join or renewal; `status` and `code` are its answer's."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ControlUnreachable(ControlError):
    """The control plane could not be reached (or answered something that is not Peel's)."""


@dataclass(frozen=True, slots=True)
class Issued:
    """The control plane's answer to a join or renewal, checked."""

    chain: tuple[x509.Certificate, ...]  # leaf first
    bundle_pem: bytes
    identity: SpiffeId

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


@dataclass(frozen=True, slots=True)
class State:
    """What the state directory holds, loaded."""

    directory: Path
    key: certs.PrivateKey
    chain: tuple[x509.Certificate, ...]
    identity: SpiffeId
    control: str

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


# -- talking to the control plane ----------------------------------------------------------------


def _context(cafile: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=cafile or None)
    except (OSError, ssl.SSLError) as exc:
        raise ControlError(f"cannot read the control plane's CA file {cafile}: "
                           f"{getattr(exc, 'strerror', None) or exc}") from None


def post(control: str, path: str, body: dict[str, Any], *, token: str | None = None,
         cafile: str | None = None, timeout: float = TIMEOUT) -> dict[str, Any]:
    """POST `body` as JSON to the control plane's admin API; its JSON answer, or `ControlError`.

    https is required, except to a loopback address (a join token or key proof in clear text on a
    network is not acceptable); the certificate is verified against `cafile` or the system's store.
    """
    url = urlsplit(control)
    host = url.hostname or ""
    try:
        port = url.port
    except ValueError:
        raise ControlError(f"--control {control!r} has a bad port") from None
    if url.scheme not in ("http", "https") or not host:
        raise ControlError(f"--control {control!r} is not an https:// URL of the control plane's admin API")
    if url.scheme == "http" and not is_loopback(host):
        raise ControlError(f"--control {control!r}: the admin API must be https:// (a join token or "
                           "certificate request does not travel in clear text)")
    conn: http.client.HTTPConnection
    if url.scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=_context(cafile))
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", url.path.rstrip("/") + path, json.dumps(body).encode(), headers)
        response = conn.getresponse()
        raw = response.read(1024 * 1024)
        status = response.status
    except ssl.SSLCertVerificationError as exc:
        raise ControlUnreachable(f"the control plane's certificate does not verify ({exc.verify_message}):"
                                 " pass --cacert (or set [identity] control_cacert)") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ControlUnreachable(f"cannot reach the control plane at {control}: {exc}") from None
    finally:
        conn.close()
    try:
        answer = json.loads(raw)
    except ValueError:
        raise ControlUnreachable(f"the control plane at {control} answered {status} with a body that is "
                                 "not JSON (is it Peel's admin API?)") from None
    if status != 200 or not isinstance(answer, dict):
        detail = answer.get("detail", "") if isinstance(answer, dict) else ""
        code = answer.get("code", "") if isinstance(answer, dict) else ""
        raise ControlError(f"the control plane refused ({status} {code}): {detail}", status=status,
                           code=str(code))
    return answer


def parse_answer(answer: dict[str, Any], key: certs.PrivateKey, expected: SpiffeId) -> Issued:
    """The answer's chain and bundle, checked: the leaf carries `key`'s public key and `expected`,
    and is signed by the intermediate that follows it, itself signed by a root of the bundle."""
    try:
        chain = tuple(x509.load_pem_x509_certificates(str(answer["certificate"]).encode()))
        bundle_pem = str(answer["bundle"]).encode()
        roots = x509.load_pem_x509_certificates(bundle_pem)
    except (KeyError, ValueError) as exc:
        raise ControlError(f"the control plane's answer is not a certificate and a bundle: {exc}") from None
    if len(chain) < 2 or not roots:
        raise ControlError("the control plane's answer lacks the intermediate or the bundle")
    leaf = chain[0]
    if leaf.public_key() != key.public_key():
        raise ControlError("the issued certificate does not carry this gateway's key")
    identity = certs.spiffe_id_of(leaf)
    if identity != expected:
        raise ControlError(f"the issued certificate is for {identity}, not {expected}")
    try:
        leaf.verify_directly_issued_by(chain[1])
    except (InvalidSignature, ValueError, TypeError):
        raise ControlError("the issued certificate is not signed by the intermediate sent with it") from None
    if not any(_signed_by(chain[1], root) for root in roots):
        raise ControlError("the intermediate sent does not chain to a root of the trust bundle")
    return Issued(chain, bundle_pem, identity)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def join(control: str, token: str, *, cafile: str | None = None) -> tuple[certs.PrivateKey, Issued]:
    """Make a key and a CSR for the token's identity, trade them for a certificate."""
    identity = token_identity(token)
    key = certs.new_key()
    csr = certs.build_csr(key, identity).public_bytes(serialization.Encoding.PEM)
    answer = post(control, JOIN_PATH, {"csr": csr.decode()}, token=token, cafile=cafile)
    return key, parse_answer(answer, key, identity)


# -- the state directory ---------------------------------------------------------------------------


def _info(issued: Issued, control: str) -> bytes:
    leaf = issued.leaf
    info = {"spiffe_id": str(issued.identity), "serial": format(leaf.serial_number, "x"),
            "not_before": leaf.not_valid_before_utc.isoformat(),
            "not_after": leaf.not_valid_after_utc.isoformat(), "control": control}
    return (json.dumps(info, indent=2) + "\n").encode()


def write_state(state_dir: Path, key: certs.PrivateKey, issued: Issued, control: str) -> None:
    """Replace the identity in `state_dir` with `key` and `issued` (see the module docstring)."""
    directory = private_dir(state_dir)
    write_atomic(directory / (KEY_FILE + NEW), certs.key_pem(key), KEY_MODE)
    write_atomic(directory / (CERT_FILE + NEW), certs.cert_pem(*issued.chain), PUBLIC_MODE)
    write_atomic(directory / BUNDLE_FILE, issued.bundle_pem, PUBLIC_MODE)
    os.replace(directory / (KEY_FILE + NEW), directory / KEY_FILE)
    os.replace(directory / (CERT_FILE + NEW), directory / CERT_FILE)
    sync_dir(directory)
    write_atomic(directory / INFO_FILE, _info(issued, control), PUBLIC_MODE)


def _recover(directory: Path) -> None:
    """Finish or undo a pair swap a crash interrupted (see the module docstring)."""
    new_cert, new_key = directory / (CERT_FILE + NEW), directory / (KEY_FILE + NEW)
    if not new_cert.exists():
        new_key.unlink(missing_ok=True)
        return
    try:
        key = certs.load_key(read_private(directory / KEY_FILE), str(directory / KEY_FILE))
        leaf = x509.load_pem_x509_certificates(new_cert.read_bytes())[0]
        matches = not new_key.exists() and leaf.public_key() == key.public_key()
    except (IdentityError, OSError, ValueError, IndexError):
        matches = False
    if matches:
        os.replace(new_cert, directory / CERT_FILE)
    else:
        new_cert.unlink(missing_ok=True)
        new_key.unlink(missing_ok=True)
    sync_dir(directory)


def has_identity(state_dir: Path) -> bool:
    return (state_dir / CERT_FILE).is_file() and (state_dir / KEY_FILE).is_file()


def read_state(state_dir: Path, *, recover: bool = False) -> State:
    """The identity in `state_dir` (`StateError` when there is none or it is inconsistent).

    `recover`: finish or undo a swap a crash interrupted; only under `locked(state_dir)`, or a
    writer's swap in progress would be undone under its feet."""
    if not has_identity(state_dir):
        raise StateError(f"no identity in {state_dir}: run `peel join --token ... --control ...`")
    if recover:
        _recover(state_dir)
    try:
        key = certs.load_key(read_private(state_dir / KEY_FILE), str(state_dir / KEY_FILE))
        chain = tuple(x509.load_pem_x509_certificates((state_dir / CERT_FILE).read_bytes()))
        info = json.loads((state_dir / INFO_FILE).read_text())
        control = str(info["control"])
    except (IdentityError, OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(f"the identity in {state_dir} cannot be read: {exc}") from None
    if not chain or chain[0].public_key() != key.public_key():
        raise StateError(f"{state_dir / CERT_FILE} does not match {state_dir / KEY_FILE}")
    try:
        identity = parse(str(certs.spiffe_id_of(chain[0])))
    except IdentityError as exc:
        raise StateError(f"{state_dir / CERT_FILE} is not a workload certificate: {exc}") from None
    return State(state_dir, key, chain, identity, control)


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the state directory (the serving processes of one gateway take
    turns renewing; the lock is on the directory itself, so no file is added to it)."""
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
