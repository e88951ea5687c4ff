"""The shadow stage on real processes: `peel serve` between http.client and scripted upstreams.

`from` answers every request; a copy goes to `to` and is compared. The proofs of issue 15:
a `to` that hangs, fails or differs leaves the primary's answers unchanged; a POST never reaches
`to` unless the route allows it; a random field is recognised as noise (the baseline) while a real
difference is reported; the report (admin API and `peel shadow report`) shows it, redacted.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sockets.conftest import ROOT, wait_for
from tests.sockets.serve_harness import PeelServe
from tests.sockets.upstreams import ThreadServer, read_body, read_head

SECRET_COOKIE = "session=s3cr3t-value"


class Json(ThreadServer):
    """Answers `{"name": ..., "price": ..., "nonce": <random>}` (JSON) with a Set-Cookie, or
    (`mode`) hangs without answering, or closes the connection; records what it saw."""

    def __init__(self, name: str, price: int = 10, mode: str = "answer") -> None:
        super().__init__()
        self.name = name
        self.price = price
        self.mode = mode
        self.seen: list[tuple[str, str, dict[str, str], int]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     number: int) -> None:
        while (head := await read_head(reader)) is not None:
            method, target, headers = head
            length, _ = await read_body(reader, headers)
            self.seen.append((method, target, {k.lower(): v for k, v in headers}, length))
            if self.mode == "hang":
                await asyncio.Event().wait()
            if self.mode == "close":
                writer.close()
                return
            body = json.dumps({"name": "widget", "price": self.price,
                               "nonce": secrets.token_urlsafe(9)}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Set-Cookie: %s-%s\r\nX-Side: %s\r\nContent-Length: %d\r\n\r\n%s"
                         % (SECRET_COOKIE.encode(), self.name.encode(), self.name.encode(), len(body),
                            body))
            await writer.drain()


class Sides:
    def __init__(self) -> None:
        self.legacy = Json("legacy").start()
        self.same = Json("same").start()
        self.differs = Json("differs", price=11).start()
        self.hangs = Json("hangs", mode="hang").start()
        self.fails = Json("fails", mode="close").start()
        self.writes = Json("writes").start()
        self.allowed = Json("allowed").start()

    def all(self) -> list[Json]:
        return [self.legacy, self.same, self.differs, self.hangs, self.fails, self.writes, self.allowed]

    def stop(self) -> None:
        for server in self.all():
            server.stop()


def document(s: Sides) -> dict[str, Any]:
    services = [{"name": n, "endpoints": [getattr(s, n).url]}
                for n in ("legacy", "same", "differs", "hangs", "fails", "writes", "allowed")]
    compare = {"headers": ["content-type", "set-cookie"]}

    def route(name: str, to: str, **shadow: Any) -> dict[str, Any]:
        return {"name": name, "match": {"path_prefix": f"/{name}"}, "service": "legacy",
                "migration": {"to": to, "stage": "shadow", "shadow": {"compare": compare, **shadow}}}

    return {"services": services, "routes": [
        route("noise", "differs", baseline_percent=100),
        route("hang", "hangs", timeout="30s", concurrency=1, queue=2),
        route("fail", "fails"),
        route("heavy", "hangs", timeout="30s", concurrency=1, queue=1000, unsafe_methods=True),
        route("post", "writes"),
        # the baseline's second copy to `from` is never a POST, whatever `to` may get
        route("unsafe", "allowed", unsafe_methods=True, baseline_percent=100),
        route("sampled", "same", percent=20),
        {"name": "direct", "match": {"path_prefix": "/direct"}, "service": "legacy"},
    ]}


@pytest.fixture(scope="module")
def sides() -> Iterator[Sides]:
    running = Sides()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def gateway(sides: Sides, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PeelServe, str]]:
    peel = PeelServe(tmp_path_factory.mktemp("shadow"),
                     extra_settings="[facade]\ncounts_interval = 0.2\n")
    token = peel.upgrade_with_token()
    peel.commit(document(sides))
    peel.start()
    yield peel, token
    peel.stop()


def _requests(peel: PeelServe, method: str, path: str, n: int, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> list[tuple[int, dict[str, str], bytes, float]]:
    """`n` requests on one keep-alive connection: (status, headers, body, seconds) each."""
    conn = http.client.HTTPConnection("127.0.0.1", peel.public_port, timeout=20)
    out = []
    try:
        for _ in range(n):
            t0 = time.monotonic()
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            out.append((response.status, {k.lower(): v for k, v in response.getheaders()}, data,
                        time.monotonic() - t0))
    finally:
        conn.close()
    return out


def _report(peel: PeelServe, token: str, route: str) -> dict[str, Any]:
    status, body = peel.admin_get(f"/api/v1/migrations/{route}/shadow", token)
    assert status == 200, body
    report: dict[str, Any] = json.loads(body)["shadow"]
    return report


def _is_primary(status: int, headers: dict[str, str], body: bytes) -> bool:
    """The answer is legacy's, untouched: its status, headers and JSON shape."""
    data = json.loads(body)
    return (status == 200 and headers.get("x-side") == "legacy"
            and headers.get("set-cookie") == f"{SECRET_COOKIE}-legacy"
            and set(data) == {"name", "price", "nonce"} and data["price"] == 10
            and "peel-shadow" not in headers)


def test_a_hanging_or_failing_to_leaves_the_primary_unchanged(gateway: tuple[PeelServe, str],
                                                              sides: Sides) -> None:
    peel, token = gateway
    for route, server in (("hang", sides.hangs), ("fail", sides.fails)):
        answers = _requests(peel, "GET", f"/{route}/item", 20)
        for status, headers, body, _ in answers:
            assert _is_primary(status, headers, body), (route, status, headers, body)
        # The copies went out (the shadow ran), and the primary never waited for them: `hangs`
        # holds each copy for its 30 s timeout, yet 20 answers came, each well within it.
        def reached(server: Json = server) -> bool:
            return len(server.seen) >= 1

        wait_for(reached, 20, f"a copy to reach {route}")
        assert max(seconds for *_, seconds in answers) < 10
    # One copy hangs, two wait in the queue, the rest are dropped and counted.
    wait_for(lambda: _report(peel, token, "hang")["dropped"] >= 10, 20, "dropped copies counted")
    assert len(sides.hangs.seen) == 1
    wait_for(lambda: _report(peel, token, "fail")["failed"] >= 15, 20, "failed copies counted")
    assert _report(peel, token, "fail")["pairs"] == 0


def test_the_bytes_a_lane_holds_are_bounded(gateway: tuple[PeelServe, str], sides: Sides) -> None:
    """A queue of 1,000 would hold 1,000 bodies of up to 1 MiB: the lane's bytes are bounded
    (16 MiB) and the copies past them are dropped, while the primary answers every request."""
    peel, token = gateway
    body = b"x" * 900_000
    for status, headers, answer, _ in _requests(peel, "POST", "/heavy/upload", 30, body=body):
        assert _is_primary(status, headers, answer)
    wait_for(lambda: _report(peel, token, "heavy")["dropped"] >= 12, 20, "dropped copies counted")
    # 16 MiB of 900 kB bodies: the one in flight and 17 waiting; the other 12 dropped.
    assert _report(peel, token, "heavy")["dropped"] == 12


def test_a_post_never_reaches_to_unless_allowed(gateway: tuple[PeelServe, str], sides: Sides) -> None:
    peel, token = gateway
    for status, headers, body, _ in _requests(peel, "POST", "/post/orders", 5, body=b'{"n": 1}'):
        assert _is_primary(status, headers, body)
    for status, headers, body, _ in _requests(peel, "GET", "/post/orders", 3):
        assert _is_primary(status, headers, body)
    wait_for(lambda: len(sides.writes.seen) >= 3, 20, "the GET copies")
    wait_for(lambda: _report(peel, token, "post")["skipped"] >= 5, 20, "skipped POSTs counted")
    assert [m for m, *_ in sides.writes.seen] == ["GET"] * 3
    posts = [seen for seen in sides.legacy.seen if seen[0] == "POST" and seen[1] == "/post/orders"]
    assert len(posts) == 5  # the primary got every one, once
    # With unsafe_methods: the POST is copied, with its body and the marker header.
    for status, headers, body, _ in _requests(peel, "POST", "/unsafe/orders", 2, body=b'{"n": 2}'):
        assert _is_primary(status, headers, body)
    wait_for(lambda: len(sides.allowed.seen) >= 2, 20, "the allowed POST copies")
    method, target, headers, length = sides.allowed.seen[0]
    assert (method, target, length) == ("POST", "/unsafe/orders", 8)
    assert headers["peel-shadow"] == "1"
    assert "peel-shadow" not in sides.legacy.seen[-1][2]
    # A client cannot mark its own request as a copy: the marker is stripped on every route.
    for path in ("/direct/x", "/post/x"):
        status, headers, body, _ = _requests(peel, "POST", path, 1, b"{}", {"Peel-Shadow": "1"})[0]
        assert _is_primary(status, headers, body)
        assert sides.legacy.seen[-1][1] == path and "peel-shadow" not in sides.legacy.seen[-1][2]
    wait_for(lambda: _report(peel, token, "unsafe")["pairs"] >= 2, 20, "the POST pairs counted")
    posts = [seen for seen in sides.legacy.seen if seen[1] == "/unsafe/orders"]
    assert [m for m, *_ in posts] == ["POST", "POST"]  # the primaries only: no second write
    assert _report(peel, token, "unsafe")["baseline"]["pairs"] == 0


def test_noise_is_recognised_and_a_real_difference_reported(gateway: tuple[PeelServe, str],
                                                            sides: Sides) -> None:
    peel, token = gateway
    answers = _requests(peel, "GET", "/noise/item", 220, headers={"Authorization": "Bearer hunter2"})
    for status, headers, body, _ in answers:
        assert _is_primary(status, headers, body)
    wait_for(lambda: _report(peel, token, "noise")["baseline"]["pairs"] >= 200, 30,
             "200 compared pairs with their baseline")
    report = _report(peel, token, "noise")
    verdicts = {f["field"]: f["verdict"] for f in report["fields"]}
    assert verdicts["$.price"] == "regression"
    assert verdicts["$.nonce"] == "noise"  # differs in every pair, old-vs-old too
    # Set-Cookie differs (legacy vs differs) but its value is never shown.
    assert verdicts["headers.set-cookie"] == "regression"
    assert report["regressions"] == 2
    assert report["mismatch_rate"] == 1.0 and report["interval"][0] > 0.9
    assert report["examples"]
    example = report["examples"][0]
    assert example["primary"]["headers"]["set-cookie"] == "<redacted>"
    text = json.dumps(report)
    assert "s3cr3t" not in text and "hunter2" not in text
    # Every copy to `to` was marked; the baseline's second copies went to `from`, marked too.
    assert all(h.get("peel-shadow") == "1" for _, _, h, _ in sides.differs.seen)
    marked = [h for m, t, h, _ in sides.legacy.seen if t == "/noise/item" and h.get("peel-shadow")]
    assert len(marked) >= 200


def test_sampling_and_the_cli_report(gateway: tuple[PeelServe, str], sides: Sides) -> None:
    peel, token = gateway
    _requests(peel, "GET", "/sampled/x", 200)
    wait_for(lambda: _report(peel, token, "sampled")["pairs"] >= 10, 20, "sampled pairs")
    pairs = _report(peel, token, "sampled")["pairs"]
    assert 10 <= pairs <= 80  # 20 % of 200: 40 expected (binomial: within 10-80 with margin)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
    env.update(PEEL_ADMIN_URL=f"http://127.0.0.1:{peel.admin_port}", PEEL_ADMIN_TOKEN=token)
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "shadow", "report", "noise"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "route noise: legacy -> differs, stage shadow" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(("$.", "headers."))}
    assert "regression" in lines["$.price"] and "noise" in lines["$.nonce"]
    assert "s3cr3t" not in out
    missing = subprocess.run([sys.executable, "-m", "gateway.cli", "shadow", "report", "direct"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "has no migration" in missing.stderr


def test_counts_survive_a_restart(gateway: tuple[PeelServe, str], tmp_path: Path) -> None:
    peel, token = gateway
    before = _report(peel, token, "noise")
    peel.stop()
    peel.start()
    after = _report(peel, token, "noise")
    assert after["pairs"] == before["pairs"] >= 200
