"""Header rules of the proxy leg (pure): hop-by-hop stripping, forwarded headers, request id.

Header lists are ASGI lists of `(name, value)` byte pairs with lower-case names (uvicorn gives
requests that way; `http1` parses upstream responses that way).

Forwarded headers (`X-Forwarded-For`, `-Proto`, `-Host` and RFC 7239 `Forwarded`) steer what
upstreams believe about the client, so they are only believed from configured networks
(`proxy.trusted_proxies`): from such a peer the chain is extended, from anyone else every
client-sent value is replaced by what Peel saw itself. The rest of that family, and the headers
other proxies use to tell an upstream who the client is, which URL or method it "really" asked for,
or who authenticated it (`X-Forwarded-Port`/`-Prefix`/`-Client-Cert`..., `X-Real-IP`, `Client-IP`,
`X-Original-URL`, `X-HTTP-Method-Override`, `X-SSL-Client-Verify`/`-DN`/`-Cert`, `Remote-User`...:
`CLIENT_CLAIMS`, `CLAIM_PREFIXES`), is dropped when an untrusted client sends it, under any
spelling with `_` for `-` too: an upstream that believes `X-Original-URL: /admin` on a request
Peel routed as `/public` would undo the path rules (`gateway/http/paths.py`), and one that
believes `X-SSL-Client-Verify: SUCCESS` would let anyone in.
"""

from __future__ import annotations

import binascii
import random
from collections.abc import Callable, Iterable
from typing import Final

from gateway.core.memo import remember
from gateway.core.trust import TrustedNetworks

Headers = list[tuple[bytes, bytes]]
_getrandbits: Final = random.getrandbits
_hexlify: Final = binascii.hexlify

# RFC 9110 section 7.6.1, plus the pre-standard Keep-Alive and Proxy-Connection, and `Proxy`: no
# HTTP header at all, but a CGI-style app reads it as its HTTP_PROXY variable (httpoxy), so it never
# reaches an upstream from any listener.
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"proxy-authorization", b"proxy",
})
_XFF: Final = b"x-forwarded-for"
_XFP: Final = b"x-forwarded-proto"
_XFH: Final = b"x-forwarded-host"
_FORWARDED: Final = b"forwarded"
_FORWARDING: Final = frozenset({_XFF, _XFP, _XFH, _FORWARDED})
# Claims that only a trusted proxy may make (every other `x-forwarded-*` too): who the client is
# (address), which URL or method it "really" asked for, and who it is (TLS client certificates and
# users a proxy in front authenticated). Read with "-" for "_": frameworks that map both to one
# variable (CGI/WSGI `HTTP_X_REAL_IP`, PHP) take `X_Real_IP` for `X-Real-IP`.
CLIENT_CLAIMS: Final = frozenset({
    # client address
    b"x-real-ip", b"x-client-ip", b"client-ip", b"true-client-ip", b"x-cluster-client-ip",
    b"cf-connecting-ip", b"fastly-client-ip", b"x-original-forwarded-for", b"x-forwarded",
    b"forwarded-for", b"x-originating-ip", b"x-remote-ip", b"x-remote-addr", b"x-proxyuser-ip",
    b"x-envoy-external-address", b"x-azure-clientip", b"x-appengine-user-ip",
    # URL and method
    b"x-original-url", b"x-original-uri", b"x-rewrite-url", b"x-envoy-original-path",
    b"x-original-method", b"x-http-method-override", b"x-http-method", b"x-method-override",
    # identity: TLS client certificates, authenticated users
    b"x-client-cert", b"x-client-verify", b"x-client-dn", b"x-arr-clientcert", b"remote-user",
    b"x-remote-user", b"x-authenticated-user", b"x-auth-request-user", b"x-auth-request-email",
    b"x-auth-request-preferred-username", b"x-auth-request-groups",
})
# Prefixes of claims: the forwarded family, and the TLS client fields proxies pass on
# (`X-SSL-Client-Verify`, `-DN`, `-S-DN`, `-Cert`, `SSL-Client-*`, `X-Client-SSL-*`).
CLAIM_PREFIXES: Final = (b"x-forwarded-", b"x-ssl-client-", b"ssl-client-", b"x-client-ssl-")
_MAX_REQUEST_ID: Final = 200
# Connection tokens that name no header (a field called "close" is legal but would be silly).
_NOT_NOMINATIONS: Final = frozenset({b"close", b"keep-alive", b""})
# Visible ASCII only: request ids end up in logs and in other systems' headers.
_VISIBLE: Final = bytes(range(0x21, 0x7F))


# What `ForwardingRules.upstream_request` does with a request header, by its name
# (`ForwardingRules._actions`, each name classified once): keep it, drop it as hop-by-hop (a
# Connection field's nominations read first), merge it into the forwarded headers Peel sets, drop
# it for Peel's own (Host, Expect, the request id), or keep it only from a trusted client (a claim).
_KEEP: Final = 0
_HOP: Final = 1
_CONNECTION: Final = 2
_FORWARDING_FIELD: Final = 3
_REPLACED: Final = 4
_CLAIM: Final = 5
# Entries a ForwardingRules remembers (bounded: hostile names and clients cannot grow them): header
# names (an int each), and clients' forwarded fields (four fields each: about 0.6 KB)
_REMEMBERED: Final = 4096
_CLIENTS_REMEMBERED: Final = 1024
# `Connection` values as clients and upstreams spell them, which nominate no header: read without
# a split. Each says whether it is `close` (else `keep-alive`).
PLAIN_CONNECTION: Final = {b"keep-alive": False, b"Keep-Alive": False, b"close": True, b"Close": True}


def is_claim(name: bytes) -> bool:
    """Whether a (lower-case) header name is one only a trusted proxy may send: `CLIENT_CLAIMS`,
    `CLAIM_PREFIXES`, or the forwarded headers themselves spelt with `_` (`x_forwarded_for`)."""
    if name in CLIENT_CLAIMS or name.startswith(CLAIM_PREFIXES):
        return True
    if b"_" not in name:
        return False
    dashed = name.replace(b"_", b"-")
    return dashed in CLIENT_CLAIMS or dashed in _FORWARDING or dashed.startswith(CLAIM_PREFIXES)


def new_request_id() -> bytes:
    """A fresh request id: 128 random bits as 32 hex characters.

    From the process's Mersenne Twister rather than os.urandom: a request id must be unique, not
    unguessable, and a getrandom() system call per request is measurable on the data plane. The
    generator is reseeded in every forked worker (`random` registers that at fork). Compiled,
    hexlify of the 16 bytes costs half of `b"%032x" %` (the same text, zero-padded).
    """
    return _hexlify(_getrandbits(128).to_bytes(16, "big"))


def valid_request_id(value: bytes) -> bool:
    return 0 < len(value) <= _MAX_REQUEST_ID and not value.translate(None, _VISIBLE)


def nominated(value: bytes) -> set[bytes]:
    """The header names a `Connection` value nominates as hop-by-hop."""
    return _add_nominated(None, value) or set()


def _add_nominated(extra: set[bytes] | None, value: bytes) -> set[bytes] | None:
    """`extra` plus the names the `Connection` value nominates; None while nothing is nominated.

    One call per `Connection` field, so the two single-pass header loops below share it without
    adding a call per header.
    """
    if value in PLAIN_CONNECTION:
        return extra
    names = {t.strip().lower() for t in value.split(b",")} - _NOT_NOMINATIONS
    if not names:
        return extra
    return names if extra is None else extra | names


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]], drop: tuple[bytes, ...] = ()) -> Headers:
    """Drop hop-by-hop headers, every header a `Connection` header nominates, and `drop`."""
    out: Headers = []
    extra: set[bytes] | None = None
    for name, value in headers:
        if name in HOP_BY_HOP:
            if name == b"connection":
                extra = _add_nominated(extra, value)
            continue
        if name in drop:
            continue
        out.append((name, value))
    if extra:
        out = [(n, v) for n, v in out if n not in extra]
    return out


def _forwarded_element(client: str, scheme: str, host: bytes | None) -> bytes:
    """This hop's `Forwarded` element (RFC 7239): for=, proto= and, with a Host, host=."""
    # RFC 7239 section 6: IPv6 nodes are bracketed and then need quoting.
    node = f'"[{client}]"' if ":" in client else client
    element = f"for={node};proto={scheme}"
    if host:
        quoted = host.decode("latin-1").replace("\\", "\\\\").replace('"', '\\"')
        element += f';host="{quoted}"'
    return element.encode("latin-1")


class ForwardingRules:
    """Builds the upstream request headers; the trusted networks are parsed once, at start.

    `request_id_header` is the header name that carries the request id (settings
    `proxy.request_id_header`). `trusts(client)` says whether the downstream peer at `client` may
    set forwarded headers (no `trusted_proxies`: nobody may).
    """

    __slots__ = ("_actions", "_own", "request_id_name", "trusts")

    trusts: Callable[[str | None], bool]

    def __init__(self, trusted_proxies: Iterable[str], request_id_header: str = "X-Request-Id") -> None:
        # The bound method itself, not a wrapper: one call per request, as an inline check would be.
        self.trusts = TrustedNetworks(trusted_proxies).contains
        self.request_id_name = request_id_header.lower().encode("ascii")
        self._actions: dict[bytes, int] = {}
        # the forwarded fields for an untrusted client, by (client, scheme, host)
        self._own: dict[tuple[str, str, bytes | None], tuple[tuple[bytes, bytes], ...]] = {}

    def request_id(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """The client's request id when it sent a valid one, else a new one."""
        rid_name = self.request_id_name
        for name, value in headers:
            if name == rid_name and valid_request_id(value):
                return value
        return new_request_id()

    def _action(self, name: bytes) -> int:
        """What `upstream_request` does with the header `name`, found once and remembered."""
        if name in HOP_BY_HOP:
            action = _CONNECTION if name == b"connection" else _HOP
        elif name in _FORWARDING:
            action = _FORWARDING_FIELD
        elif name == self.request_id_name or name == b"host" or name == b"expect":
            action = _REPLACED
        elif is_claim(name):
            action = _CLAIM
        else:
            action = _KEEP
        return remember(self._actions, name, action, _REMEMBERED)

    def _own_fields(self, client: str, scheme: str, host: bytes | None) -> tuple[tuple[bytes, bytes], ...]:
        """The forwarded fields for an untrusted `client`, built and remembered."""
        fields = [(_XFF, client.encode()), (_XFP, scheme.encode("ascii"))]
        if host:
            fields.append((_XFH, host))
        fields.append((_FORWARDED, _forwarded_element(client, scheme, host)))
        return remember(self._own, (client, scheme, host), tuple(fields), _CLIENTS_REMEMBERED)

    def upstream_request(self, headers: Headers, *, client: str | None,
                         scheme: str, host: bytes | None, request_id: bytes) -> Headers:
        """The headers to send upstream, before route edits and without Host (the caller's job).

        Strips hop-by-hop headers, `Host` and `Expect` (uvicorn answers `100-continue` itself),
        and any client-sent request id (`request_id` replaces it: see `request_id()`); sets or
        extends the forwarded headers. From an untrusted client, every claim (`is_claim`) is
        dropped too.
        """
        out: Headers = []
        extra: set[bytes] | None = None
        forwarded: dict[bytes, bytes] = {}
        rid_name = self.request_id_name
        trusted = self.trusts(client)
        actions = self._actions
        for pair in headers:
            name = pair[0]
            action = actions.get(name)
            if action is None:
                action = self._action(name)
            if action == _KEEP or (action == _CLAIM and trusted):
                out.append(pair)
            elif action == _FORWARDING_FIELD:
                if not trusted:
                    continue  # replaced below by what Peel says
                # Several fields of one name are one comma-separated list (RFC 9110 5.3).
                seen = forwarded.get(name)
                forwarded[name] = pair[1] if seen is None else seen + b", " + pair[1]
            elif action == _CONNECTION:
                extra = _add_nominated(extra, pair[1])
        if extra:
            out = [(n, v) for n, v in out if n not in extra]
        out.append((rid_name, request_id))

        client_text = client or "unknown"
        if not trusted:
            # What Peel says of the client replaces what it claimed: the same four fields for
            # every request of one client to one host, built once.
            own = self._own.get((client_text, scheme, host))
            if own is None:
                own = self._own_fields(client_text, scheme, host)
            out += own
            return out
        xff = forwarded.get(_XFF)
        out.append((_XFF, (xff + b", " if xff else b"") + client_text.encode()))
        out.append((_XFP, forwarded.get(_XFP) or scheme.encode("ascii")))
        xfh = forwarded.get(_XFH) or host
        if xfh:
            out.append((_XFH, xfh))
        fwd = forwarded.get(_FORWARDED)
        element = _forwarded_element(client_text, scheme, host)
        out.append((_FORWARDED, (fwd + b", " if fwd else b"") + element))
        return out
