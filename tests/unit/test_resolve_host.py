"""The resolve step reads a canonical Host (issue 11, item 14): one trailing dot is the same host,
and a Host that is not `host[:port]` is refused with 400 `bad-host` (HTTP, WebSocket and /match all
resolve through `gateway.dataplane.resolve`)."""

from __future__ import annotations

import pytest

from gateway.core.settings import DeadlineSettings
from gateway.dataplane.resolve import Incoming, Refusal, Resolution, Resolver
from gateway.policy.deadline import DeadlineRules
from routes.compiler import compile_document
from routes.model import Document

TABLE = compile_document(Document.parse({
    "services": [{"name": "api", "endpoints": ["http://10.0.0.5:8080"]},
                 {"name": "site", "endpoints": ["http://10.0.0.6:8080"]}],
    "routes": [{"name": "api", "match": {"hosts": ["api.example.com"], "path_prefix": "/"},
                "service": "api"},
               {"name": "site", "match": {"path_prefix": "/"}, "service": "site"}]}), 1)
RESOLVER = Resolver(deadlines=DeadlineRules(DeadlineSettings()))


def resolve(host: bytes, target: bytes | None = None) -> Resolution | Refusal:
    incoming = Incoming("GET", b"/x", b"", [(b"host", host)], "192.0.2.1", target=target)
    return RESOLVER.resolve(TABLE, incoming, 0.0)


@pytest.mark.parametrize("host", [b"api.example.com", b"api.example.com.", b"API.Example.COM.:443",
                                  b"api.example.com:"])
def test_spellings_of_a_host_reach_its_routes(host: bytes) -> None:
    resolved = resolve(host)
    assert isinstance(resolved, Resolution) and resolved.route.name == "api"
    assert resolved.host == "api.example.com"


def test_a_trailing_dot_in_an_absolute_target_reaches_the_host_route() -> None:
    resolved = resolve(b"elsewhere", target=b"http://api.example.com./x")
    assert isinstance(resolved, Resolution) and resolved.route.name == "api"


@pytest.mark.parametrize("host", [b"evil.com:80:90", b"api.example.com..", b"a b", b"[::1", b"[zz]:80",
                                  b"api.example.com:http", b"api.example.com:123456", b".", b":80",
                                  b"caf\xe9.example", b"a/b", b"user@api.example.com"])
def test_a_host_that_is_not_host_port_is_refused(host: bytes) -> None:
    refused = resolve(host)
    assert isinstance(refused, Refusal)
    assert (refused.status, refused.code) == (400, "bad-host")
