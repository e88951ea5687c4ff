"""The one place that opens upstream connections: TCP, plain or TLS, for every caller.

    dialer = Dialer(tls=<TlsFactory or None>)      # one per process: pool.dialer
    holder.follow(dialer.tls.update)               # load each service's TLS files per table
    transport, protocol = await dialer.open(endpoint, protocol_factory, timeout=5.0)

The upstream pool (HTTP exchanges), the WebSocket upstream leg and the active health checks all
dial through a `Dialer`, so a check trusts exactly what a request does and the TLS of an endpoint
is decided in one place (the mTLS client identity lands here and nowhere else). Tests hand a fake
dialer (an in-memory upstream, `tests/fakes/upstream.py`) to the pool instead of real sockets.

TLS, in order: a caller-supplied `TlsFactory` (tests, later the mesh identity) wins when it gives a
context, and decides alone for a plain-http endpoint; an endpoint whose service has a `tls` policy
(`routes.policies.ServiceTls`, carried by `Endpoint.tls`) gets that policy's context; any other
https endpoint gets the system's verifying context, made once when first needed. Every context
verifies the certificate chain and the name: there is no way to turn that off.

A service's context is built from its files in this process (the admin API that accepted the
document may run on another machine; it checked only the paths' shape), once per distinct policy
and file contents, never per connection: `update(table)` (a table follower) loads the files of
every policy in a new table, and a dial re-reads a policy's files when they were last read more
than `RECHECK` seconds ago, rebuilding the context only when their SHA-256 fingerprint changed.
Files that cannot be loaded fail that service's dials with `UpstreamTlsConfig` (502
`upstream-tls-config`), and only its dials: the rest of the table keeps serving. Files that turn
bad after a good load (a rotation caught half-written) keep the last good context, with an error
logged, until they load again.

Upstream mTLS (`docs/mtls.md`): a service that declares `identity: spiffe://<td>/svc/<name>` (its
endpoints are peer gateways' inbound listeners) is dialled with this gateway's identity
(`identity`, an `IdentityBundle`): its certificate is presented and the peer's chain verified
against the trust bundle. The peer is named by that SPIFFE ID, not a host name, so the context does
not check host names; after the handshake the peer certificate's URI SAN must equal the expected
ID, else the connection is closed and the dial fails with `UpstreamIdentityMismatch` (502
`upstream-identity-mismatch`). Without an identity in this process such a dial fails with 502
`upstream-tls-config`. A peer whose certificate the table's `revocations` refuse is closed too
(`UpstreamTlsError`, 502 `upstream-tls-failed`, the detail naming the revocation), and a table that
revokes the certificate of a peer already connected closes those connections, pooled or in use.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

from gateway.core.errors import (
    ConnectError,
    UpstreamIdentityMismatch,
    UpstreamTimeout,
    UpstreamTlsConfig,
    UpstreamTlsError,
)
from gateway.identity.bundle import IdentityBundle, peer_identity
from gateway.identity.revocation import CertFacts, describe, peer_facts, revoked_peer
from routes.model import Endpoint
from routes.policies import ServiceTls
from routes.revocations import NO_REVOCATIONS, Revocations
from routes.table import RouteTable

log = logging.getLogger("peel.upstream.tls")

# The TLS context of an endpoint (None: plain TCP, or for https "use the system's").
TlsFactory = Callable[[Endpoint], "ssl.SSLContext | None"]
# Seconds between two reads of a policy's files by the dial path (a table swap always reads them).
RECHECK = 10.0
# A PEM file larger than this is not a certificate bundle (a mistyped path to a log or an image).
MAX_PEM = 4 * 1024 * 1024
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

P = TypeVar("P", bound=asyncio.BaseProtocol)


def ssl_context_for(endpoint: Endpoint, factory: TlsFactory | None,
                    default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext | None:
    """The TLS context for `endpoint` (None: plain TCP); `default()` gives the verifying one.

    The factory wins when it gives a context (or for a plain-http endpoint); an https endpoint it
    has no context for gets the default verifying context.
    """
    if factory is not None:
        context = factory(endpoint)
        if context is not None or endpoint.scheme != "https":
            return context
    return default() if endpoint.scheme == "https" else None


def server_name(endpoint: Endpoint) -> str:
    """The SNI sent to `endpoint` and the name its certificate must carry: the service's
    `tls.server_name`, else the endpoint's host (for an IP address no SNI goes out, RFC 6066, and
    the certificate must carry the address)."""
    policy = endpoint.tls
    if policy is not None and policy.server_name is not None:
        return policy.server_name
    return endpoint.host


def _read_pem(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_PEM:
        raise ValueError(f"{what} {path} is larger than {MAX_PEM} bytes: not a PEM file")
    if b"-----BEGIN " not in data:
        raise ValueError(f"{what} {path} is not a PEM file (no -----BEGIN line)")
    return data


def _no_passphrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise ValueError("the key is encrypted; give an unencrypted key (mode 0600)")


def read_files(policy: ServiceTls) -> tuple[bytes, dict[str, bytes]]:
    """The fingerprint of a policy's settings and file contents, and the contents by path.

    ValueError naming the file when one cannot be read or is not PEM.
    """
    digest = hashlib.sha256(repr((policy.min_version, policy.files())).encode())
    contents: dict[str, bytes] = {}
    for path, what in ((policy.ca, "ca"), (policy.client_cert, "client_cert"),
                       (policy.client_key, "client_key")):
        if path is not None:
            data = contents[path] = contents.get(path) or _read_pem(path, what)
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
    return digest.digest(), contents


def build_context(policy: ServiceTls, contents: dict[str, bytes]) -> ssl.SSLContext:
    """The verifying client context of a policy from its files' contents (`read_files`).

    ValueError naming the file when OpenSSL refuses one.
    """
    if policy.ca is not None:
        try:
            context = ssl.create_default_context(cadata=contents[policy.ca].decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"ca {policy.ca} holds no usable PEM certificate: {exc}") from exc
    else:
        context = ssl.create_default_context()
    # create_default_context verifies the chain and the name; said again so that no edit above
    # can silently loosen it.
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.minimum_version = _VERSIONS[policy.min_version]
    if policy.client_cert is not None:
        try:
            # OpenSSL reads these by path only; the fingerprint was taken from the same files (a
            # change in between is seen as a changed fingerprint at the next read).
            context.load_cert_chain(policy.client_cert, policy.client_key, password=_no_passphrase)
        except (OSError, ValueError) as exc:
            pair = policy.client_cert + (f" + {policy.client_key}" if policy.client_key else "")
            raise ValueError(f"client certificate {pair}: {getattr(exc, 'reason', None) or exc}") from exc
    return context


@dataclass(slots=True)
class _Loaded:
    """What a policy's files gave at the last read: a context or why not, and when."""

    fingerprint: bytes
    context: ssl.SSLContext | None
    error: str | None
    read_at: float


class UpstreamTls:
    """Chooses the TLS context of each endpoint (see the module docstring) and keeps the contexts
    of the services' `tls` policies.

    Called once per new upstream connection (never per request on a kept-alive one). `clock` is
    for the `RECHECK` interval (tests inject one).
    """

    __slots__ = ("_by_fingerprint", "_clock", "_default", "_factory", "_loaded", "_peers", "identity",
                 "revocations")

    def __init__(self, factory: TlsFactory | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._factory = factory
        self._clock = clock
        # this gateway's identity, for services that declare the identity of their peers
        self.identity: IdentityBundle | None = None
        # the revoked certificates of the current table: an mTLS peer presenting one is refused
        self.revocations: Revocations = NO_REVOCATIONS
        # open mTLS connections to peer gateways with their certificates: a table that revokes one
        # closes it (pooled or in use); closed ones are pruned as the map grows
        self._peers: dict[asyncio.BaseTransport, CertFacts] = {}
        self._default: ssl.SSLContext | None = None
        self._loaded: dict[ServiceTls, _Loaded] = {}
        # one context per distinct policy settings and file contents, shared by equal ones
        self._by_fingerprint: dict[bytes, ssl.SSLContext] = {}

    def context_for(self, endpoint: Endpoint) -> ssl.SSLContext | None:
        """The TLS context for `endpoint`, or None for plain TCP.

        `UpstreamTlsConfig` when its service's TLS files could not be loaded in this process.
        """
        policy = endpoint.tls
        if policy is None:
            return ssl_context_for(endpoint, self._factory, self._default_context)
        if policy.identity is not None:
            if self.identity is None:
                raise UpstreamTlsConfig(f"the service expects the identity {policy.identity}, and "
                                        "this gateway has none (identity.state_dir: run `peel join`)")
            return self.identity.client_context()
        return ssl_context_for(endpoint, self._factory, lambda: self._service_context(policy))

    def update(self, table: RouteTable) -> None:
        """A table follower: load the files of every `tls` policy in `table` now (so a bad file is
        logged when the table arrives, not at the first request) and forget the policies it no
        longer has."""
        if table.revocations != self.revocations:
            self.revocations = table.revocations
            self.close_revoked()
        self.refresh(s.tls for s in table.services.values() if s.tls is not None)

    def track(self, transport: asyncio.BaseTransport) -> None:
        """Remember an mTLS connection's peer certificate for the revocations still to come."""
        facts = peer_facts(transport.get_extra_info("ssl_object"))
        if facts is None:
            return
        if len(self._peers) >= 256 and len(self._peers) & 255 == 0:
            self._peers = {t: f for t, f in self._peers.items() if not t.is_closing()}
        self._peers[transport] = facts

    def close_revoked(self) -> int:
        """Close the open mTLS connections whose peer certificate is now revoked."""
        closed = 0
        for transport, facts in list(self._peers.items()):
            if transport.is_closing():
                del self._peers[transport]
            elif (found := facts.refused_by(self.revocations)) is not None:
                log.warning("closing an upstream mTLS connection to %s: %s",
                            facts.identity or facts.serial, describe(found))
                del self._peers[transport]
                cast(asyncio.Transport, transport).abort()
                closed += 1
        return closed

    def refresh(self, policies: Iterable[ServiceTls]) -> None:
        """Read the files of `policies` now and keep only their contexts."""
        wanted = set(policies)
        for gone in [p for p in self._loaded if p not in wanted]:
            del self._loaded[gone]
        for policy in wanted:
            self._load(policy)
        used = {loaded.fingerprint for loaded in self._loaded.values()}
        for fingerprint in [f for f in self._by_fingerprint if f not in used]:
            del self._by_fingerprint[fingerprint]

    def _service_context(self, policy: ServiceTls) -> ssl.SSLContext:
        loaded = self._loaded.get(policy)
        if loaded is None or self._clock() - loaded.read_at >= RECHECK:
            loaded = self._load(policy)
        if loaded.context is None:
            raise UpstreamTlsConfig(f"the upstream TLS files cannot be used: {loaded.error}")
        return loaded.context

    def _load(self, policy: ServiceTls) -> _Loaded:
        """Read the policy's files; rebuild its context only when their fingerprint changed."""
        now = self._clock()
        before = self._loaded.get(policy)
        try:
            fingerprint, contents = read_files(policy)
            if before is not None and before.fingerprint == fingerprint and before.error is None:
                before.read_at = now
                return before
            context = self._by_fingerprint.get(fingerprint)
            if context is None:
                context = self._by_fingerprint[fingerprint] = build_context(policy, contents)
            loaded = _Loaded(fingerprint, context, None, now)
            if before is not None:
                log.info("upstream TLS files changed, new context in use: %s", ", ".join(policy.files()))
        except ValueError as exc:
            error = str(exc)
            if before is not None and before.context is not None:
                # Keep serving with the last good files (a rotation half written, a file briefly
                # missing), and say so once per distinct error.
                if before.error != error:
                    log.error("upstream TLS files cannot be loaded, the previous ones stay in use: %s",
                              error)
                loaded = _Loaded(before.fingerprint, before.context, error, now)
            else:
                if before is None or before.error != error:
                    log.error("upstream TLS files cannot be loaded; the service's https endpoints "
                              "answer 502 upstream-tls-config until they can: %s", error)
                loaded = _Loaded(b"", None, error, now)
        self._loaded[policy] = loaded
        return loaded

    def _default_context(self) -> ssl.SSLContext:
        # Made on first use: loading the system's CA store costs milliseconds, and most
        # deployments have no https upstream at all.
        if self._default is None:
            self._default = ssl.create_default_context()
        return self._default


class Dial(Protocol):
    """What the callers need from a dialer (the real `Dialer`, or a test's fake)."""

    async def open(self, endpoint: Endpoint, protocol_factory: Callable[[], P], *,
                   timeout: float | None) -> tuple[asyncio.Transport, P]: ...


class Dialer:
    """Opens TCP connections to endpoints, with TLS per `UpstreamTls` (see the module docstring).

    `open` raises `ConnectError` when the endpoint cannot be reached (the `OSError` is its
    `__cause__`), `UpstreamTlsError` when the TLS handshake fails (an untrusted certificate, a
    wrong name; the `ssl.SSLError` is its cause), `UpstreamTlsConfig` when the service's TLS files
    cannot be loaded, and `UpstreamTimeout` when `timeout` seconds pass first.
    """

    __slots__ = ("tls",)

    def __init__(self, tls: TlsFactory | None = None) -> None:
        self.tls = UpstreamTls(tls)

    async def open(self, endpoint: Endpoint, protocol_factory: Callable[[], P], *,
                   timeout: float | None) -> tuple[asyncio.Transport, P]:
        """A new connection to `endpoint` whose protocol `protocol_factory()` makes.

        `timeout`: seconds for the connect and the TLS handshake (None: no limit of its own, the
        caller's `asyncio.timeout` applies).
        """
        loop = asyncio.get_running_loop()
        context = self.tls.context_for(endpoint)
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    protocol_factory, endpoint.host, endpoint.port, ssl=context,
                    server_hostname=server_name(endpoint) if context is not None else None)
            expected = endpoint.tls.identity if endpoint.tls is not None else None
            if expected is not None:
                found = peer_identity(transport.get_extra_info("ssl_object"))
                if found != expected:
                    transport.abort()
                    raise UpstreamIdentityMismatch(f"{endpoint.url} presented the identity "
                                                   f"{found or 'none'}; the service expects {expected}")
                revoked = revoked_peer(self.tls.revocations, transport.get_extra_info("ssl_object"))
                if revoked is not None:
                    transport.abort()
                    raise UpstreamTlsError(f"TLS with {endpoint.url} refused: its certificate is "
                                           f"revoked ({describe(revoked)})")
                self.tls.track(transport)
        except TimeoutError as exc:
            if timeout is None:
                raise  # the caller's own timeout
            raise UpstreamTimeout(f"connecting to {endpoint.url} took longer than "
                                  f"{timeout:g} s") from exc
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamTlsError(f"TLS with {endpoint.url} failed: its certificate is not "
                                   f"trusted for {server_name(endpoint)!r}: "
                                   f"{exc.verify_message or exc.reason}") from exc
        except ssl.SSLError as exc:
            raise UpstreamTlsError(f"TLS with {endpoint.url} failed: {exc.reason or exc}") from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {endpoint.url}: {exc.strerror or exc}") from exc
        return transport, protocol


__all__ = ["RECHECK", "Dial", "Dialer", "TlsFactory", "UpstreamTls", "build_context", "read_files",
           "server_name", "ssl_context_for"]
