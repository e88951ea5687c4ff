"""Header rules: hop-by-hop stripping, forwarded headers by trust, request ids."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.http import headers as header_rules
from gateway.http.headers import (
    HOP_BY_HOP,
    ForwardingRules,
    is_claim,
    new_request_id,
    nominated,
    strip_hop_by_hop,
    valid_request_id,
)

H = list[tuple[bytes, bytes]]


def values(headers: H, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


def test_hop_by_hop_and_nominated_are_stripped() -> None:
    headers = [(b"connection", b"keep-alive, X-Private , close"), (b"x-private", b"1"),
               (b"keep-alive", b"timeout=5"), (b"te", b"trailers"), (b"upgrade", b"h2c"),
               (b"transfer-encoding", b"chunked"), (b"proxy-authorization", b"Basic x"),
               (b"proxy-authenticate", b"Basic"), (b"proxy-connection", b"keep-alive"),
               (b"trailer", b"x"), (b"accept", b"*/*"), (b"content-type", b"text/plain")]
    assert strip_hop_by_hop(headers) == [(b"accept", b"*/*"), (b"content-type", b"text/plain")]


def test_strip_drops_named_extras() -> None:
    headers = [(b"x-request-id", b"u"), (b"content-length", b"5"), (b"etag", b'"1"')]
    assert strip_hop_by_hop(headers, (b"x-request-id", b"content-length")) == [(b"etag", b'"1"')]


def test_nominated_ignores_close_and_keep_alive() -> None:
    assert nominated(b"close") == set()
    assert nominated(b"Keep-Alive, X-A,x-b,,") == {b"x-a", b"x-b"}


@given(st.lists(st.tuples(st.sampled_from([*sorted(HOP_BY_HOP), b"x-a", b"x-b", b"accept"]),
                          st.sampled_from([b"x-a", b"close", b"x-b, keep-alive", b"v"]))))
def test_strip_never_lets_hop_by_hop_or_nominated_through(headers: H) -> None:
    out = strip_hop_by_hop(headers)
    nominated_names: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            nominated_names |= nominated(value)
    assert not any(n in HOP_BY_HOP or n in nominated_names for n, _ in out)
    assert all(h in headers for h in out)


def test_request_ids() -> None:
    rid = new_request_id()
    assert re.fullmatch(rb"[0-9a-f]{32}", rid) and rid != new_request_id()
    assert valid_request_id(b"abc-123_XYZ")
    assert valid_request_id(b"x" * 200)
    assert not valid_request_id(b"x" * 201)
    assert not valid_request_id(b"")
    assert not valid_request_id(b"has space")
    assert not valid_request_id(b"caf\xc3\xa9")
    rules = ForwardingRules(())
    assert rules.request_id([(b"x-request-id", b"ok-1")]) == b"ok-1"
    assert rules.request_id([(b"x-request-id", b"bad one")]) != b"bad one"
    assert ForwardingRules((), "X-Trace").request_id([(b"x-trace", b"t")]) == b"t"


CLIENT_SENT: H = [(b"host", b"shop.example"), (b"x-forwarded-for", b"6.6.6.6"),
                  (b"x-forwarded-for", b"7.7.7.7"), (b"x-forwarded-proto", b"https"),
                  (b"x-forwarded-host", b"evil.example"), (b"forwarded", b"for=6.6.6.6"),
                  (b"x-request-id", b"client-id"), (b"expect", b"100-continue"),
                  (b"accept", b"*/*")]


def test_untrusted_peer_values_are_replaced() -> None:
    rules = ForwardingRules(["10.0.0.0/8"])
    out = rules.upstream_request(CLIENT_SENT, client="192.0.2.7", scheme="http",
                                 host=b"shop.example", request_id=b"rid")
    assert values(out, b"x-forwarded-for") == [b"192.0.2.7"]
    assert values(out, b"x-forwarded-proto") == [b"http"]
    assert values(out, b"x-forwarded-host") == [b"shop.example"]
    assert values(out, b"forwarded") == [b'for=192.0.2.7;proto=http;host="shop.example"']
    assert values(out, b"x-request-id") == [b"rid"]
    assert values(out, b"host") == [] and values(out, b"expect") == []
    assert values(out, b"accept") == [b"*/*"]


def test_trusted_peer_chain_is_extended() -> None:
    rules = ForwardingRules(["10.0.0.0/8", "2001:db8::/32"])
    out = rules.upstream_request(CLIENT_SENT, client="10.1.2.3", scheme="http",
                                 host=b"shop.example", request_id=b"rid")
    assert values(out, b"x-forwarded-for") == [b"6.6.6.6, 7.7.7.7, 10.1.2.3"]
    assert values(out, b"x-forwarded-proto") == [b"https"]
    assert values(out, b"x-forwarded-host") == [b"evil.example"]
    assert values(out, b"forwarded") == [b'for=6.6.6.6, for=10.1.2.3;proto=http;host="shop.example"']
    out = rules.upstream_request([], client="2001:db8::1", scheme="https", host=None,
                                 request_id=b"rid")
    assert values(out, b"forwarded") == [b'for="[2001:db8::1]";proto=https']
    assert values(out, b"x-forwarded-for") == [b"2001:db8::1"]


@pytest.mark.parametrize(("client", "trusted"), [
    ("10.9.9.9", True), ("11.0.0.1", False), (None, False), ("not-an-ip", False),
    ("2001:db8::5", True), ("::1", False),
])
def test_trust(client: str | None, trusted: bool) -> None:
    rules = ForwardingRules(["10.0.0.0/8", "2001:db8::/32"])
    assert rules.trusts(client) is trusted
    assert rules.trusts(client) is trusted  # cached answer is the same
    assert ForwardingRules([]).trusts(client) is False


def test_connection_nominated_request_headers_are_dropped() -> None:
    out = ForwardingRules(()).upstream_request(
        [(b"connection", b"x-hop"), (b"x-hop", b"1"), (b"x-end", b"2")],
        client="1.2.3.4", scheme="http", host=b"h", request_id=b"r")
    assert values(out, b"x-hop") == [] and values(out, b"x-end") == [b"2"]


def test_host_is_quoted_safely_in_forwarded() -> None:
    out = ForwardingRules(()).upstream_request([], client="1.2.3.4", scheme="http",
                                               host=b'a"b\\c', request_id=b"r")
    assert values(out, b"forwarded") == [b'for=1.2.3.4;proto=http;host="a\\"b\\\\c"']


def _reference_kept(rules: ForwardingRules, headers: H, trusted: bool) -> H:
    """The headers `upstream_request` keeps from `headers`, by its rules read one at a time (before
    Peel's own are added): what the remembered per-name actions must give."""
    out: H = []
    extra: set[bytes] = set()
    for name, value in headers:
        if name in HOP_BY_HOP:
            if name == b"connection":
                extra |= nominated(value)
            continue
        if name in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"):
            continue
        if name in (rules.request_id_name, b"host", b"expect"):
            continue
        if not trusted and is_claim(name):
            continue
        out.append((name, value))
    return [(n, v) for n, v in out if n not in extra]


_NAMES = st.sampled_from([*sorted(HOP_BY_HOP), b"x-forwarded-for", b"forwarded", b"x-forwarded-port",
                          b"x-real-ip", b"x_real_ip", b"host", b"expect", b"x-request-id", b"x-trace",
                          b"accept", b"cookie", b"x-a", b"ssl-client-cert"])
_VALUES = st.sampled_from([b"keep-alive", b"Keep-Alive", b"close", b"Close", b"x-a", b"accept, close",
                           b"X-Trace", b"v", b""])


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=12), st.booleans(),
       st.sampled_from(["X-Request-Id", "X-Trace"]))
def test_the_remembered_actions_keep_what_the_rules_keep(headers: H, trusted: bool, rid: str) -> None:
    rules = ForwardingRules(["127.0.0.0/8"] if trusted else [], request_id_header=rid)
    for _ in range(2):  # the second time, every name's action is remembered
        out = rules.upstream_request(headers, client="127.0.0.1", scheme="http", host=b"h", request_id=b"r")
        ours = {rules.request_id_name, b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                b"forwarded"}
        assert [(n, v) for n, v in out if n not in ours] == _reference_kept(rules, headers, trusted)
        assert values(out, rules.request_id_name) == [b"r"]


def test_the_actions_memo_is_bounded() -> None:
    rules = ForwardingRules([])
    for n in range(3 * 4096):
        rules.upstream_request([(b"x-n-%d" % n, b"1")], client="10.0.0.1", scheme="http", host=None,
                               request_id=b"r")
    assert len(rules._actions) <= header_rules._REMEMBERED


@pytest.mark.parametrize(("client", "host", "element"), [
    ("10.0.0.7", b"shop.example", b'for=10.0.0.7;proto=https;host="shop.example"'),
    ("2001:db8::1", b'a"b\\c', b'for="[2001:db8::1]";proto=https;host="a\\"b\\\\c"'),
    (None, None, b"for=unknown;proto=https"),
])
def test_an_untrusted_clients_forwarded_fields_are_the_same_built_or_remembered(
        client: str | None, host: bytes | None, element: bytes) -> None:
    rules = ForwardingRules([])
    outs = [rules.upstream_request([(b"x-forwarded-for", b"6.6.6.6"), (b"accept", b"*/*")], client=client,
                                   scheme="https", host=host, request_id=b"r") for _ in range(3)]
    assert outs[0] == outs[1] == outs[2]
    assert outs[0] == [(b"accept", b"*/*"), (b"x-request-id", b"r"),
                       (b"x-forwarded-for", (client or "unknown").encode()), (b"x-forwarded-proto", b"https"),
                       *([(b"x-forwarded-host", host)] if host else []), (b"forwarded", element)]
    for n in range(2 * 4096):  # one client after another: the remembered fields stay bounded
        rules.upstream_request([], client=f"10.1.{n // 256}.{n % 256}", scheme="http", host=None,
                               request_id=b"r")
    assert len(rules._own) <= header_rules._CLIENTS_REMEMBERED
