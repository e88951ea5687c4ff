"""bench/tls_certs.py: the certificate `bench/run.py --tls` gives nginx and Peel is one a client
verifying against the test CA accepts for localhost and 127.0.0.1, and its key is its own."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from bench.tls_certs import make_certs


def test_a_verifying_client_accepts_the_server_certificate(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    assert certs.key.stat().st_mode & 0o077 == 0
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.cert, certs.key)  # raises when the key is not the certificate's
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            for _ in range(2):
                conn, _addr = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_ctx = ssl.create_default_context(cafile=str(certs.ca))
        for name in ("localhost", "127.0.0.1"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    client_ctx.wrap_socket(raw, server_hostname=name) as tls:
                assert tls.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(certs.cert.read_text())
                tls.sendall(b"x")
        thread.join(10)
        assert not thread.is_alive()


def test_a_client_trusting_another_ca_refuses_it(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    certs, other = make_certs(tmp_path / "a"), make_certs(tmp_path / "b")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.cert, certs.key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _addr = listener.accept()
            try:
                server_ctx.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_ctx = ssl.create_default_context(cafile=str(other.ca))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                pytest.raises(ssl.SSLCertVerificationError):
            client_ctx.wrap_socket(raw, server_hostname="localhost")
        thread.join(10)
