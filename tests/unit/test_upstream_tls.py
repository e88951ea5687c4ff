"""The TLS context of an upstream endpoint: the factory's, else one default verifying context."""

from __future__ import annotations

import ssl

from gateway.upstream.tls import UpstreamTls
from routes.model import Endpoint

PLAIN = Endpoint.parse("http://127.0.0.1:8080", "endpoint")
SECURE = Endpoint.parse("https://orders.internal:8443", "endpoint")


def test_without_a_factory_https_gets_one_verifying_default_and_http_none() -> None:
    tls = UpstreamTls()
    assert tls.context_for(PLAIN) is None
    context = tls.context_for(SECURE)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert tls.context_for(SECURE) is context  # made once


def test_the_factory_wins_when_it_gives_a_context() -> None:
    mine = ssl.create_default_context()
    tls = UpstreamTls(lambda endpoint: mine)
    assert tls.context_for(SECURE) is mine
    assert tls.context_for(PLAIN) is mine  # the factory may put TLS on an http endpoint


def test_an_https_endpoint_the_factory_has_nothing_for_gets_the_default() -> None:
    seen: list[Endpoint] = []

    def factory(endpoint: Endpoint) -> ssl.SSLContext | None:
        seen.append(endpoint)
        return None

    tls = UpstreamTls(factory)
    assert tls.context_for(PLAIN) is None
    assert isinstance(tls.context_for(SECURE), ssl.SSLContext)
    assert seen == [PLAIN, SECURE]
