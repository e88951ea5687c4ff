"""A WebSocket handshake goes through the same resolve step as any request (issue 10): the route's
rate limit answers 429 past its rate, and the handshake is a request in `/metrics` and in traces."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.otlp_receiver import OtlpReceiver
from tests.sockets.conftest import wait_for
from tests.sockets.serve_harness import PeelServe
from tests.sockets.test_websocket import WsUpstream

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PeelServe, WsUpstream, OtlpReceiver,
                                                                       str]]:
    ws = WsUpstream().start()
    with OtlpReceiver() as receiver:
        tmp: Path = tmp_path_factory.mktemp("ws-policies")
        peel = PeelServe(tmp, extra_settings=f'[tracing]\nendpoint = "{receiver.url}"\nsample_ratio = 1.0\n')
        token = peel.upgrade_with_token()
        peel.commit({"services": [{"name": "ws", "endpoints": [ws.url]}],
                     "routes": [{"name": "live", "match": {"path_prefix": "/live"}, "service": "ws",
                                 "websocket": True, "rate_limit": {"requests": 2, "per": "1h"}},
                                {"name": "open", "match": {"path_prefix": "/open"}, "service": "ws",
                                 "websocket": True}]})
        peel.start()
        try:
            yield peel, ws, receiver, token
        finally:
            peel.stop()
            ws.stop()


def _sample(metrics: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_websocket_route_with_a_rate_limit_answers_429_past_its_rate_and_is_measured(
        served: tuple[PeelServe, WsUpstream, OtlpReceiver, str]) -> None:
    peel, ws, receiver, token = served
    uri = f"ws://127.0.0.1:{peel.public_port}/live/echo"
    for _ in range(2):
        with connect(uri, open_timeout=10) as conn:
            assert conn.response is not None
            assert conn.response.headers["RateLimit-Policy"]
            conn.send("hi")
            assert conn.recv(timeout=10) == "hi"
    with pytest.raises(InvalidStatus) as refused:
        connect(uri, open_timeout=10)
    response = refused.value.response
    assert response.status_code == 429
    assert response.headers["Retry-After"]
    assert b'"rate-limited"' in response.body
    # The route without a limit is not affected.
    with connect(f"ws://127.0.0.1:{peel.public_port}/open/echo", open_timeout=10) as conn:
        conn.send("x")
        assert conn.recv(timeout=10) == "x"
    assert sum(h.path.startswith("/live") for h in ws.handshakes) == 2

    def metrics() -> str:
        status, body = peel.admin_get("/metrics", token)
        assert status == 200
        return body.decode()

    wait_for(lambda: _sample(metrics(), "peel_rate_limited_total", route="live") == 1, 15,
             "the refused handshake in peel_rate_limited_total")
    text = metrics()
    assert _sample(text, "peel_requests_total", route="live", status_class="1xx") == 2
    assert _sample(text, "peel_requests_total", route="live", status_class="4xx") == 1
    assert _sample(text, "peel_requests_total", route="open", status_class="1xx") == 1

    spans = receiver.wait_for(lambda all_spans: sum(s.kind == "server" and s.attributes.get("http.route")
                                                    == "live" for s in all_spans) >= 3)
    live = [s for s in spans if s.kind == "server" and s.attributes.get("http.route") == "live"]
    assert sorted(s.attributes["http.response.status_code"] for s in live) == [101, 101, 429]
    accepted = [s for s in live if s.attributes["http.response.status_code"] == 101]
    # The upstream handshake carried the attempt's context: a client span under each server span.
    for server in accepted:
        [client] = [s for s in spans if s.kind == "client" and s.parent_id == server.span_id]
        assert client.attributes["peel.endpoint"] == ws.url
    traceparents = [h.headers.get("traceparent") for h in ws.handshakes if h.path.startswith("/live")]
    assert all(tp and tp.split("-")[1] in {s.trace_id for s in accepted} for tp in traceparents)
    log = (peel.tmp / "access.log").read_text()
    assert log.count('"route":"live"') == 3 or log.count('"route": "live"') == 3
