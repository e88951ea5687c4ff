"""The strangler facade on real processes: `peel serve` between http.client and named upstreams.

Each upstream answers every request with its own name (and a fixed status), so a test sees which
side of a migration answered. The module's gateway serves one document with a migration per
situation; the story test at the end drives one migration through its whole life over the admin
API and the CLI.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from facade.beta import sign
from facade.bucketing import in_share
from tests.access_log import records
from tests.sockets.conftest import ROOT, wait_for
from tests.sockets.serve_harness import PeelServe
from tests.sockets.upstreams import Refusing, ThreadServer, read_body, read_head

SECRET = "k" * 40
TRUSTED = "127.0.0.2"
UNTRUSTED = "127.0.0.3"


class Named(ThreadServer):
    """Answers every request with `status` and its name as the body; records what it saw."""

    def __init__(self, name: str, status: int = 200) -> None:
        super().__init__()
        self.name = name
        self.status = status
        self.seen: list[tuple[str, str, dict[str, str], int]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     number: int) -> None:
        while (head := await read_head(reader)) is not None:
            method, target, headers = head
            length, _ = await read_body(reader, headers)
            self.seen.append((method, target, {k.lower(): v for k, v in headers}, length))
            body = self.name.encode()
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (self.status, len(body), body))
            await writer.drain()


class Sides:
    def __init__(self) -> None:
        self.legacy = Named("legacy").start()
        self.orders = Named("orders").start()
        self.broken = Named("broken", 503).start()
        self.refusing = Refusing()

    def stop(self) -> None:
        for server in (self.legacy, self.orders, self.broken):
            server.stop()
        self.refusing.stop()


def document(sides: Sides) -> dict[str, Any]:
    services = [{"name": "legacy", "endpoints": [sides.legacy.url]},
                {"name": "orders", "endpoints": [sides.orders.url]},
                {"name": "broken", "endpoints": [sides.broken.url]},
                {"name": "refusing", "endpoints": [sides.refusing.url]}]
    beta = {"header": "X-Beta-User", "allow": ["alice"], "deny": ["bob"]}
    routes = [
        {"name": "default", "match": {"path_prefix": "/"}, "service": "legacy"},
        {"name": "orders", "match": {"path_prefix": "/orders"}, "service": "legacy",
         "migration": {"to": "orders", "stage": "canary", "percent": 10,
                       "cohort": {"header": "X-User-Id"}, "beta": beta}},
        {"name": "cookies", "match": {"path_prefix": "/cookies"}, "service": "legacy",
         "migration": {"to": "orders", "stage": "canary", "cohort": {"cookie": "sid"},
                       "beta": {"cookie": "beta", "allow": ["alice"]}}},
        {"name": "shipping", "match": {"path_prefix": "/shipping"}, "service": "legacy",
         "migration": {"to": "broken", "stage": "migrated", "fallback": {"max_body": 1024}}},
        {"name": "refused", "match": {"path_prefix": "/refused"}, "service": "legacy",
         "migration": {"to": "refusing", "stage": "migrated"}},
        {"name": "gone", "match": {"path_prefix": "/gone"}, "service": "legacy",
         "migration": {"to": "broken", "stage": "retired"}},
    ]
    return {"services": services, "routes": routes}


@pytest.fixture(scope="module")
def sides() -> Iterator[Sides]:
    s = Sides()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, sides: Sides) -> Iterator[PeelServe]:
    peel = PeelServe(tmp_path_factory.mktemp("strangler"),
                     extra_settings=f'[facade]\ntrusted_networks = ["{TRUSTED}/32"]\n'
                                    f'beta_secret = "{SECRET}"\n')
    peel.store().upgrade()
    peel.commit(document(sides))
    peel.start()
    yield peel
    peel.stop()


def call(peel: PeelServe, method: str, target: str, headers: dict[str, str] | None = None,
         body: bytes | None = None, source: str | None = None,
         conn: http.client.HTTPConnection | None = None) -> tuple[int, str]:
    own = conn is None
    if conn is None:
        conn = http.client.HTTPConnection("127.0.0.1", peel.public_port, timeout=10,
                                          source_address=(source, 0) if source else None)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        if own:
            conn.close()


def test_canary_share_is_sticky_per_user_and_predicted_by_the_bucket(gateway: PeelServe) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.public_port, timeout=10)
    users = [f"user-{i}" for i in range(1000)]
    answered = {u: call(gateway, "GET", "/orders/1", {"X-User-Id": u}, conn=conn)[1] for u in users}
    again = {u: call(gateway, "GET", "/orders/2", {"X-User-Id": u}, conn=conn)[1] for u in users[:200]}
    conn.close()
    # Every user lands where the documented hash says: the same on any gateway and any restart.
    assert all(answered[u] == ("orders" if in_share("orders", u, 1000) else "legacy") for u in users)
    assert all(again[u] == answered[u] for u in again)
    share = sum(a == "orders" for a in answered.values()) / len(users) * 100
    assert 7 <= share <= 13


def test_beta_allow_and_deny_from_a_trusted_network(gateway: PeelServe) -> None:
    outside = next(f"u{i}" for i in range(1000) if not in_share("orders", f"u{i}", 1000))
    inside = next(f"u{i}" for i in range(1000) if in_share("orders", f"u{i}", 1000))
    assert call(gateway, "GET", "/orders", {"X-User-Id": outside, "X-Beta-User": "alice"},
                source=TRUSTED)[1] == "orders"
    assert call(gateway, "GET", "/orders", {"X-User-Id": inside, "X-Beta-User": "bob"},
                source=TRUSTED)[1] == "legacy"
    assert call(gateway, "GET", "/orders", {"X-User-Id": inside}, source=TRUSTED)[1] == "orders"


def test_spoofed_beta_header_from_an_untrusted_address_never_reaches_the_new_service(
        gateway: PeelServe, sides: Sides) -> None:
    outside = [f"u{i}" for i in range(300) if not in_share("orders", f"u{i}", 1000)]
    before = len(sides.orders.seen)
    for user in outside:
        status, side = call(gateway, "GET", "/orders", {"X-User-Id": user, "X-Beta-User": "alice"},
                            source=UNTRUSTED)
        assert (status, side) == (200, "legacy")
    assert len(sides.orders.seen) == before
    # Nor does the spoofed header travel on to the old one.
    assert all("x-beta-user" not in headers for _, _, headers, _ in sides.legacy.seen[-len(outside):])
    # Each stripped value is counted, for an alert on spoofing attempts.
    token = gateway.upgrade_with_token("beta-metrics")

    def stripped() -> float:
        _, body = gateway.admin_get("/metrics", token)
        line = next(x for x in body.decode().splitlines() if x.startswith("peel_beta_stripped_total "))
        return float(line.split()[1])
    wait_for(lambda: stripped() >= len(outside), 15, "the stripped beta values in /metrics")


def test_a_signed_beta_value_is_honoured_from_anywhere(gateway: PeelServe, sides: Sides) -> None:
    outside = next(f"u{i}" for i in range(1000) if not in_share("orders", f"u{i}", 1000))
    signed = sign(SECRET, "alice", 4_000_000_000)
    assert call(gateway, "GET", "/orders", {"X-User-Id": outside, "X-Beta-User": signed},
                source=UNTRUSTED)[1] == "orders"
    assert sides.orders.seen[-1][2]["x-beta-user"] == signed
    forged = signed[:-4] + "AAAA"
    assert call(gateway, "GET", "/orders", {"X-User-Id": outside, "X-Beta-User": forged},
                source=UNTRUSTED)[1] == "legacy"


def test_beta_cookie_is_stripped_alone_from_untrusted_downstreams(gateway: PeelServe,
                                                                  sides: Sides) -> None:
    status, side = call(gateway, "GET", "/cookies", {"Cookie": "sid=s1; beta=alice; theme=dark"},
                        source=UNTRUSTED)
    assert (status, side) == (200, "legacy")
    assert sides.legacy.seen[-1][2]["cookie"] == "sid=s1; theme=dark"
    assert call(gateway, "GET", "/cookies", {"Cookie": "sid=s1; beta=alice"}, source=TRUSTED)[1] \
        == "orders"


@pytest.mark.parametrize("target", ["/shipping/1", "/refused/1"])
def test_failing_new_service_is_answered_by_the_old_one(gateway: PeelServe, sides: Sides,
                                                       target: str) -> None:
    assert call(gateway, "GET", target) == (200, "legacy")
    assert sides.legacy.seen[-1][1] == target


def test_fallback_replays_a_small_idempotent_body(gateway: PeelServe, sides: Sides) -> None:
    assert call(gateway, "PUT", "/shipping/1", body=b"x" * 1000) == (200, "legacy")
    assert sides.legacy.seen[-1][0] == "PUT" and sides.legacy.seen[-1][3] == 1000
    assert sides.broken.seen[-1][3] == 1000


@pytest.mark.parametrize("method, size", [("POST", 10), ("PUT", 5000)])
def test_no_fallback_for_unsafe_methods_or_bodies_over_the_buffer(gateway: PeelServe, sides: Sides,
                                                                  method: str, size: int) -> None:
    before = len(sides.legacy.seen)
    assert call(gateway, method, "/shipping/1", body=b"y" * size) == (503, "broken")
    assert sides.broken.seen[-1][3] == size
    assert len(sides.legacy.seen) == before


def test_retired_has_no_fallback(gateway: PeelServe, sides: Sides) -> None:
    before = len(sides.legacy.seen)
    assert call(gateway, "GET", "/gone/1") == (503, "broken")
    assert len(sides.legacy.seen) == before


def test_access_log_marks_the_fallback(gateway: PeelServe) -> None:
    call(gateway, "GET", "/refused/log")
    log = Path(gateway.tmp / "access.log")
    def logged() -> bool:
        return any(record["path"] == "/refused/log" for record in records(log))

    wait_for(logged, 5, "the access log line")
    line = next(record for record in records(log) if record["path"] == "/refused/log")
    assert line["route"] == "refused" and line["service"] == "legacy" and line["status"] == 200
    assert line["side"] == "from" and line["fallback"] == "upstream-connect-failed"
    assert line["error"] is None


# -- the whole story ---------------------------------------------------------------------------


STORY_DOC = """\
services:
  - name: legacy
    endpoints: [{legacy}]
  - name: orders
    endpoints: [{orders}]
routes:
  - name: orders
    match: {{path_prefix: /orders}}
    service: legacy
  - name: default
    match: {{path_prefix: /}}
    service: legacy
"""


class Operator:
    """Runs the real `peel` command against one gateway's admin API, as an operator would."""

    def __init__(self, peel: PeelServe, token: str) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
        self.env.update(PEEL_ADMIN_URL=f"http://127.0.0.1:{peel.admin_port}", PEEL_ADMIN_TOKEN=token)

    def __call__(self, *args: str, stdin: str | None = None, expect: int = 0) -> str:
        result = subprocess.run([sys.executable, "-m", "gateway.cli", *args], input=stdin, cwd=ROOT,
                                capture_output=True, text=True, timeout=60, env=self.env)
        assert result.returncode == expect, (args, result.stdout, result.stderr)
        return result.stdout + result.stderr


def sides_of(peel: PeelServe, users: list[str]) -> dict[str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", peel.public_port, timeout=10)
    try:
        return {u: call(peel, "GET", "/orders/1", {"X-User-Id": u}, conn=conn)[1] for u in users}
    finally:
        conn.close()


@pytest.fixture
def story(tmp_path: Path) -> Iterator[tuple[PeelServe, Named, Named]]:
    legacy, orders = Named("legacy").start(), Named("orders").start()
    peel = PeelServe(tmp_path, extra_settings=f'[facade]\ntrusted_networks = ["{TRUSTED}/32"]\n')
    peel.store().upgrade()
    peel.commit(yaml.safe_load(STORY_DOC.format(legacy=legacy.url, orders=orders.url)))
    peel.start()
    yield peel, legacy, orders
    peel.stop()
    legacy.stop()
    orders.stop()


def test_the_whole_story(story: tuple[PeelServe, Named, Named], tmp_path: Path) -> None:
    peel, legacy, orders = story
    store = peel.store()
    peel_cli = Operator(peel, store.create_token("ops"))
    users = [f"user-{i}" for i in range(1000)]
    canary = [u for u in users if in_share("orders", u, 1000)]
    others = [u for u in users if not in_share("orders", u, 1000)]

    # start: stage legacy, nothing moves yet
    out = peel_cli("migrate", "start", "orders", "--to", "orders", "--cohort-header", "X-User-Id",
                   "--beta-header", "X-Beta-User", "--reason", "peel orders off the monolith")
    assert "now legacy" in out
    assert set(sides_of(peel, users[:50]).values()) == {"legacy"}

    # refused transitions write nothing and say why
    version = store.latest_version()
    assert "not allowed from stage legacy" in peel_cli("migrate", "retire", "orders", expect=1)
    assert "percent" in peel_cli("migrate", "shift", "orders", "--percent", "150", expect=1)
    assert "names no service" in peel_cli("migrate", "start", "orders", "--to", "nope", expect=1)
    assert store.latest_version() == version

    # shift to 10 %: exactly the users the bucket predicts, on every request
    peel_cli("migrate", "shift", "orders", "--percent", "10")
    wait_for(lambda: sides_of(peel, canary[:1])[canary[0]] == "orders", 5, "the shift to apply")
    first = sides_of(peel, users)
    assert [u for u in users if first[u] == "orders"] == canary
    assert 8.5 <= len(canary) / 10 <= 11.5
    assert sides_of(peel, users[:300]) == {u: first[u] for u in users[:300]}

    # a second gateway on the same store decides identically
    (tmp_path / "second").mkdir()
    second = PeelServe(tmp_path / "second", url=peel.url).start()
    try:
        assert sides_of(second, users[:300]) == {u: first[u] for u in users[:300]}
    finally:
        second.stop()

    # add a beta user and deny another, through the document (export, edit, apply)
    document = yaml.safe_load(peel_cli("export"))
    route = next(r for r in document["routes"] if r["name"] == "orders")
    route["migration"]["beta"].update(allow=[others[0]], deny=[canary[0]])
    peel_cli("apply", "-f", "-", "--reason", "beta users", stdin=yaml.safe_dump(document))
    wait_for(lambda: call(peel, "GET", "/orders", {"X-User-Id": others[0], "X-Beta-User": others[0]},
                          source=TRUSTED)[1] == "orders", 5, "the beta allow-list to apply")
    assert call(peel, "GET", "/orders", {"X-User-Id": canary[0], "X-Beta-User": canary[0]},
                source=TRUSTED)[1] == "legacy"
    # spoofed from an untrusted address: never the new service
    assert call(peel, "GET", "/orders", {"X-User-Id": others[0], "X-Beta-User": others[0]},
                source=UNTRUSTED)[1] == "legacy"

    # promote: everyone but the denied user
    peel_cli("migrate", "promote", "orders")
    wait_for(lambda: sides_of(peel, others[1:2])[others[1]] == "orders", 5, "the promotion")
    assert set(sides_of(peel, others[:100]).values()) == {"orders"}

    # break the new service: the old one answers
    orders.status = 503
    tried, answered = len(orders.seen), len(legacy.seen)
    assert set(sides_of(peel, others[:50]).values()) == {"legacy"}
    assert len(orders.seen) - tried == 50 and len(legacy.seen) - answered == 50

    # status and history
    status = peel_cli("migrate", "status", "orders")
    assert "stage    migrated" in status and "legacy -> orders" in status
    history = peel_cli("migrate", "history", "orders")
    assert [line.split()[2] for line in history.splitlines()[1:]] == ["promote", "shift", "start"]

    # rollback: all traffic on the old service within a second
    orders.status = 200
    peel_cli("migrate", "rollback", "orders", "--reason", "orders is broken")
    rolled_back = time.monotonic()
    wait_for(lambda: set(sides_of(peel, canary[:20]).values()) == {"legacy"}, 10,
             "all traffic back on legacy")
    # about 0.3 s unloaded (one poll); a margin for a loaded 2-core machine
    assert time.monotonic() - rolled_back < 2.5
    assert set(sides_of(peel, users[:200]).values()) == {"legacy"}
    store.close()
