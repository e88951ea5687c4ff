"""Traces on real sockets: OTLP/HTTP export to a real receiver, slow and unreachable collectors,
and a real `peel serve` whose spans and upstream headers are checked (issue 5, parts 1 and 4).

The receiver (`tests/otlp_receiver.py`) decodes the protobuf requests with opentelemetry-proto,
so these tests see exactly what a collector would.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.core.settings import TracingSettings
from gateway.telemetry.tracing import Tracing
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.sockets.conftest import wait_for
from tests.sockets.serve_harness import PeelServe
from tests.sockets.upstreams import Refusing, ScriptedUpstream

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
HEADERS = [(b"host", b"shop.example"), (b"accept", b"*/*")]


def exercise(tracing: Tracing, requests: int) -> float:
    """`requests` sampled requests with one attempt each, as the data plane makes them; seconds."""
    started = time.perf_counter()
    for _ in range(requests):
        trace = tracing.start(HEADERS, "127.0.0.1", "GET", "/orders", "shop.example")
        trace.route("orders", "orders", None)
        attempt = trace.attempt("http://127.0.0.1:9", 1, None)
        attempt.headers()
        attempt.end(200, None)
        trace.end(200, None)
    return time.perf_counter() - started


# --- the exporter against a real collector -----------------------------------------------------

def test_spans_reach_a_collector_as_otlp_protobuf_with_their_links() -> None:
    with OtlpReceiver() as receiver:
        tracing = Tracing(TracingSettings(sample_ratio=0.0, endpoint=receiver.url, service_name="edge"))
        trace = tracing.start([*HEADERS, (b"traceparent", f"00-{TRACE}-{PARENT}-01".encode()),
                               (b"tracestate", b"congo=t61rcWkgMzE")],
                              "127.0.0.1", "GET", "/orders/1", "shop.example")
        trace.route("orders", "orders", None)
        first = trace.attempt("http://127.0.0.1:8081", 1, None)
        first.end(None, "upstream-connect-failed")
        second = trace.attempt("http://127.0.0.1:8082", 2, None)
        second.end(200, None)
        trace.end(200, None)
        tracing.shutdown(5.0)
        spans = receiver.wait_for(3)
    assert set(receiver.content_types) == {"application/x-protobuf"}
    [server] = [s for s in spans if s.kind == "server"]
    clients = sorted((s for s in spans if s.kind == "client"), key=lambda s: s.attributes["peel.attempt"])
    assert (server.trace_id, server.parent_id, server.span_id) == (TRACE, PARENT, trace.span_id)
    assert server.name == "GET orders" and server.trace_state == "congo=t61rcWkgMzE"
    assert server.resource["service.name"] == "edge"
    assert [c.span_id for c in clients] == [first.span_id, second.span_id]
    assert all(c.parent_id == server.span_id and c.trace_id == TRACE for c in clients)
    assert clients[0].attributes["error.type"] == "upstream-connect-failed" and clients[0].status == 2
    assert clients[1].attributes["http.response.status_code"] == 200
    assert clients[1].attributes["server.port"] == 8082


def test_a_slow_collector_never_slows_requests() -> None:
    # Every POST is answered after 5 s: the export thread is stuck, the queue fills, spans drop.
    with OtlpReceiver(delay=5.0) as receiver:
        tracing = Tracing(TracingSettings(sample_ratio=1.0, endpoint=receiver.url, max_queue=256,
                                          export_timeout=5.0))
        exercise(tracing, 10)  # warm up: the first export is on its way
        wait_for(lambda: receiver.posts >= 1, 10, "the first export to reach the slow collector")
        elapsed = exercise(tracing, 2000)
        stats = tracing.stats()
        started = time.monotonic()
        tracing.shutdown(0.5)
        shutdown = time.monotonic() - started
    # one request waiting on the collector would take its 5 s delay; a margin for a loaded machine
    assert elapsed < 4.0, f"2000 sampled requests took {elapsed:.2f} s with a slow collector"
    assert stats["dropped"] >= 4000 - 2 * 256, stats  # what does not fit is dropped and counted
    assert shutdown < 2.0


def test_an_unreachable_collector_never_slows_requests() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1/traces"
        tracing = Tracing(TracingSettings(sample_ratio=1.0, endpoint=url, max_queue=512,
                                          export_timeout=1.0))
        elapsed = exercise(tracing, 2000)
        # The export thread keeps trying (and failing) on its own, and the failures are counted.
        wait_for(lambda: tracing.stats()["failed"] > 0, 15, "a failed export to be counted")
        started = time.monotonic()
        tracing.shutdown(0.5)
        shutdown = time.monotonic() - started
    assert elapsed < 4.0, f"2000 sampled requests took {elapsed:.2f} s with no collector"
    assert tracing.stats()["dropped"] > 0
    assert shutdown < 2.0


# --- a real peel serve -------------------------------------------------------------------------

# `flaky`: round-robin over a refusing endpoint and a good one, so one of two requests is retried;
# `shipping` is migrated to a refusing service and falls back to `orders`.
DOCUMENT = """\
services:
  - name: orders
    endpoints: [{url}]
  - name: flaky
    endpoints: [{refusing}, {url}]
    balancer: {{policy: round_robin}}
    outlier: false
    retries: {{attempts: 2, retry_on: [connect-failure], budget_percent: 100, backoff_base: 1ms,
               backoff_max: 5ms}}
  - name: gone
    endpoints: [{refusing}]
    outlier: false
routes:
  - {{name: orders, match: {{path_prefix: /orders}}, service: orders}}
  - {{name: flaky, match: {{path_prefix: /flaky}}, service: flaky}}
  - name: shipping
    match: {{path_prefix: /shipping}}
    service: orders
    migration: {{to: gone, stage: migrated, fallback: {{max_body: 1024}}}}
"""


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PeelServe, OtlpReceiver,
                                                                       ScriptedUpstream]]:
    upstream = ScriptedUpstream()
    upstream.start()
    refusing = Refusing()
    with OtlpReceiver() as receiver:
        tmp: Path = tmp_path_factory.mktemp("tracing")
        peel = PeelServe(tmp, extra_settings=(f'[tracing]\nendpoint = "{receiver.url}"\n'
                                              f"sample_ratio = 1.0\n"))
        peel.store().upgrade()
        peel.commit(yaml.safe_load(DOCUMENT.format(url=upstream.url, refusing=refusing.url)))
        peel.start()
        try:
            yield peel, receiver, upstream
        finally:
            peel.stop()
            upstream.stop()
            refusing.stop()


def send(peel: PeelServe, path: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", peel.public_port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def seen_header(upstream: ScriptedUpstream, path: str, name: str) -> str:
    wait_for(lambda: any(s.target == path for s in upstream.seen), 10, f"{path} at the upstream")
    [seen] = [s for s in upstream.seen if s.target == path]
    value = seen.header(name)
    assert value is not None, f"the upstream got no {name}: {seen.headers}"
    return value


def spans_of(receiver: OtlpReceiver, trace_id: str, count: int = 2) -> tuple[ReceivedSpan, ReceivedSpan]:
    spans = receiver.wait_for(lambda all_spans: sum(s.trace_id == trace_id for s in all_spans) >= count)
    mine = [s for s in spans if s.trace_id == trace_id]
    [server] = [s for s in mine if s.kind == "server"]
    [client] = [s for s in mine if s.kind == "client"]
    return server, client


def test_a_request_without_context_starts_a_trace_the_upstream_sees(
        traced: tuple[PeelServe, OtlpReceiver, ScriptedUpstream]) -> None:
    peel, receiver, upstream = traced
    assert send(peel, "/orders/none") == 200
    version, trace_id, parent_id, flags = seen_header(upstream, "/orders/none", "traceparent").split("-")
    assert (version, flags) == ("00", "01") and len(trace_id) == 32
    server, client = spans_of(receiver, trace_id)
    assert server.parent_id == "" and server.name == "GET orders"
    assert client.span_id == parent_id and client.parent_id == server.span_id
    assert server.attributes["http.route"] == "orders"
    assert server.attributes["url.path"] == "/orders/none"
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["peel.service"] == "orders"
    assert client.attributes["peel.endpoint"] == upstream.url
    assert client.attributes["peel.attempt"] == 1
    assert client.attributes["http.response.status_code"] == 200
    assert server.resource["service.name"] == "peel"


def test_a_client_w3c_context_is_continued(
        traced: tuple[PeelServe, OtlpReceiver, ScriptedUpstream]) -> None:
    peel, receiver, upstream = traced
    assert send(peel, "/orders/w3c", {"traceparent": f"00-{TRACE}-{PARENT}-01",
                                      "tracestate": "vendor=1", "baggage": "user=7"}) == 200
    sent = seen_header(upstream, "/orders/w3c", "traceparent").split("-")
    assert sent[1] == TRACE and sent[3] == "01"
    assert seen_header(upstream, "/orders/w3c", "tracestate") == "vendor=1"
    assert seen_header(upstream, "/orders/w3c", "baggage") == "user=7"
    server, client = spans_of(receiver, TRACE)
    assert server.parent_id == PARENT and client.parent_id == server.span_id
    assert client.span_id == sent[2]


def test_a_client_b3_context_is_continued(
        traced: tuple[PeelServe, OtlpReceiver, ScriptedUpstream]) -> None:
    peel, receiver, upstream = traced
    b3_trace, b3_span = "80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1"
    assert send(peel, "/orders/b3", {"b3": f"{b3_trace}-{b3_span}-1"}) == 200
    server, client = spans_of(receiver, b3_trace)
    assert server.parent_id == b3_span
    assert seen_header(upstream, "/orders/b3", "b3") == f"{b3_trace}-{client.span_id}-1-{server.span_id}"
    assert seen_header(upstream, "/orders/b3", "traceparent") == f"00-{b3_trace}-{client.span_id}-01"

    multi_trace, multi_span = "463ac35c9f6413ad", "a2fb4a1d1a96d312"
    assert send(peel, "/orders/b3multi", {"X-B3-TraceId": multi_trace, "X-B3-SpanId": multi_span,
                                          "X-B3-Sampled": "1"}) == 200
    server, client = spans_of(receiver, multi_trace.rjust(32, "0"))
    assert server.parent_id == multi_span
    assert seen_header(upstream, "/orders/b3multi", "x-b3-traceid") == multi_trace
    assert seen_header(upstream, "/orders/b3multi", "x-b3-spanid") == client.span_id
    assert seen_header(upstream, "/orders/b3multi", "x-b3-parentspanid") == server.span_id


def trace_of(receiver: OtlpReceiver, upstream: ScriptedUpstream, path: str,
             clients: int) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    """The server span and the client spans (in the order they started) of the request the upstream saw."""
    trace_id = seen_header(upstream, path, "traceparent").split("-")[1]
    spans = receiver.wait_for(lambda all_spans: sum(s.trace_id == trace_id for s in all_spans)
                              >= clients + 1)
    mine = [s for s in spans if s.trace_id == trace_id]
    [server] = [s for s in mine if s.kind == "server"]
    attempts = sorted((s for s in mine if s.kind == "client"), key=lambda s: s.start_ns)
    assert all(c.parent_id == server.span_id for c in attempts)
    return server, attempts


def test_a_retry_is_a_second_client_span(
        traced: tuple[PeelServe, OtlpReceiver, ScriptedUpstream]) -> None:
    peel, receiver, upstream = traced
    # Round-robin over [refusing, good]: one of two requests meets the refusing endpoint first.
    assert send(peel, "/flaky/1") == 200 and send(peel, "/flaky/2") == 200
    traces = [trace_of(receiver, upstream, path, 1) for path in ("/flaky/1", "/flaky/2")]
    retried = [(server, attempts) for server, attempts in traces if len(attempts) == 2]
    assert len(retried) == 1, [[a.attributes for a in attempts] for _, attempts in traces]
    server, (first, second) = retried[0]
    assert first.attributes["peel.attempt"] == 1 and second.attributes["peel.attempt"] == 2
    assert first.attributes["error.type"] == "upstream-connect-failed" and first.status == 2
    assert "http.response.status_code" not in first.attributes
    assert second.attributes["http.response.status_code"] == 200
    assert second.attributes["peel.endpoint"] == upstream.url
    assert server.attributes["http.route"] == "flaky" and server.status != 2


def test_a_fallback_shows_the_failed_to_attempt_and_the_from_answer(
        traced: tuple[PeelServe, OtlpReceiver, ScriptedUpstream]) -> None:
    peel, receiver, upstream = traced
    assert send(peel, "/shipping/1") == 200
    server, attempts = trace_of(receiver, upstream, "/shipping/1", 2)
    *to_attempts, answer = attempts
    seen = [(a.status, a.attributes) for a in attempts]
    assert to_attempts and all(a.attributes["peel.side"] == "to" and a.status == 2
                               for a in to_attempts), seen
    assert all(a.attributes["peel.service"] == "gone" for a in to_attempts), seen
    assert [a.attributes["peel.attempt"] for a in to_attempts] == list(range(1, len(to_attempts) + 1))
    assert answer.attributes["peel.side"] == "from" and answer.attributes["peel.service"] == "orders"
    assert answer.attributes["peel.attempt"] == 1  # its first try at `from`
    assert answer.attributes["peel.fallback"] == "upstream-connect-failed"
    assert answer.attributes["http.response.status_code"] == 200
    assert server.attributes["peel.fallback"] == "upstream-connect-failed"
    assert server.attributes["peel.stage"] == "migrated" and server.attributes["peel.side"] == "from"
    assert server.attributes["http.route"] == "shipping"
