"""Path tricks over raw sockets: a prefix route is never bypassed, under every `[paths]` setting.

A real data-plane process routes `/public` and `/admin` (prefix routes) and everything else (a
default route) to one echo upstream; each route stamps its name on the request. Every hostile
path either gets 400 or reaches the upstream with exactly the path that was matched: the echo
upstream records the target it saw, and the route that sent it must be the one whose prefix that
target has.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.sockets.conftest import Proxy, start_proxy, stop_proxy
from tests.sockets.upstreams import Seen, Upstreams

SETTINGS = {
    "default": "",
    # every default turned off: the RFC-literal reading, empty segments kept
    "allow": "[paths]\nreject_encoded_slash = false\nreject_backslash = false\nmerge_slashes = false\n",
    "merge": "[paths]\nmerge_slashes = true\n",
}
REFUSED = 400


@dataclass(frozen=True)
class Case:
    """A raw request target and, per settings name, the forwarded target or REFUSED."""

    target: bytes
    default: str | int
    allow: str | int
    merge: str | int


CASES = [
    Case(b"/public/..%2fadmin", REFUSED, "/public/..%2Fadmin", REFUSED),
    Case(b"/public/%2e%2e%2fadmin", REFUSED, "/public/..%2Fadmin", REFUSED),
    Case(b"/public/%2e%2e/admin", "/admin", "/admin", "/admin"),
    Case(b"/public/.%2E/admin/x", "/admin/x", "/admin/x", "/admin/x"),
    Case(b"/%2e%2e/%2e%2e/admin", "/admin", "/admin", "/admin"),
    # Merged by default: many upstreams read `//admin` as `/admin`, so it must meet /admin's route.
    Case(b"//admin", "/admin", "//admin", "/admin"),
    Case(b"//admin/1", "/admin/1", "//admin/1", "/admin/1"),
    Case(b"/./admin", "/admin", "/admin", "/admin"),
    Case(b"/public//..//admin", "/admin", "/public//admin", "/admin"),
    Case(b"/public\\..\\admin", REFUSED, "/public%5C..%5Cadmin", REFUSED),
    Case(b"/public/..%5cadmin", REFUSED, "/public/..%5Cadmin", REFUSED),
    Case(b"/public/..%5c..%5cadmin", REFUSED, "/public/..%5C..%5Cadmin", REFUSED),
    Case(b"/%61dmin/x?a=%2F..", "/admin/x?a=%2F..", "/admin/x?a=%2F..", "/admin/x?a=%2F.."),
    Case(b"/publi%63/%7Ex", "/public/~x", "/public/~x", "/public/~x"),
    Case(b"/public/%00/x", REFUSED, REFUSED, REFUSED),
    Case(b"/public/x%", REFUSED, REFUSED, REFUSED),
    Case(b"/public/caf%c3%a9", "/public/caf%C3%A9", "/public/caf%C3%A9", "/public/caf%C3%A9"),
    # "..;" is no dot segment (RFC 3986): it stays under /public, where it was matched.
    Case(b"/public/..;/admin", "/public/..;/admin", "/public/..;/admin", "/public/..;/admin"),
]


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def gateway(request: pytest.FixtureRequest, upstreams: Upstreams,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Proxy]]:
    name: str = request.param
    echo = upstreams.echo.url

    def stamped(route: str, match: dict[str, object]) -> dict[str, object]:
        return {"name": route, "match": match, "service": "echo",
                "rewrite": {"request_headers": {"set": {"X-Route": route}}}}

    document = {
        "services": [{"name": "echo", "endpoints": [echo]}],
        "routes": [stamped("public", {"path_prefix": "/public"}),
                   stamped("admin", {"path_prefix": "/admin"}),
                   stamped("default", {"path_prefix": "/"})],
    }
    running = start_proxy(tmp_path_factory.mktemp(f"paths-{name}"), document, SETTINGS[name])
    yield name, running
    stop_proxy(running)


def exchange(port: int, target: bytes) -> tuple[int, dict[str, object] | None]:
    """One request on a fresh connection: (status, the problem document of a refusal)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"application/problem+json" in head.lower():
        return status, json.loads(body)
    return status, None


def route_of(path: str) -> str:
    """The route a forwarded path belongs to: prefix routes match on a segment boundary."""
    for prefix in ("/public", "/admin"):
        if path == prefix or path.startswith(prefix + "/"):
            return prefix[1:]
    return "default"


def seen_since(upstreams: Upstreams, before: int) -> list[Seen]:
    return upstreams.echo.seen[before:]


@pytest.mark.parametrize("case", CASES, ids=[c.target.decode("latin-1") for c in CASES])
def test_path_tricks_are_refused_or_forwarded_as_matched(case: Case, gateway: tuple[str, Proxy],
                                                         upstreams: Upstreams) -> None:
    name, proxy = gateway
    expected: str | int = getattr(case, name)
    before = len(upstreams.echo.seen)
    status, problem = exchange(proxy.port, case.target)
    # The echo upstream answers before Peel answers, so what it saw is complete by now.
    seen = seen_since(upstreams, before)
    if expected == REFUSED:
        assert status == 400
        # Peel's own answer; the HTTP parser may refuse a raw backslash before the path rules do.
        assert problem is not None and problem["code"] in ("bad-path", "bad-request"), problem
        assert seen == []
        return
    assert status == 200
    assert [s.target for s in seen] == [expected]
    path = seen[0].target.partition("?")[0]
    assert seen[0].header("x-route") == route_of(path), (seen[0].target, seen[0].header("x-route"))


def test_a_refused_path_names_the_rule(gateway: tuple[str, Proxy]) -> None:
    name, proxy = gateway
    status, problem = exchange(proxy.port, b"/public/%00")
    assert status == 400 and problem is not None
    assert problem["code"] == "bad-path" and "NUL" in str(problem["detail"])
    if name != "allow":
        status, problem = exchange(proxy.port, b"/public/a%2Fb")
        assert status == 400 and problem is not None
        assert problem["code"] == "bad-path" and "%2F" in str(problem["detail"])


def test_path_override_headers_from_clients_never_reach_the_upstream(gateway: tuple[str, Proxy],
                                                                     upstreams: Upstreams) -> None:
    """`X-Original-URL` and friends would let an upstream serve another path than Peel matched."""
    _, proxy = gateway
    before = len(upstreams.echo.seen)
    response, _ = proxy.request("GET", "/public/x", headers={
        "X-Original-URL": "/admin", "X-Rewrite-URL": "/admin", "X-Forwarded-Prefix": "/admin",
        "X-Envoy-Original-Path": "/admin", "X-Real-IP": "10.9.9.9"})
    assert response.status == 200
    (seen,) = seen_since(upstreams, before)
    assert seen.target == "/public/x" and seen.header("x-route") == "public"
    assert not seen.names() & {"x-original-url", "x-rewrite-url", "x-forwarded-prefix",
                               "x-envoy-original-path", "x-real-ip"}
