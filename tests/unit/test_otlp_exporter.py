"""Peel's OTLP/HTTP span exporter against a real local collector (`gateway.telemetry.export`).

The collector here is a scripted `ThreadingHTTPServer` on 127.0.0.1:0: it answers each POST with
the next status of its script, counts the connections it accepts, and keeps what it received
(headers, decoded `ExportTraceServiceRequest`s), so the tests see what a collector would.
"""

from __future__ import annotations

import datetime
import gzip
import logging
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.core.errors import ConfigError
from gateway.core.settings import TracingSettings
from gateway.telemetry import export as trace_export
from gateway.telemetry.export import OtlpHttpExporter, export_log, make_exporter, parse_headers

ROOT = Path(__file__).resolve().parents[2]



class RecordingEvent(threading.Event):
    """The exporter's shutdown event, which it also waits on for each backoff: records the waits."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is not None:
            self.waits.append(timeout)
        return super().wait(timeout)


def record_backoff(exporter: OtlpHttpExporter) -> list[float]:
    """The list the exporter's backoff waits are appended to (seconds), instead of timing them."""
    event = RecordingEvent()
    exporter._closed = event
    return event.waits

def spans(*names: str) -> list[ReadableSpan]:
    """Finished SDK spans, one per name, each with a `peel.n` attribute."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    for n, name in enumerate(names):
        with tracer.start_as_current_span(name, attributes={"peel.n": n}):
            pass
    return list(memory.get_finished_spans())


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    request: ExportTraceServiceRequest

    def names(self) -> list[str]:
        return [s.name for rs in self.request.resource_spans for ss in rs.scope_spans for s in ss.spans]


@dataclass
class Collector:
    """Answers POSTs with `script` statuses in turn (then 200); `(status, retry_after)` pairs allowed."""

    script: list[int | tuple[int, str]] = field(default_factory=list)
    tls: ssl.SSLContext | None = None
    hang_up: bool = False  # close each connection after its answer, without `Connection: close`
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    hung_up: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with collector._changed:
                    collector.received.append(Received(
                        self.path, {k.lower(): v for k, v in self.headers.items()},
                        ExportTraceServiceRequest.FromString(body)))
                    collector._changed.notify_all()
                    step = collector.script.pop(0) if collector.script else 200
                status, retry_after = step if isinstance(step, tuple) else (step, None)
                self.send_response(status)
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.close_connection = collector.hang_up

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def get_request(self) -> tuple[socket.socket, Any]:
                sock, address = super().get_request()
                with collector._lock:
                    collector.connections += 1
                if collector.tls is not None:
                    sock = collector.tls.wrap_socket(sock, server_side=True)
                return sock, address

            def shutdown_request(self, request: Any) -> None:
                super().shutdown_request(request)
                with collector._changed:
                    collector.hung_up += 1
                    collector._changed.notify_all()

        self._server = Server(("127.0.0.1", 0), Handler)
        scheme = "https" if self.tls is not None else "http"
        self.url = f"{scheme}://localhost:{self._server.server_address[1]}/v1/traces"
        # A short poll interval: close() waits for the serving loop to notice.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def wait(self, condition: Any, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                left = deadline - time.monotonic()
                assert left > 0, "the collector did not get there in time"
                self._changed.wait(left)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


@pytest.fixture(autouse=True)
def fresh_warning_throttle() -> None:
    """The export logger lets each warning template through once a minute per process; a test that
    counts warnings must not depend on whether an earlier test of the run logged the same one."""
    for throttle in export_log.filters:
        memory = getattr(throttle, "_last", None)
        if isinstance(memory, dict):
            memory.clear()


@pytest.fixture(autouse=True)
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HEADERS", "CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY", "COMPRESSION"):
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{name}", raising=False)
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_TRACES_{name}", raising=False)


def test_spans_arrive_as_otlp_protobuf_with_names_and_attributes(collector: Collector) -> None:
    exporter = OtlpHttpExporter(collector.url + "?tenant=a", timeout=5.0)
    assert exporter.export(spans("GET orders", "GET")) is SpanExportResult.SUCCESS
    [got] = collector.received
    assert got.path == "/v1/traces?tenant=a"
    assert got.headers["content-type"] == "application/x-protobuf"
    assert got.headers["user-agent"] == "peel"
    assert "content-encoding" not in got.headers
    [sent] = [s for rs in got.request.resource_spans for ss in rs.scope_spans for s in ss.spans
              if s.name == "GET orders"]
    assert {a.key: a.value.int_value for a in sent.attributes} == {"peel.n": 0}
    assert got.names() == ["GET orders", "GET"]


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_batch_encoded_in_chunks_reads_as_the_whole_batch(gzipped: bool,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    batch = spans(*(f"span-{n}" for n in range(2 * trace_export.ENCODE_CHUNK + 3)))
    turns: list[float] = []
    monkeypatch.setattr(trace_export.time, "sleep", turns.append)
    body = trace_export.encode(batch, gzipped)
    assert turns == [0, 0]  # the event loop's turns between the three chunks
    request = ExportTraceServiceRequest()
    request.ParseFromString(gzip.decompress(body) if gzipped else body)
    got = [(span.name, span.span_id, span.attributes[0].value.int_value)
           for resource in request.resource_spans for scope in resource.scope_spans for span in scope.spans]
    assert got == [(span.name, span.context.span_id.to_bytes(8, "big"), n) for n, span in enumerate(batch)]
    whole = ExportTraceServiceRequest()
    whole.ParseFromString(trace_export.encode_spans(batch))
    assert {resource.resource.SerializeToString() for resource in request.resource_spans} == \
        {whole.resource_spans[0].resource.SerializeToString()}


def test_one_connection_carries_successive_exports(collector: Collector) -> None:
    exporter = OtlpHttpExporter(collector.url, timeout=5.0)
    for name in ("first", "second", "third"):
        assert exporter.export(spans(name)) is SpanExportResult.SUCCESS
    assert [r.names() for r in collector.received] == [["first"], ["second"], ["third"]]
    assert collector.connections == 1


def test_a_kept_alive_connection_the_collector_closed_is_reopened_at_once() -> None:
    # The collector closes each connection after its answer without saying so (as an idle
    # timeout would): the next export finds it dead and must reconnect without a backoff.
    collector = Collector(hang_up=True)
    try:
        exporter = OtlpHttpExporter(collector.url, timeout=5.0)
        waits = record_backoff(exporter)
        assert exporter.export(spans("first")) is SpanExportResult.SUCCESS
        collector.wait(lambda: collector.hung_up == 1)
        assert exporter.export(spans("second")) is SpanExportResult.SUCCESS
    finally:
        collector.close()
    assert [r.names() for r in collector.received] == [["first"], ["second"]]
    assert collector.connections == 2
    assert waits == []  # no backoff for a stale connection


def test_503_then_200_is_retried_honouring_retry_after() -> None:
    collector = Collector(script=[(503, "0"), (429, "0")])
    try:
        exporter = OtlpHttpExporter(collector.url, timeout=5.0)
        waits = record_backoff(exporter)
        assert exporter.export(spans("retried")) is SpanExportResult.SUCCESS
    finally:
        collector.close()
    assert [r.names() for r in collector.received] == [["retried"]] * 3
    # Retry-After: 0 replaced the 0.25-0.5 s backoff
    assert waits == [0.0, 0.0]


def test_503_without_retry_after_backs_off_then_gives_up_within_the_timeout() -> None:
    collector = Collector(script=[503] * 10)
    try:
        exporter = OtlpHttpExporter(collector.url, timeout=1.2)
        started = time.monotonic()
        assert exporter.export(spans("x")) is SpanExportResult.FAILURE
        elapsed = time.monotonic() - started
    finally:
        collector.close()
    # backoff 0.25-0.5 s, then 0.5-1 s: two or three tries fit in 1.2 s, never ten
    assert 2 <= len(collector.received) <= 3
    assert elapsed < 1.2 + 1.5  # the timeout, with a margin for a loaded machine


def test_400_fails_at_once_without_retry() -> None:
    collector = Collector(script=[400, 400])
    try:
        exporter = OtlpHttpExporter(collector.url, timeout=5.0)
        assert exporter.export(spans("bad")) is SpanExportResult.FAILURE
    finally:
        collector.close()
    assert len(collector.received) == 1


def test_a_collector_that_never_answers_fails_within_the_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog; nothing is ever read or answered
        exporter = OtlpHttpExporter(f"http://127.0.0.1:{silent.getsockname()[1]}/v1/traces",
                                    timeout=1.0)
        started = time.monotonic()
        assert exporter.export(spans("x")) is SpanExportResult.FAILURE
        elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 1.0 + 1.5, elapsed  # the timeout, with a margin for a loaded machine


def test_a_refused_port_fails_quickly() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        exporter = OtlpHttpExporter(f"http://127.0.0.1:{closed.getsockname()[1]}/v1/traces",
                                    timeout=1.0)
        started = time.monotonic()
        assert exporter.export(spans("x")) is SpanExportResult.FAILURE
        elapsed = time.monotonic() - started
    # retried with backoff while the budget allows, but never past it (margin: a loaded machine)
    assert elapsed < 1.0 + 1.5, elapsed


def test_headers_and_gzip_from_the_environment(collector: Collector, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=generic,x-both=generic")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                       "api-key=s3cr%3Dt%20x, x-both=traces,garbage,content-type=text/plain")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    with caplog.at_level(logging.WARNING, "peel.tracing.export"):
        exporter = OtlpHttpExporter(collector.url, timeout=5.0)
    assert exporter.export(spans("zipped")) is SpanExportResult.SUCCESS
    [got] = collector.received
    assert got.names() == ["zipped"]  # the collector gunzipped it
    assert got.headers["content-encoding"] == "gzip"
    assert got.headers["api-key"] == "s3cr=t x"
    assert got.headers["x-both"] == "traces"  # the TRACES variable wins over the generic one
    assert "x-tenant" not in got.headers
    assert got.headers["content-type"] == "application/x-protobuf"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "3, 4" in warnings[0] and "s3cr" not in warnings[0]


@pytest.mark.parametrize(("value", "expected"), [
    ("", {}),
    ("a=1", {"a": "1"}),
    (" A = x%2Cy , b=", {"a": "x,y", "b": ""}),
    ("a=1,=2,b", {"a": "1"}),
    ("bad key=1,c=%0d%0aInjected: 1", {}),
])
def test_header_lists_follow_the_otel_format(value: str, expected: dict[str, str]) -> None:
    assert parse_headers(value) == expected


def test_after_shutdown_exports_fail_and_send_nothing(collector: Collector) -> None:
    exporter = OtlpHttpExporter(collector.url, timeout=5.0)
    assert exporter.export(spans("before")) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert exporter.export(spans("after")) is SpanExportResult.FAILURE
    assert exporter.force_flush() is True
    assert [r.names() for r in collector.received] == [["before"]]


def test_shutdown_cuts_a_backoff_short() -> None:
    collector = Collector(script=[(503, "30")])
    try:
        exporter = OtlpHttpExporter(collector.url, timeout=60.0)
        results: list[SpanExportResult] = []
        worker = threading.Thread(target=lambda: results.append(exporter.export(spans("x"))))
        worker.start()
        collector.wait(lambda: len(collector.received) == 1)
        exporter.shutdown()
        worker.join(5.0)
    finally:
        collector.close()
    assert results == [SpanExportResult.FAILURE]


def test_a_dead_collector_is_one_warning_a_minute(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # A fresh once-a-minute filter, as a new serving process has.
    monkeypatch.setattr(trace_export, "_QUIET", trace_export._OncePerMinute())
    monkeypatch.setattr(trace_export.export_log, "filters", [])
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1/traces"
        exporter = make_exporter(TracingSettings(endpoint=url, export_timeout=0.1))
        assert isinstance(exporter, OtlpHttpExporter)
        with caplog.at_level(logging.WARNING, "peel.tracing.export"):
            for _ in range(3):
                assert exporter.export(spans("x")) is SpanExportResult.FAILURE
    [line] = [r.getMessage() for r in caplog.records]
    assert url in line and "ConnectionRefused" in line


# --- TLS to the collector: a private CA and a client certificate from the environment --------

def _certificate(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                 issuer_key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_file, key_file = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_mutual_tls_with_a_private_ca_from_the_environment(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = _certificate("test CA", ca_key, ca_name, ca_key, ca=True)
    ca_file, _ = _write(tmp_path / "ca", ca, ca_key)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server_files = _write(tmp_path / "server", _certificate("localhost", server_key, ca_name, ca_key, False),
                          server_key)
    client_files = _write(tmp_path / "client", _certificate("peel", client_key, ca_name, ca_key, False),
                          client_key)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(*server_files)
    tls.load_verify_locations(ca_file)
    tls.verify_mode = ssl.CERT_REQUIRED  # the collector insists on a client certificate
    collector = Collector(tls=tls)
    try:
        # Without the CA the collector's certificate is not trusted: a final failure, not retried.
        untrusted = OtlpHttpExporter(collector.url, timeout=5.0)
        waits = record_backoff(untrusted)
        assert untrusted.export(spans("x")) is SpanExportResult.FAILURE
        assert waits == []
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", str(ca_file))
        # With the CA but no client certificate the collector refuses the handshake.
        assert OtlpHttpExporter(collector.url, timeout=1.0).export(spans("x")) is SpanExportResult.FAILURE
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", str(client_files[0]))
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", str(client_files[1]))
        exporter = OtlpHttpExporter(collector.url, timeout=2.0)
        assert exporter.export(spans("secure")) is SpanExportResult.SUCCESS
        assert exporter.export(spans("again")) is SpanExportResult.SUCCESS
    finally:
        collector.close()
    assert [r.names() for r in collector.received] == [["secure"], ["again"]]


@pytest.mark.parametrize(("env", "key"), [
    ({"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"}, "OTEL_EXPORTER_OTLP_CERTIFICATE"),
    ({"OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE": "/nonexistent/client.pem"},
     "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
    ({"OTEL_EXPORTER_OTLP_CLIENT_KEY": "/some/key.pem"}, "OTEL_EXPORTER_OTLP_CLIENT_KEY"),
])
def test_tls_files_that_cannot_be_loaded_are_refused_naming_the_variable(
        env: dict[str, str], key: str) -> None:
    # refused when Peel starts (`peel serve` prints it and exits), not a stream of failed exports
    with pytest.raises(ConfigError) as refused:
        OtlpHttpExporter("https://127.0.0.1:1/v1/traces", environ=env)
    assert refused.value.key == key


# --- what the serving process loads -------------------------------------------------------------

def test_making_the_exporter_leaves_requests_and_protobuf_unloaded() -> None:
    program = (
        "import sys, gateway.telemetry.export as t\n"
        "from gateway.core.settings import TracingSettings\n"
        "e = t.make_exporter(TracingSettings(endpoint='http://127.0.0.1:1/v1/traces'))\n"
        "assert type(e).__name__ == 'OtlpHttpExporter', e\n"
        "from opentelemetry.sdk.trace import ReadableSpan\n"
        "from opentelemetry.trace import SpanContext\n"
        "assert t.encode([ReadableSpan('s', SpanContext(1, 2, False), attributes={'a': 1})], True)\n"
        "loaded = sorted(m for m in ('requests', 'urllib3', 'certifi', 'idna', 'charset_normalizer',\n"
        "                            'opentelemetry.exporter.otlp.proto.http', 'google.protobuf',\n"
        "                            'opentelemetry.proto', 'opentelemetry.exporter.otlp.proto.common')\n"
        "                if m in sys.modules)\n"
        "print(loaded)\n")
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
