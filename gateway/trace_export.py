"""Span export for `gateway.tracing`: OTLP/HTTP or console, bounded, counted, quiet.

`BoundedExport` puts OpenTelemetry's `BatchSpanProcessor` (its own thread, batches) behind a gate
that drops and counts the spans that would overflow `max_queue`: a slow or unreachable collector
costs the request path only the append of a finished span. The SDK's own queue also drops when
full, but its count goes only to OpenTelemetry's internal metrics, off by default.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from gateway.settings import TracingSettings

log = logging.getLogger("peel.tracing")

# How long the batch processor waits to fill a batch before it sends what it has.
SCHEDULE_DELAY = 1.0
MAX_BATCH = 512


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
_EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


def make_exporter(settings: TracingSettings) -> SpanExporter | None:
    """The exporter the settings ask for; None when nothing is to be exported."""
    if settings.exporter == "console":
        return ConsoleSpanExporter()
    if not settings.endpoint:
        return None
    exporter_log = logging.getLogger(_EXPORTER_LOGGER)
    if _QUIET not in exporter_log.filters:
        exporter_log.addFilter(_QUIET)
    return OTLPSpanExporter(endpoint=settings.endpoint, timeout=settings.export_timeout)
