"""TLS on a listener: certificates from files, chosen by SNI, replaced without dropping a connection.

One listener has one `TlsListener`. Its `context` is the `ssl.SSLContext` the listening socket was
created with (uvicorn takes it once, from `factory`); it never changes. It carries what OpenSSL
reads from the context a connection started on: the protocol versions (1.2 and 1.3 only, or 1.3
only), the TLS 1.2 cipher list (ECDHE with AES-GCM or ChaCha20-Poly1305: forward secrecy and AEAD
only; TLS 1.3's suites are all of that kind), ALPN `http/1.1`, and the session-ticket keys, so
resumption keeps working across certificate reloads. Each configured certificate has a context of
its own; the listener's `sni_callback` runs on every handshake (with or without SNI) and moves the
connection to the context of the certificate that names the requested host: an exact DNS name of a
certificate's subjectAltName first, then a wildcard (`*.example.com` names one label under
example.com), then the first certificate, the default.

Reload: `reload()` (SIGHUP) or `watch()` (when a file's mtime, size or inode changes: a poll every
`POLL_SECONDS`) builds a whole new `CertificateSet` off to the side and swaps it in one assignment.
Handshakes after the swap get the new certificates; a connection already established keeps its
session and is never touched. A set that fails to load (unreadable file, not PEM, a key that does
not match its certificate) is refused whole and the running one stays, with the error logged; at
start the same error is a `ConfigError` naming the setting (`listeners.public.tls_certificates[1]
.key`), which stops `peel serve`. An expired (or not yet valid) certificate is loaded with a warning:
refusing to start would turn a renewal that came late into an outage of every other host.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography import x509

from gateway.core.errors import ConfigError
from gateway.core.settings import ListenerSettings, TlsCertificateSettings

log = logging.getLogger("peel.tls")

#: TLS 1.2 suites: ECDHE key exchange (forward secrecy) with an AEAD cipher; either signature kind.
CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20"
ALPN = ("http/1.1",)
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
POLL_SECONDS = 2.0

#: (path, mtime_ns, size, inode) of each certificate and key file, None for one that is missing.
Signature = tuple[tuple[str, int, int, int] | tuple[str, None, None, None], ...]


def server_context(min_version: str) -> ssl.SSLContext:
    """A server context with Peel's protocol settings and no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[min_version]
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.set_ciphers(CIPHERS_TLS12)
    context.set_alpn_protocols(list(ALPN))
    # No renegotiation (a DoS lever, and gone in 1.3) and no compression (CRIME); both are also
    # OpenSSL 3's defaults, set here so an older library cannot differ.
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    return context


@dataclass(frozen=True, slots=True)
class Certificate:
    """One loaded certificate: its setting's name, the DNS names it serves, its context."""

    setting: str
    names: tuple[str, ...]
    not_after: datetime.datetime
    context: ssl.SSLContext


@dataclass(frozen=True, slots=True)
class CertificateSet:
    """The certificates of a listener at one moment; immutable, swapped whole on reload."""

    certificates: tuple[Certificate, ...]
    exact: Mapping[str, ssl.SSLContext]
    # "example.com" for a certificate naming "*.example.com"
    wildcard: Mapping[str, ssl.SSLContext]
    signature: Signature

    @property
    def default(self) -> ssl.SSLContext:
        return self.certificates[0].context

    def choose(self, server_name: str | None) -> ssl.SSLContext:
        """The context of the certificate for `server_name` (the SNI host; None: none sent)."""
        if not server_name:
            return self.default
        name = server_name.lower().removesuffix(".")
        found = self.exact.get(name)
        if found is not None:
            return found
        label, _, parent = name.partition(".")
        if label and parent:
            found = self.wildcard.get(parent)
            if found is not None:
                return found
        return self.default


def signature(pairs: tuple[TlsCertificateSettings, ...]) -> Signature:
    out: list[Any] = []
    for pair in pairs:
        for path in (pair.cert, pair.key):
            try:
                st = os.stat(path)
            except OSError:
                out.append((path, None, None, None))
            else:
                out.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def _read(path: str, setting: str, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(setting, f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def _names(leaf: x509.Certificate) -> tuple[str, ...]:
    """The DNS names of the subjectAltName, lower-case; the common name only when there is no SAN."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        common = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(attr.value).lower() for attr in common)
    return tuple(name.lower().removesuffix(".") for name in san.get_values_for_type(x509.DNSName))


def load_certificate(pair: TlsCertificateSettings, setting: str, min_version: str,
                     now: datetime.datetime | None = None) -> Certificate:
    """Read, check and load one certificate and its key; `ConfigError` naming `setting.cert` or
    `setting.key` for what is wrong."""
    # cryptography is loaded only by a process that serves TLS: it costs every other one ~15 MiB.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_key, key_key = f"{setting}.cert", f"{setting}.key"
    cert_pem = _read(pair.cert, cert_key, "certificate")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ConfigError(cert_key, f"{pair.cert} holds no PEM certificate") from None
    leaf = chain[0]
    key_pem = _read(pair.key, key_key, "key")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError(key_key, f"{pair.key} is encrypted; Peel reads unencrypted keys "
                          "(keep the file 0600, readable by Peel's user only)") from None
    except (ValueError, x509.UnsupportedGeneralNameType) as exc:
        raise ConfigError(key_key, f"{pair.key} holds no PEM private key ({exc})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, public)
            != leaf.public_key().public_bytes(serialization.Encoding.DER, public)):
        raise ConfigError(key_key, f"{pair.key} is not the key of the certificate in {pair.cert}")
    context = server_context(min_version)
    try:
        context.load_cert_chain(pair.cert, pair.key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(key_key, f"OpenSSL refused {pair.cert} with {pair.key}: {exc}") from None
    try:
        names = _names(leaf)
    except ValueError as exc:  # cryptography parses the extensions when first read
        raise ConfigError(cert_key, f"the certificate in {pair.cert} has extensions that do not "
                          f"parse: {exc}") from None
    now = now or datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc <= now:
        log.warning("%s: the certificate in %s (%s) expired on %s; serving it anyway: clients will "
                    "refuse it", cert_key, pair.cert, ", ".join(names) or "no DNS name",
                    leaf.not_valid_after_utc.isoformat())
    elif leaf.not_valid_before_utc > now:
        log.warning("%s: the certificate in %s is not valid before %s", cert_key, pair.cert,
                    leaf.not_valid_before_utc.isoformat())
    return Certificate(setting, names, leaf.not_valid_after_utc, context)


def load_certificates(listener: ListenerSettings, key: str) -> CertificateSet:
    """Every certificate of `listener` (whose settings key is `key`, e.g. `listeners.public`)."""
    pairs = listener.tls_certificates
    if not pairs:
        raise ConfigError(f"{key}.tls_certificates", "no certificate")
    before = signature(pairs)
    loaded = tuple(load_certificate(pair, f"{key}.tls_certificates[{i}]", listener.tls_min_version)
                   for i, pair in enumerate(pairs))
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    for cert in loaded:
        for name in cert.names:
            if name.startswith("*."):
                wildcard.setdefault(name[2:], cert.context)
            else:
                exact.setdefault(name, cert.context)  # the first certificate naming a host wins
    return CertificateSet(loaded, exact, wildcard, before)


class TlsListener:
    """The TLS side of one listener: its fixed listening context and the current certificates.

    Raises `ConfigError` when the certificates cannot be loaded. Pass `factory` to
    `uvicorn_config(ssl_context_factory=...)`.
    """

    def __init__(self, listener: ListenerSettings, key: str) -> None:
        self.key = key
        self.settings = listener
        self.certificates = load_certificates(listener, key)
        self.context = server_context(listener.tls_min_version)
        # The listening context serves no certificate itself (`_select` always moves a handshake
        # to a certificate's context), but holds the default one should a handshake skip the
        # callback.
        first = listener.tls_certificates[0]
        self.context.load_cert_chain(first.cert, first.key)
        self.context.sni_callback = self._select
        self._refused: Signature | None = None

    def factory(self, config: object, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        """uvicorn's `ssl_context_factory`: the listening context (uvicorn's default is unused)."""
        return self.context

    def _select(self, connection: ssl.SSLObject, server_name: str | None,
                context: ssl.SSLContext) -> None:
        chosen = self.certificates.choose(server_name)
        if chosen is not context:
            connection.context = chosen

    def reload(self, listener: ListenerSettings | None = None, *, why: str = "SIGHUP") -> bool:
        """Load the certificates of `listener` (default: the running settings) and swap them in;
        on any error keep the running ones and log it. True when swapped."""
        listener = listener or self.settings
        if not listener.tls:
            log.error("%s: %s: turning TLS off needs a restart; still serving TLS", why, self.key)
            return False
        try:
            fresh = load_certificates(listener, self.key)
        except ConfigError as exc:
            self._refused = signature(listener.tls_certificates)
            log.error("%s: certificates refused, keeping the running ones: %s", why, exc)
            return False
        # The listening context decides the protocol versions of new handshakes.
        self.context.minimum_version = VERSIONS[listener.tls_min_version]
        self.settings, self.certificates, self._refused = listener, fresh, None
        log.info("%s: %s certificates loaded (%s)", why, self.key, "; ".join(
            f"{', '.join(cert.names) or 'no DNS name'} until {cert.not_after:%Y-%m-%d}"
            for cert in fresh.certificates))
        return True

    def changed(self) -> bool:
        """Whether a certificate or key file differs from the loaded (or last refused) one."""
        now = signature(self.settings.tls_certificates)
        return now != self.certificates.signature and now != self._refused

    async def watch(self, interval: float = POLL_SECONDS) -> None:
        """Reload when the files change; runs until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if self.changed():
                self.reload(why="certificate files changed")
