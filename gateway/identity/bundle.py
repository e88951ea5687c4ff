"""This process's identity: its key, certificate and trust bundle from `[identity] state_dir`.

    bundle = IdentityBundle(state_dir)        # ConfigError naming identity.state_dir if unusable
    bundle.server_context(strict=True)        # the inbound listener's context for a new connection
    bundle.client_context()                   # the context of an mTLS dial to a peer's inbound
    await bundle.watch()                      # reload when the files change (and reload() on SIGHUP)
    bundle.refresh(why="renewed")             # the same check at once (this process just renewed)

`peel join` and renewal (`gateway.identity`'s writers) keep these files in the state directory,
each replaced atomically: `key.pem` (0600), `cert.pem` (the leaf, then the intermediate),
`bundle.pem` (the trusted roots, two during a root rotation) and `identity.json` (`spiffe_id`,
`serial`, `not_before`, `not_after`, `control`). This module only reads them.

The files are looked at every `POLL_SECONDS`, and every `URGENT_POLL_SECONDS` within
`URGENT_WITHIN` seconds of the loaded certificate's expiry: a renewal that came late (a stalled
machine, a control plane that was down) is presented by every worker before the old certificate
expires, not up to 2 s after (the worker that renewed loads it at once: `refresh`).

Contexts are built whole off to the side and swapped in one assignment (`_Loaded`); a connection
gets the context current when it was accepted or dialled and keeps it, so a renewal drops nothing.
The inbound listener passes the context per accepted connection (`gateway.edge.inbound`), which
is why no SNI-callback switch is needed here, unlike the public listener (`gateway.edge.tls`),
whose one context uvicorn takes once. A renewal caught half-written (a new key with the old
certificate) is refused whole and retried at the next poll: the running identity stays.

Server contexts: TLS 1.2 and 1.3 with the edge's cipher list, ALPN http/1.1, client certificates
verified against `bundle.pem`: `CERT_OPTIONAL` (permissive: a client may present none, but one it
presents must verify) or `CERT_REQUIRED` (strict). Client context: the chain must verify against
`bundle.pem`; the name is not a host name but a SPIFFE ID, so `check_hostname` is off and the dialer
compares the peer's URI SAN with the service's expected identity after the handshake
(`gateway.upstream.dial`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.core.errors import ConfigError
from gateway.identity.errors import BadSpiffeId
from gateway.identity.spiffe import SpiffeId, parse

log = logging.getLogger("peel.identity")

KEY_FILE, CERT_FILE, BUNDLE_FILE, INFO_FILE = "key.pem", "cert.pem", "bundle.pem", "identity.json"
FILES = (KEY_FILE, CERT_FILE, BUNDLE_FILE, INFO_FILE)
POLL_SECONDS = 2.0
# In the last seconds of the loaded certificate's life (and the first after it), the files are
# looked at 8 times as often: another worker's late renewal is presented within a quarter second.
URGENT_POLL_SECONDS = 0.25
URGENT_WITHIN = 10.0
SETTING = "identity.state_dir"

Signature = tuple[tuple[str, int, int, int] | tuple[str, None, None, None], ...]


def signature(directory: Path) -> Signature:
    out: list[tuple[str, int, int, int] | tuple[str, None, None, None]] = []
    for name in FILES:
        try:
            st = os.stat(directory / name)
        except OSError:
            out.append((name, None, None, None))
        else:
            out.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def exists(state_dir: str) -> bool:
    """Whether `state_dir` holds an identity (its certificate and key)."""
    directory = Path(state_dir)
    return (directory / CERT_FILE).is_file() and (directory / KEY_FILE).is_file()


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The SPIFFE ID of the verified certificate the peer of `ssl_object` presented, else None.

    The parsed form of `getpeercert()` is used: it is filled only for a certificate that OpenSSL
    verified, and reading the URI SAN from it costs no DER parsing. An X509-SVID has exactly one
    URI SAN; a certificate with none, several, or one that is not a SPIFFE ID has no identity.
    """
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    names: Any = cert.get("subjectAltName", ())
    uris = [pair[1] for pair in names if pair[0] == "URI"]
    if len(uris) != 1:
        return None
    try:
        return str(parse(str(uris[0])))
    except BadSpiffeId:
        return None


@dataclass(frozen=True, slots=True)
class _Loaded:
    identity: SpiffeId
    not_after: str
    optional: ssl.SSLContext
    required: ssl.SSLContext
    client: ssl.SSLContext
    signature: Signature
    expires: float | None  # `not_after` as a Unix time, read once (None: unknown)


def _server(directory: Path, verify: ssl.VerifyMode) -> ssl.SSLContext:
    # The public listener's protocol settings (gateway.edge.tls.server_context, above this package):
    # TLS 1.2 and 1.3, ECDHE with AEAD for 1.2, ALPN http/1.1, no renegotiation or compression.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    context.set_alpn_protocols(["http/1.1"])
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.verify_mode = verify
    context.load_verify_locations(str(directory / BUNDLE_FILE))
    context.load_cert_chain(str(directory / CERT_FILE), str(directory / KEY_FILE))
    return context


def load(directory: Path) -> _Loaded:
    """Read and check the identity files of `directory`; `ConfigError` says what is wrong."""
    before = signature(directory)
    for name in FILES:
        if not (directory / name).is_file():
            raise ConfigError(SETTING, f"{directory / name} is missing (run `peel join`)")
    try:
        info = json.loads((directory / INFO_FILE).read_text("utf-8"))
        identity = parse(info["spiffe_id"])
        not_after = str(info.get("not_after", ""))
    except (OSError, ValueError, KeyError, TypeError, BadSpiffeId) as exc:
        raise ConfigError(SETTING, f"{directory / INFO_FILE} is not usable: {exc}") from None
    try:
        optional = _server(directory, ssl.CERT_OPTIONAL)
        required = _server(directory, ssl.CERT_REQUIRED)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.minimum_version = ssl.TLSVersion.TLSv1_2
        # The peer is named by a SPIFFE ID, not a host: the dialer compares its URI SAN after the
        # handshake. The chain is verified against the bundle either way.
        client.check_hostname = False
        client.verify_mode = ssl.CERT_REQUIRED
        client.set_alpn_protocols(["http/1.1"])
        client.load_verify_locations(str(directory / BUNDLE_FILE))
        client.load_cert_chain(str(directory / CERT_FILE), str(directory / KEY_FILE))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(SETTING, f"OpenSSL refused the identity in {directory}: {exc}") from None
    try:
        expires: float | None = datetime.fromisoformat(not_after).timestamp()
    except ValueError:
        expires = None
    return _Loaded(identity, not_after, optional, required, client, before, expires)


class IdentityBundle:
    """This gateway's identity from `state_dir`, with its TLS contexts (module docstring)."""

    def __init__(self, state_dir: str) -> None:
        self.directory = Path(state_dir)
        self._loaded = load(self.directory)
        self._refused: Signature | None = None
        log.info("identity %s loaded from %s (until %s)", self.identity, self.directory,
                 self._loaded.not_after or "?")

    @property
    def identity(self) -> SpiffeId:
        return self._loaded.identity

    def server_context(self, *, strict: bool) -> ssl.SSLContext:
        """The context for a connection accepted now: client certificates required or optional."""
        loaded = self._loaded
        return loaded.required if strict else loaded.optional

    def client_context(self) -> ssl.SSLContext:
        """The context for an mTLS dial made now (presents this gateway's certificate)."""
        return self._loaded.client

    def changed(self) -> bool:
        now = signature(self.directory)
        return now != self._loaded.signature and now != self._refused

    @property
    def not_after(self) -> str:
        """The loaded certificate's expiry as `identity.json` gives it (ISO 8601; empty if unknown)."""
        return self._loaded.not_after

    def next_poll(self, interval: float = POLL_SECONDS, now: float | None = None) -> float:
        """Seconds until the files are looked at again (module docstring)."""
        expires = self._loaded.expires
        if expires is None:
            return interval
        left = expires - (time.time() if now is None else now)
        return min(interval, URGENT_POLL_SECONDS) if -URGENT_WITHIN < left < URGENT_WITHIN else interval

    def refresh(self, *, why: str) -> bool:
        """Reload if the files changed since the last load (and differ from a refused state)."""
        return self.changed() and self.reload(why=why)

    def reload(self, *, why: str = "SIGHUP") -> bool:
        """Load the files again and swap them in; on any error keep the running identity."""
        seen = signature(self.directory)  # refused as seen before the load: a later change is retried
        try:
            fresh = load(self.directory)
        except ConfigError as exc:
            self._refused = seen
            log.error("%s: identity files refused, keeping the running identity: %s", why, exc)
            return False
        self._loaded, self._refused = fresh, None
        log.info("%s: identity %s reloaded (until %s)", why, fresh.identity, fresh.not_after or "?")
        return True

    async def watch(self, interval: float = POLL_SECONDS) -> None:
        """Reload when the files change; runs until cancelled."""
        while True:
            await asyncio.sleep(self.next_poll(interval))
            self.refresh(why="identity files changed")


__all__ = ["FILES", "IdentityBundle", "exists", "load", "peer_identity"]
