"""A real OTLP/HTTP trace receiver for the tests: `POST /v1/traces` with protobuf bodies.

It listens on 127.0.0.1:0 in threads of the test process, decodes every
`ExportTraceServiceRequest` with opentelemetry-proto, and keeps the spans (`ReceivedSpan`, ids in
hex) for assertions. `delay` makes it a slow collector (each POST is answered after that many
seconds, or at `close()`), `status` a failing one.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

KINDS = {Span.SPAN_KIND_INTERNAL: "internal", Span.SPAN_KIND_SERVER: "server",
         Span.SPAN_KIND_CLIENT: "client", Span.SPAN_KIND_PRODUCER: "producer",
         Span.SPAN_KIND_CONSUMER: "consumer"}


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, which) if which else None


@dataclass
class ReceivedSpan:
    """One span as the collector saw it."""

    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    name: str
    kind: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status: int  # 0 unset, 1 ok, 2 error
    start_ns: int
    end_ns: int
    trace_state: str = ""


@dataclass
class OtlpReceiver:
    """`with OtlpReceiver() as receiver:` … `receiver.url`, `receiver.wait_for(n)`."""

    delay: float = 0.0
    status: int = 200
    spans: list[ReceivedSpan] = field(default_factory=list)
    posts: int = 0
    content_types: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver._received(self.path, self.headers.get("Content-Type") or "",
                                   self.headers.get("Content-Encoding") or "", body)
                if receiver.delay:
                    # A slow collector: the exporter waits for this answer (released at close()).
                    receiver._closing.wait(receiver.delay)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(receiver.status if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver",
                                        daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def _received(self, path: str, content_type: str, encoding: str, body: bytes) -> None:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        spans: list[ReceivedSpan] = []
        if path == "/v1/traces":
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        spans.append(ReceivedSpan(
                            trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(), name=span.name,
                            kind=KINDS.get(span.kind, "unspecified"),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            resource=resource, status=span.status.code,
                            start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                            trace_state=span.trace_state))
        with self._changed:
            self.posts += 1
            self.content_types.append(content_type)
            self.spans.extend(spans)
            self._changed.notify_all()

    def wait_for(self, condition: Callable[[list[ReceivedSpan]], bool] | int, timeout: float = 10.0,
                 ) -> list[ReceivedSpan]:
        """The spans once `condition(spans)` holds (an int: that many spans); fails after `timeout`."""
        test = (lambda spans: len(spans) >= condition) if isinstance(condition, int) else condition
        deadline = time.monotonic() + timeout
        with self._changed:
            while not test(self.spans):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the collector did not get the expected spans in {timeout} s; "
                                         f"it has {len(self.spans)}: {[s.name for s in self.spans]}")
                self._changed.wait(left)
            return list(self.spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]
