"""A gateway calling its control plane as itself: a request signed by its certificate's key.

A sidecar has no database credentials and no admin token; it reaches the control plane's admin API
with its identity instead, by the renewal's proof of possession (`gateway.identity.proof`) applied
to a request. Two headers:

    Peel-Certificate: base64 of the current chain (leaf, then intermediate), PEM
    Peel-Proof: <unix seconds>:<signature, base64>

The signature is the current key's over `b"peel-request/1\\n" + timestamp + b"\\n" + payload`, the
payload being `METHOD SP target LF sha256-hex(body)` (target: path and query as sent), so a proof
is good for one request, its body and five minutes (`proof.MAX_SKEW`), and never as a renewal's
(another context). The control plane checks the chain as it checks a renewal's (signed by one of
its intermediates, valid now, one SPIFFE ID of its trust domain naming a service) and answers as
that identity. Over HTTPS a proof cannot be seen, so a replay within the window needs the bytes of
a request the attacker could not read; and the requests it authenticates (read the config,
register the caller's own endpoint) are idempotent.

`call(state, method, path, body)` sends such a request for the identity in a state directory
(`gateway.identity.join.State`) to the control plane it joined; `verify` is the control plane's side.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from gateway.core.settings import is_loopback
from gateway.identity import certs, proof
from gateway.identity.ca import CertificateAuthority
from gateway.identity.errors import IdentityError, ProofRefused
from gateway.identity.issuer import Issuer, load_chain
from gateway.identity.join import TIMEOUT, ControlError, ControlUnreachable, State, _context
from gateway.identity.spiffe import SpiffeId, parse

CONTEXT = b"peel-request/1\n"
CERTIFICATE_HEADER = "peel-certificate"
PROOF_HEADER = "peel-proof"
# a config version's document and the registry, as JSON: well above the 10k-route documents measured
MAX_ANSWER = 64 * 1024 * 1024


def payload(method: str, target: str, body: bytes) -> bytes:
    return f"{method.upper()} {target}\n{hashlib.sha256(body).hexdigest()}".encode()


def sign(key: certs.PrivateKey, chain_pem: bytes, method: str, target: str, body: bytes, *,
         timestamp: int) -> dict[str, str]:
    """The two headers that make this request the holder of `key`'s (whose chain is `chain_pem`)."""
    signature = proof.sign(key, payload(method, target, body), timestamp, context=CONTEXT)
    return {"Peel-Certificate": base64.b64encode(chain_pem).decode(),
            "Peel-Proof": f"{timestamp}:{signature}"}


def verify(ca_dir: Path, headers: Mapping[str, str], method: str, target: str, body: bytes, *,
           now: datetime) -> tuple[SpiffeId, x509.Certificate]:
    """The caller's identity and certificate, or `ProofRefused` (or `CaError`) saying why not
    (module docstring). Revocations are the caller's to check (they travel with config versions).

    `headers` are looked up by lower-case name (starlette's `Headers` does so)."""
    chain_b64, signed = headers.get(CERTIFICATE_HEADER), headers.get(PROOF_HEADER)
    if not chain_b64 or not signed:
        raise ProofRefused("this path is authenticated by the caller's certificate: it needs the "
                           "Peel-Certificate and Peel-Proof headers (a joined gateway sends them)")
    try:
        chain_pem = base64.b64decode(chain_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ProofRefused("Peel-Certificate is not base64") from None
    stamp, _, signature = signed.partition(":")
    if not stamp.isdigit() or not signature:
        raise ProofRefused("Peel-Proof must be <unix seconds>:<signature>")
    leaf = load_chain(chain_pem)[0]
    ca = CertificateAuthority.open(ca_dir)
    Issuer._check_current(ca, leaf, now)
    uris = certs.uri_names(leaf)
    if uris is None or len(uris) != 1:
        raise ProofRefused("the certificate does not carry exactly one SPIFFE ID")
    try:
        identity = parse(uris[0])
    except IdentityError as exc:
        raise ProofRefused(f"the certificate is not a workload certificate: {exc}") from None
    if identity.trust_domain != ca.trust_domain or identity.service is None:
        raise ProofRefused(f"the certificate's identity {identity} is not a service of the trust domain "
                           f"{ca.trust_domain}")
    proof.verify(leaf.public_key(), signature, payload(method, target, body), int(stamp),
                 now=now.timestamp(), context=CONTEXT)
    return identity, leaf


def call(state: State, method: str, path: str, body: dict[str, Any] | None = None, *,
         cafile: str | None = None, timeout: float = TIMEOUT, now: Callable[[], float] = time.time,
         opened: Callable[[http.client.HTTPConnection], None] | None = None,
         ) -> tuple[int, dict[str, Any] | None]:
    """Send a signed request to the control plane `state` joined; (status, JSON answer or None).

    https only, except to a loopback address (as `join.post`); 200 and 304 are answers, any other
    status is `ControlError` with the problem's code, a failure to connect `ControlUnreachable`.
    `opened(conn)` is told the connection before the request goes out, so that another thread can
    end a long poll (`abort`)."""
    url = urlsplit(state.control)
    host = url.hostname or ""
    if url.scheme not in ("http", "https") or not host or (url.scheme == "http" and not is_loopback(host)):
        raise ControlError(f"the control plane {state.control!r} is not an https:// admin API URL")
    target = url.path.rstrip("/") + path
    data = b"" if body is None else json.dumps(body).encode()
    headers = {"Accept": "application/json", **sign(state.key, certs.cert_pem(*state.chain), method,
                                                     target, data, timestamp=int(now()))}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn: http.client.HTTPConnection
    try:
        if url.scheme == "https":
            conn = http.client.HTTPSConnection(host, url.port, timeout=timeout, context=_context(cafile))
        else:
            conn = http.client.HTTPConnection(host, url.port, timeout=timeout)
    except ValueError:
        raise ControlError(f"the control plane {state.control!r} has a bad port") from None
    if opened is not None:
        opened(conn)
    try:
        conn.request(method, target, data if body is not None else None, headers)
        response = conn.getresponse()
        raw = response.read(MAX_ANSWER + 1)
        status = response.status
    except ssl.SSLCertVerificationError as exc:
        raise ControlUnreachable(f"the control plane's certificate does not verify ({exc.verify_message}):"
                                 " set [identity] control_cacert") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ControlUnreachable(f"cannot reach the control plane at {state.control}: {exc}") from None
    finally:
        conn.close()
    if status == 304:
        return status, None
    if len(raw) > MAX_ANSWER:
        raise ControlUnreachable(f"the control plane's answer is larger than {MAX_ANSWER} bytes")
    try:
        answer = json.loads(raw)
    except ValueError:
        raise ControlUnreachable(f"the control plane at {state.control} answered {status} with a body "
                                 "that is not JSON (is it Peel's admin API?)") from None
    if status != 200 or not isinstance(answer, dict):
        detail = answer.get("detail", "") if isinstance(answer, dict) else ""
        code = answer.get("code", "") if isinstance(answer, dict) else ""
        raise ControlError(f"the control plane refused ({status} {code}): {detail}", status=status,
                           code=str(code))
    return status, answer


def abort(conn: http.client.HTTPConnection) -> None:
    """End `conn`'s request now, from any thread: its reader sees the connection closed."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
