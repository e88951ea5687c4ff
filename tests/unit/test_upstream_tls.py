"""The dial seam: the TLS context of an upstream endpoint (the factory's, else one default verifying
context) and `Dialer.open`, the one place that opens upstream connections."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from gateway.core.errors import ConnectError, UpstreamTimeout
from gateway.upstream.dial import Dialer, UpstreamTls
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


# -- the Dialer: the one place that opens upstream connections ---------------------------------------

class _Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.made = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.set()


def test_the_dialer_connects_and_maps_failures_to_the_error_tree() -> None:
    async def go() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        dialer = Dialer()
        transport, protocol = await dialer.open(Endpoint.parse(f"http://127.0.0.1:{port}", "e"),
                                                _Recorder, timeout=5.0)
        assert protocol.made.is_set() and transport.get_extra_info("sslcontext") is None
        transport.close()
        server.close()
        await server.wait_closed()
        # Nothing listens there now: ConnectError naming the endpoint, the OSError as its cause.
        with pytest.raises(ConnectError, match=f"cannot connect to http://127.0.0.1:{port}") as info:
            await dialer.open(Endpoint.parse(f"http://127.0.0.1:{port}", "e"), _Recorder, timeout=5.0)
        assert isinstance(info.value.__cause__, OSError)

    asyncio.run(go())


def test_the_dialer_times_out_as_an_upstream_timeout() -> None:
    async def go() -> None:
        gate = asyncio.Event()

        loop = asyncio.get_running_loop()
        real = loop.create_connection

        async def never(*args: object, **kwargs: object) -> None:
            await gate.wait()

        loop.create_connection = never  # type: ignore[method-assign, assignment]
        try:
            with pytest.raises(UpstreamTimeout, match=r"took longer than 0\.05 s"):
                await Dialer().open(PLAIN, _Recorder, timeout=0.05)
        finally:
            loop.create_connection = real  # type: ignore[method-assign]

    asyncio.run(go())


def test_the_dialer_chooses_tls_per_endpoint() -> None:
    mine = ssl.create_default_context()
    dialer = Dialer(lambda endpoint: mine if endpoint.host == "orders.internal" else None)
    assert dialer.tls.context_for(SECURE) is mine
    assert dialer.tls.context_for(PLAIN) is None
