"""Header trust: what only a trusted proxy may tell an upstream, and what is never forwarded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.http.headers import CLIENT_CLAIMS, HOP_BY_HOP, ForwardingRules, nominated

H = list[tuple[bytes, bytes]]
RULES = ForwardingRules(["10.0.0.0/8"])
CLAIMS = [(b"x-forwarded-port", b"443"), (b"x-forwarded-prefix", b"/admin"),
          (b"x-forwarded-client-cert", b"Hash=abc"), (b"x-real-ip", b"10.1.1.1"),
          (b"x-original-url", b"/admin"), (b"x-rewrite-url", b"/admin"),
          (b"true-client-ip", b"10.1.1.1")]
NEVER = [(b"proxy-connection", b"keep-alive"), (b"keep-alive", b"timeout=5"), (b"te", b"trailers"),
         (b"trailer", b"x-t"), (b"upgrade", b"websocket"), (b"http2-settings", b"AAA"),
         (b"connection", b"Upgrade, HTTP2-Settings")]


def upstream(headers: H, client: str) -> H:
    return RULES.upstream_request(headers, client=client, scheme="http", host=b"shop",
                                  request_id=b"r1")


def names(headers: H) -> set[bytes]:
    return {n for n, _ in headers}


def test_untrusted_client_claims_are_dropped() -> None:
    out = upstream([*CLAIMS, (b"accept", b"*/*"), (b"x-forwardedness", b"kept")], "192.0.2.7")
    assert not names(out) & {n for n, _ in CLAIMS}
    assert (b"accept", b"*/*") in out and (b"x-forwardedness", b"kept") in out
    # Peel's own view of the client replaces the family's core.
    assert (b"x-forwarded-for", b"192.0.2.7") in out


def test_trusted_proxy_claims_pass() -> None:
    out = upstream([*CLAIMS, (b"x-forwarded-for", b"198.51.100.1")], "10.2.3.4")
    for claim in CLAIMS:
        assert claim in out
    assert (b"x-forwarded-for", b"198.51.100.1, 10.2.3.4") in out


def test_hop_by_hop_family_and_upgrades_are_never_forwarded() -> None:
    for client in ("192.0.2.7", "10.2.3.4"):
        out = upstream([*NEVER, (b"x-kept", b"yes")], client)
        assert not names(out) & {n for n, _ in NEVER}
        assert (b"x-kept", b"yes") in out


header_names = st.sampled_from([*sorted(HOP_BY_HOP), *sorted(CLIENT_CLAIMS), b"x-forwarded-for",
                                b"x-forwarded-port", b"x-forwarded-whatever", b"forwarded",
                                b"http2-settings", b"accept", b"x-a", b"x-request-id"])
connection_values = st.sampled_from([b"close", b"x-a", b"x-a, keep-alive", b"upgrade, http2-settings",
                                     b"v"])


@given(st.lists(st.tuples(header_names, connection_values), max_size=12),
       st.sampled_from(["192.0.2.7", "10.2.3.4", "::1"]))
def test_upstream_headers_never_carry_what_the_client_may_not_say(headers: H, client: str) -> None:
    out = upstream(headers, client)
    gone: set[bytes] = set(HOP_BY_HOP)
    for name, value in headers:
        if name == b"connection":
            gone |= nominated(value)
    assert not names(out) & gone
    if not RULES.trusts(client):
        claimed = {n for n in names(out) if n in CLIENT_CLAIMS or n.startswith(b"x-forwarded-")}
        # Only what Peel itself set: the client Peel saw, the scheme and the Host it was sent.
        assert claimed <= {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
        assert (b"x-forwarded-for", client.encode()) in out
        assert len([n for n, _ in out if n == b"x-forwarded-for"]) == 1
    assert [v for n, v in out if n == b"x-request-id"] == [b"r1"]
