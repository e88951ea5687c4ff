"""A pooled TLS connection is not reused once the certificate its upstream presented has expired
(gateway/upstream/pool.py): with 1-minute certificates between gateways, a keep-alive connection
would otherwise carry requests long after both certificates of its handshake expired."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import pytest

from gateway.core.settings import ProxySettings
from gateway.upstream import pool as pool_module
from gateway.upstream.pool import UpstreamConnection, UpstreamPool
from routes.policies import ServiceTls
from routes.services import Endpoint
from tests.fakes.tls import TestCA


async def exchange(pool: UpstreamPool, conn: UpstreamConnection) -> None:
    conn.begin(head_request=False)
    conn.write(b"GET / HTTP/1.1\r\nHost: upstream\r\n\r\n")
    assert conn.reader is not None
    while not conn.reader.done:
        await conn.wait(5, "the response")
        conn.take()
    pool.release(conn)


def test_a_pooled_tls_connection_is_dropped_once_the_peers_certificate_expired(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(asyncio.wait_for(dropped_once_expired(tmp_path, monkeypatch), 30))


async def dropped_once_expired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = TestCA()
    leaf = ca.issue(tmp_path / "upstream", ["upstream.test"], ips=["127.0.0.1"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(leaf.cert), str(leaf.key))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    endpoint = Endpoint("https", "127.0.0.1", port, tls=ServiceTls(ca=str(ca.pem_path(tmp_path))))
    pool = UpstreamPool(ProxySettings())
    try:
        first = await pool.connect(endpoint)
        assert first.trusted_until == pytest.approx(leaf.certificate.not_valid_after_utc.timestamp())
        await exchange(pool, first)
        assert pool.take_idle(endpoint) is first  # reused while the certificate is valid
        await exchange(pool, first)
        later = leaf.certificate.not_valid_after_utc.timestamp() + 1
        monkeypatch.setattr(pool_module, "_now", lambda: later)
        assert pool.take_idle(endpoint) is None  # expired since the handshake: not reused
        assert first.closed
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()
