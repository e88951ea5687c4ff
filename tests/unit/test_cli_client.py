"""The CLI's admin client (`gateway.cli.client`): what it builds before its first request."""

from __future__ import annotations

import ssl
import subprocess
import sys
from typing import Any

import pytest

from gateway.cli.client import AdminClient


@pytest.fixture
def trust_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every load of a trust store (CA certificates) by any SSL context, as it happens."""
    loads: list[str] = []
    load = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(str(args or kwargs))
        load(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    return loads


@pytest.mark.parametrize("url", ["http://127.0.0.1:9901", "HTTP://admin.internal:9901/"])
def test_a_plain_http_admin_url_loads_no_trust_store(url: str, trust_loads: list[str]) -> None:
    """40 ms of CPU at every command of the CLI, for a connection that never speaks TLS."""
    with AdminClient(url, "token"):
        pass
    assert trust_loads == []


def test_an_https_admin_url_still_verifies_against_the_trust_store(trust_loads: list[str]) -> None:
    with AdminClient("https://admin.internal:9901", "token"):
        pass
    assert len(trust_loads) == 1


def test_a_command_imports_neither_httpx_s_command_line_nor_asyncio() -> None:
    """httpx's package imports its own command line (click, rich, pygments where installed: 35 ms
    of every `peel` command); a document decoded in steps needs no event loop (14 ms)."""
    code = ("import sys; from gateway.cli.parser import build_parser; build_parser(); "
            "from gateway.cli.client import AdminClient; from routes.patch import changes_from_data; "
            "AdminClient('http://127.0.0.1:9901', 'token').close(); import httpx; "
            "assert httpx.Client and sys.modules['httpx._main'] is None, 'the command line'; "
            "assert not {'click', 'rich', 'asyncio'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
