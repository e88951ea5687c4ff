"""Span export for `gateway.telemetry.tracing`: OTLP/HTTP or console, bounded, counted, quiet.

`OtlpHttpExporter` posts each batch as OTLP/HTTP protobuf over one persistent `http.client`
connection to the collector (reopened when it breaks), retrying 429/502/503/504 and connection
errors with jittered exponential backoff, all within `export_timeout`. It honours the standard
`OTEL_EXPORTER_OTLP_[TRACES_]{HEADERS,CERTIFICATE,CLIENT_CERTIFICATE,CLIENT_KEY,COMPRESSION}`
variables. It replaces OpenTelemetry's own OTLP/HTTP exporter, which loads `requests` and its
dependencies (about 4.8 MiB in every serving process) for one POST per batch; the body is encoded by
`gateway.telemetry.otlp`, not by OpenTelemetry's protobuf encoder (see there why).

`BoundedExport` puts OpenTelemetry's `BatchSpanProcessor` (its own thread, batches) behind a gate
that drops and counts the spans that would overflow `max_queue`: a slow or unreachable collector
costs the request path only the append of a finished span. The SDK's own queue also drops when
full, but its count goes only to OpenTelemetry's internal metrics, off by default.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import random
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from gateway.core.errors import ConfigError
from gateway.core.settings import TracingSettings
from gateway.telemetry.otlp import encode_spans
from routes.grammar import TOKEN_RE

log = logging.getLogger("peel.tracing")

# How long the batch processor waits to fill a batch before it sends what it has.
SCHEDULE_DELAY = 1.0
MAX_BATCH = 512
ENCODE_CHUNK = 8  # spans encoded between two turns of the event loop (about 0.06 ms compiled)


class CountingExporter(SpanExporter):
    """The real exporter, counting the spans handed to it and those whose export failed."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.handed = 0   # written by the export thread only
        self.exported = 0
        self.failed = 0

    def export(self, spans: Any) -> SpanExportResult:
        self.handed += len(spans)
        try:
            result = self.exporter.export(spans)
        except Exception:
            log.exception("the span exporter failed")
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class BoundedExport(SpanProcessor):
    """A `BatchSpanProcessor` behind a gate that drops, and counts, what would overflow its queue.

    The SDK's own queue also drops when full, but silently (its count goes only to internal OTel
    metrics, off by default). Here `ended - handed` is the number of spans waiting (ended counted
    on the event loop, handed on the export thread: each counter has one writer).
    """

    def __init__(self, exporter: SpanExporter, max_queue: int, export_timeout: float) -> None:
        self.counting = CountingExporter(exporter)
        self.max_queue = max_queue
        self.ended = 0
        self.dropped = 0
        self.closed = False
        self._warned_at = -1e9
        self.batch = BatchSpanProcessor(
            self.counting, max_queue_size=max_queue, schedule_delay_millis=SCHEDULE_DELAY * 1000,
            max_export_batch_size=min(MAX_BATCH, max_queue), export_timeout_millis=export_timeout * 1000)

    def on_end(self, span: ReadableSpan) -> None:
        if self.closed or self.ended - self.counting.handed >= self.max_queue:
            self.dropped += 1
            now = time.monotonic()
            if now - self._warned_at >= 60.0:
                self._warned_at = now
                log.warning("trace export queue full (%d spans): dropping spans (%d so far)",
                            self.max_queue, self.dropped)
            return
        self.ended += 1
        self.batch.on_end(span)

    def shutdown(self) -> None:
        self.closed = True
        self.batch.shutdown()  # type: ignore[no-untyped-call]  # (untyped in the SDK)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.batch.force_flush(timeout_millis)


class _OncePerMinute(logging.Filter):
    """Lets a message template through once a minute: a dead collector is one line, not a stream."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        key = str(record.msg)
        if now - self._last.get(key, -1e9) < 60.0:
            return False
        self._last[key] = now
        return True


_QUIET = _OncePerMinute()
_EXPORTER_LOGGER = "peel.tracing.export"
export_log = logging.getLogger(_EXPORTER_LOGGER)

# OTLP/HTTP: these answers mean "try again later"; every other non-2xx is final.
RETRYABLE = frozenset({429, 502, 503, 504})
BACKOFF_FIRST = 0.5  # seconds before the second try; doubled per try, up to BACKOFF_MAX
BACKOFF_MAX = 4.0
# A collector's answer is a small protobuf; anything longer is not read, the connection is dropped.
MAX_ANSWER = 64 * 1024
# Set by Peel on every POST; a header of the same name from the environment is ignored.
_RESERVED = frozenset({"content-type", "content-encoding", "content-length", "host"})
_STALE = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)


def _env(environ: Mapping[str, str], name: str) -> str:
    """`OTEL_EXPORTER_OTLP_TRACES_<name>`, else `OTEL_EXPORTER_OTLP_<name>`, else ""."""
    return (environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}")
            or environ.get(f"OTEL_EXPORTER_OTLP_{name}") or "").strip()


def parse_headers(value: str) -> dict[str, str]:
    """OTel's `key=value,key2=value2` header list: values percent-decoded, keys lower-cased.

    A malformed entry (no `=`, a key that is not an HTTP token, a value with a control character)
    is skipped with one warning naming its position only: header values are often credentials.
    """
    headers: dict[str, str] = {}
    bad: list[int] = []
    for position, entry in enumerate(value.split(","), 1):
        if not entry.strip():
            continue
        key, equals, raw = entry.partition("=")
        key, decoded = key.strip().lower(), unquote(raw.strip())
        if (not equals or not TOKEN_RE.match(key) or key in _RESERVED
                or any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in decoded)):
            bad.append(position)
            continue
        headers[key] = decoded
    if bad:
        export_log.warning("OTEL_EXPORTER_OTLP_HEADERS: skipping malformed or reserved entries at "
                           "positions %s", ", ".join(map(str, bad)))
    return headers


class OtlpHttpExporter(SpanExporter):
    """Spans to an OTLP/HTTP collector as protobuf, over one kept-alive connection.

    `export` runs on the batch processor's thread only, one call at a time. Each call encodes the
    batch once and tries until a 2xx, a final status, or `timeout` seconds from its start: a
    429/502/503/504 or a connection error is retried after `Retry-After` seconds when the collector
    sent them, else after a jittered exponential backoff (0.5 s, 1 s, 2 s, 4 s, 4 s ... times 0.5-1).
    A kept-alive connection the collector closed while idle is reopened at once, without backoff.
    It never raises; every failed export is one warning on the `peel.tracing.export` logger.
    """

    def __init__(self, endpoint: str, timeout: float = 10.0, *,
                 environ: Mapping[str, str] | None = None) -> None:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError("tracing.endpoint", f"{endpoint!r} is not an http(s) URL with a host")
        environ = os.environ if environ is None else environ
        self.endpoint = endpoint
        self.timeout = timeout
        self._host = url.hostname
        self._port = url.port
        self._target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        # For log lines: without the query or user info, which may hold credentials.
        self._where = f"{url.scheme}://{url.netloc.rpartition('@')[2]}{url.path}"
        self._tls = self._tls_context(environ) if url.scheme == "https" else None
        compression = _env(environ, "COMPRESSION").lower()
        if compression not in ("", "none", "gzip"):
            export_log.warning("OTEL_EXPORTER_OTLP_COMPRESSION=%r is not supported (gzip or none): "
                               "sending uncompressed", compression)
        self._gzip = compression == "gzip"
        self._headers = {**parse_headers(_env(environ, "HEADERS")),
                         "user-agent": "peel", "content-type": "application/x-protobuf"}
        if self._gzip:
            self._headers["content-encoding"] = "gzip"
        self._connection: http.client.HTTPConnection | None = None
        self._closed = threading.Event()  # set by shutdown; also cuts a backoff wait short
        self._busy = threading.Lock()  # held while an export runs

    @staticmethod
    def _tls_context(environ: Mapping[str, str]) -> ssl.SSLContext:
        """The client's TLS context: a private CA and a client certificate from the environment.

        A file that cannot be loaded is `ConfigError` naming the variable: an operator's mistake
        is refused when Peel starts, not found later as a stream of failed exports.
        """
        cafile = _env(environ, "CERTIFICATE")
        try:
            context = ssl.create_default_context(cafile=cafile or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("OTEL_EXPORTER_OTLP_CERTIFICATE",
                              f"cannot load the CA file {cafile!r}: {exc}") from None
        certificate, key = _env(environ, "CLIENT_CERTIFICATE"), _env(environ, "CLIENT_KEY")
        if certificate:
            try:
                context.load_cert_chain(certificate, key or None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                                  f"cannot load {certificate!r} (key {key or 'in the same file'!r}): "
                                  f"{exc}") from None
        elif key:
            raise ConfigError("OTEL_EXPORTER_OTLP_CLIENT_KEY", "is set without a CLIENT_CERTIFICATE")
        return context

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closed.is_set():
            return SpanExportResult.FAILURE
        with self._busy:
            if self._closed.is_set():  # shut down while waiting for the lock
                return SpanExportResult.FAILURE
            try:
                failure = self._send(spans)
            except Exception as exc:  # an encoding bug must not kill the export thread
                failure = f"{type(exc).__name__}: {exc}"
            finally:
                if self._closed.is_set():
                    self._disconnect()
        if failure is None:
            return SpanExportResult.SUCCESS
        export_log.warning("trace export to %s failed: %s", self._where, failure)
        return SpanExportResult.FAILURE

    def _send(self, spans: Sequence[ReadableSpan]) -> str | None:
        """Posts the batch, retrying within the timeout; None on success, else why it failed."""
        deadline = time.monotonic() + self.timeout
        body = encode(spans, self._gzip)
        tries = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return f"no answer within {self.timeout:g} s"
            reused = self._connection is not None and self._connection.sock is not None
            retry_after: float | None = None
            try:
                status, retry_after = self._post(body, left)
            except (OSError, http.client.HTTPException) as exc:
                self._disconnect()
                if self._closed.is_set():
                    return "the exporter was shut down"
                if isinstance(exc, ssl.SSLCertVerificationError):
                    return f"the collector's certificate is not trusted: {exc.verify_message}"
                if reused and isinstance(exc, _STALE):
                    continue  # the collector closed the idle connection: a new one, at once
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if 200 <= status < 300:
                    return None
                reason = f"the collector answered {status}"
                if status not in RETRYABLE:
                    return reason
            tries += 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (tries - 1)) * random.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = retry_after
            if time.monotonic() + delay >= deadline:
                return f"{reason} (gave up after {tries} tries in {self.timeout:g} s)"
            if self._closed.wait(delay):
                return "the exporter was shut down"

    def _post(self, body: bytes, timeout: float) -> tuple[int, float | None]:
        """One POST on the kept-alive connection: the status and the Retry-After seconds."""
        connection = self._connection
        if connection is None:
            if self._tls is not None:
                connection = http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                                         context=self._tls)
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._connection = connection
        # The connect and every read wait at most what is left of this export's time.
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        connection.request("POST", self._target, body, self._headers)
        answer = connection.getresponse()
        if answer.length is None or answer.length <= MAX_ANSWER:
            answer.read(MAX_ANSWER + 1)  # drained, so the connection can carry the next export
        if not answer.isclosed():  # a longer answer is not worth reading: a new connection is cheaper
            answer.close()
            self._disconnect()
        if answer.will_close:
            self._disconnect()
        return answer.status, _retry_after(answer.getheader("retry-after"))

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def shutdown(self) -> None:
        """Closes the connection; later exports fail at once, without I/O."""
        self._closed.set()
        if self._busy.acquire(blocking=False):
            try:
                self._disconnect()
            finally:
                self._busy.release()
            return
        # An export is waiting on the collector: wake it (it closes the connection itself).
        connection = self._connection
        sock = connection.sock if connection is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):  # it closed meanwhile
                sock.shutdown(socket.SHUT_RDWR)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # nothing is buffered here: the batch processor holds the queue


def encode(spans: Sequence[ReadableSpan], gzipped: bool = False) -> bytes:
    """The OTLP/HTTP request body for `spans`, encoded a few spans at a time.

    The encoder (`gateway.telemetry.otlp`) holds the GIL about 7 us a span compiled, 11 us not: a
    whole batch of 512 in one call would keep the event loop out for up to the switch interval at a
    time. Between two chunks this thread lets it
    in (`time.sleep(0)`). The chunks' messages are joined as they are: protobuf reads concatenated
    messages as one with their repeated fields joined, here each chunk's `resource_spans`. Gzip at
    level 6 (zlib's default) rather than 9: a fraction of the CPU, taken from the same share.
    """
    packer = zlib.compressobj(6, zlib.DEFLATED, 31) if gzipped else None  # wbits 31: the gzip format
    parts: list[bytes] = []
    for start in range(0, len(spans), ENCODE_CHUNK):
        if start:
            time.sleep(0)
        part = encode_spans(spans[start:start + ENCODE_CHUNK])
        parts.append(part if packer is None else packer.compress(part))
    if packer is not None:
        parts.append(packer.flush())
    return b"".join(parts)


def _retry_after(value: str | None) -> float | None:
    """A `Retry-After` in seconds; None when absent or an HTTP date (then the backoff applies)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def make_exporter(settings: TracingSettings) -> SpanExporter | None:
    """The exporter the settings ask for; None when nothing is to be exported."""
    if settings.exporter == "console":
        return ConsoleSpanExporter()
    if not settings.endpoint:
        return None
    if _QUIET not in export_log.filters:
        export_log.addFilter(_QUIET)
    return OtlpHttpExporter(settings.endpoint, settings.export_timeout)
