"""Client-address, method and identity claims from untrusted clients never reach an upstream
(issue 11, item 13), under `_` spellings too; a trusted proxy's pass."""

from __future__ import annotations

import pytest

from gateway.http.headers import ForwardingRules, is_claim

RULES = ForwardingRules(["10.0.0.0/8"])
H = list[tuple[bytes, bytes]]

ADDRESS = ["Client-IP", "X-Forwarded", "Forwarded-For", "X-Originating-IP", "X-Remote-Addr",
           "X-Remote-IP", "X-ProxyUser-Ip", "X-Real-IP", "X-Client-IP"]
METHOD = ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X-Original-Method"]
IDENTITY = ["X-SSL-Client-Verify", "X-SSL-Client-DN", "X-SSL-Client-S-DN", "X-SSL-Client-Cert",
            "X-Client-Cert", "SSL-Client-Verify", "X-Client-Verify", "Remote-User", "X-Remote-User",
            "X-Authenticated-User", "X-Auth-Request-User", "X-Auth-Request-Email"]
CLAIMS = ADDRESS + METHOD + IDENTITY


def upstream(headers: H, client: str) -> H:
    return RULES.upstream_request(headers, client=client, scheme="http", host=b"shop", request_id=b"r1")


def spellings(name: str) -> list[bytes]:
    lower = name.lower().encode("ascii")
    return [lower, lower.replace(b"-", b"_")] if b"-" in lower else [lower]


@pytest.mark.parametrize("claim", CLAIMS)
def test_an_untrusted_claim_is_dropped_in_every_spelling(claim: str) -> None:
    for name in spellings(claim):
        out = upstream([(name, b"SUCCESS"), (b"accept", b"*/*")], "192.0.2.7")
        assert name not in {n for n, _ in out}, name
        assert (b"accept", b"*/*") in out
        assert is_claim(name)


@pytest.mark.parametrize("claim", CLAIMS)
def test_a_trusted_proxy_claim_passes(claim: str) -> None:
    name = claim.lower().encode("ascii")
    assert (name, b"SUCCESS") in upstream([(name, b"SUCCESS")], "10.2.3.4")


@pytest.mark.parametrize("name", [b"x_forwarded_for", b"x_forwarded_host", b"x-forwarded_proto",
                                  b"forwarded"])
def test_underscore_forwarded_headers_from_untrusted_clients_are_dropped(name: bytes) -> None:
    out = upstream([(name, b"6.6.6.6")], "192.0.2.7")
    assert (name, b"6.6.6.6") not in out
    assert (b"x-forwarded-for", b"192.0.2.7") in out


@pytest.mark.parametrize("name", [b"accept", b"x-request-ip-hint", b"x_custom", b"user-agent",
                                  b"x-forwardedness", b"x-method", b"authorization", b"cookie"])
def test_ordinary_headers_are_no_claims(name: bytes) -> None:
    assert not is_claim(name)
    assert (name, b"v") in upstream([(name, b"v")], "192.0.2.7")
