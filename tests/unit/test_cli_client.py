"""The CLI's admin client (`gateway.cli.client`): what it builds before its first request."""

from __future__ import annotations

import ssl
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
