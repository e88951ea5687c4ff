"""OpenTelemetry traces of the data plane: a server span per request, a client span per attempt.

Cost is the design constraint. The unsampled request (the default: 1 in 100 is sampled) makes no
OpenTelemetry object at all: the context is parsed by `gateway.telemetry.propagation`, the sampling decision
is made here (parent-based; a new trace is sampled by the ratio of its trace id, like
`TraceIdRatioBased`), and ids are plain random numbers written as hex. Only a sampled request
makes spans, and only when it ends: by then the route, status, timings and ids (the ones already
sent upstream) are known, so each span is made finished, as the SDK's `ReadableSpan` its exporters
read, without the SDK's tracer (`Tracing._span`).

Export goes through a `BatchSpanProcessor` (its own thread) behind `trace_export.BoundedExport`,
which drops and counts spans once `max_queue` wait: a slow or unreachable collector costs the
request path nothing but the append of a finished span to a queue. Context from a downstream outside
`tracing.trusted_networks` (default: loopback; empty: nobody) is ignored: the request starts a new
trace, sampled by the ratio alone, so no client can force sampling (and the export cost) with a
sampled flag or B3 debug.

Wiring (the data plane): `Tracing(settings.tracing)` only when `enabled` (else no object: trace
headers then pass as ordinary headers); per request `start()`, `route()`, per upstream try
`attempt()` → `headers()` added to the upstream request, `end()`; the request's `end()` last.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from operator import itemgetter
from random import getrandbits
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

from gateway.core.memo import remember
from gateway.core.settings import TracingSettings
from gateway.core.trust import TrustedNetworks
from gateway.telemetry import propagation
from gateway.telemetry.export import BoundedExport, make_exporter
from gateway.telemetry.propagation import TRACE_HEADERS, Incoming, b3_multi, b3_single, traceparent

log: Final = logging.getLogger("peel.tracing")

Headers = list[tuple[bytes, bytes]]

_MASK64: Final = (1 << 64) - 1
_name: Final = itemgetter(0)
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_UNSET: Final = Status(StatusCode.UNSET)
_SCOPE: Final = InstrumentationScope("peel")  # what the SDK's `get_tracer("peel")` names its spans' scope


def _new_span_id() -> str:
    # to_bytes().hex() is twice as fast as a format spec, and is always 16 digits.
    return (getrandbits(64) or 1).to_bytes(8, "big").hex()


class Tracing:
    """Trace context and spans for one serving process (build it in the process that serves).

    `exporter` replaces the one the settings name (tests pass an in-memory one). Construct it only
    when `settings.enabled`; with tracing off the data plane has no `Tracing` at all.
    """

    def __init__(self, settings: TracingSettings, *, exporter: SpanExporter | None = None) -> None:
        # TraceIdRatioBased's rule: sampled when the trace id's low 64 bits are below the bound.
        self._bound = round(settings.sample_ratio * (_MASK64 + 1))
        # Whether a trace context from the downstream at `client` is continued: with no
        # `trusted_networks`, from nobody (like every other trust list).
        self.trusts: Callable[[str | None], bool] = TrustedNetworks(settings.trusted_networks).contains
        self._endpoints: dict[str, tuple[str, int | None]] = {}
        self._timeout = settings.export_timeout
        self._export: BoundedExport | None = None
        # Whether sampled requests make spans: there is an exporter, and `shutdown()` has not run.
        self.recording = False
        if exporter is None:
            exporter = make_exporter(settings)
        if exporter is not None:
            self._export = BoundedExport(exporter, settings.max_queue, settings.export_timeout)
            self._resource = Resource.create({SERVICE_NAME: settings.service_name})
            self.recording = True

    def start(self, headers: Headers, client: str | None, method: str, path: str,
              server_address: str, *, trusted: bool = False) -> RequestTrace:
        """The trace of one downstream request: its context continued (when trusted: by the client's
        network, or `trusted`, a peer gateway) or a new one."""
        incoming: Incoming | None = None
        # C-level scan (map + isdisjoint): half the cost of a Python loop over the headers.
        seen = not TRACE_HEADERS.isdisjoint(map(_name, headers))
        if seen and (trusted or self.trusts(client)):
            incoming = propagation.extract(headers)
        parent_id: str | None = None
        sampled: bool | None = None
        if incoming is not None:
            sampled = incoming.sampled
            parent_id = incoming.parent_id
        if parent_id is not None and incoming is not None and incoming.trace_id is not None:
            trace_id = incoming.trace_id
            if sampled is None:
                sampled = int(trace_id[16:], 16) < self._bound
        else:
            number = getrandbits(128) or 1
            trace_id = number.to_bytes(16, "big").hex()
            if sampled is None:
                sampled = (number & _MASK64) < self._bound
        trace = RequestTrace(self, trace_id, _new_span_id(), parent_id, sampled, incoming, seen)
        if trace._record:
            trace._recording(method, path, server_address)
        return trace

    def strip(self, headers: Headers) -> Headers:
        """`headers` without trace context headers (Peel sends its own per attempt)."""
        return propagation.strip(headers)

    def endpoint_address(self, url: str) -> tuple[str, int | None]:
        """(host, port) of an endpoint URL, parsed once per URL."""
        known = self._endpoints.get(url)
        if known is None:
            parts = urlsplit(url)
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
            known = remember(self._endpoints, url, (parts.hostname or url, port), 4096)
        return known

    def stats(self) -> dict[str, int]:
        """Spans queued for export, dropped (queue full), exported and failed (collector errors)."""
        export = self._export
        if export is None:
            return {"ended": 0, "dropped": 0, "exported": 0, "failed": 0}
        return {"ended": export.ended, "dropped": export.dropped,
                "exported": export.counting.exported, "failed": export.counting.failed}

    def shutdown(self, timeout: float | None = None) -> None:
        """Send what is queued, waiting at most `timeout` s (default: the export timeout)."""
        export = self._export
        if export is None or not self.recording:
            return
        self.recording = False
        # The SDK's shutdown joins its thread for up to 30 s: run it aside and wait only so long.
        worker = threading.Thread(target=export.shutdown, name="peel-trace-shutdown", daemon=True)
        worker.start()
        worker.join(self._timeout if timeout is None else timeout)
        if worker.is_alive():
            log.warning("trace export did not finish within %.1f s; queued spans are lost",
                        self._timeout if timeout is None else timeout)

    def _span(self, name: str, kind: SpanKind, trace_id: str, span_id: str, parent_id: str | None,
              remote: bool, tracestate: bytes | None, attributes: dict[str, Any], start_ns: int,
              end_ns: int, error: str | None) -> None:
        """One finished span with Peel's ids (sampled requests only), handed to the export queue.

        Made as the SDK's `ReadableSpan` (what its exporters and encoder read), not through a
        tracer: the SDK's `start_span`/`end` (sampler, id generator, a lock, attribute checks,
        processor calls) cost 15-17 us a span on the event loop; these are finished spans with
        their ids, times and attributes already known, as `start_span` with the ALWAYS_ON sampler
        would make them (the parent's trace state, the provider's resource, the `peel` scope).
        """
        export = self._export
        if export is None or not self.recording:
            return
        trace_number = int(trace_id, 16)
        parent: SpanContext | None = None
        state: TraceState | None = None
        if parent_id is not None:
            if tracestate is not None:
                try:
                    state = TraceState.from_header([tracestate.decode("ascii")])
                except ValueError:
                    state = None
            parent = SpanContext(trace_number, int(parent_id, 16), is_remote=remote,
                                 trace_flags=_SAMPLED, trace_state=state)
        context = SpanContext(trace_number, int(span_id, 16), is_remote=False, trace_flags=_SAMPLED,
                              trace_state=state)
        export.on_end(ReadableSpan(name, context, parent, self._resource, attributes, kind=kind,
                                   status=_UNSET if error is None else Status(StatusCode.ERROR, error),
                                   start_time=start_ns, end_time=end_ns, instrumentation_scope=_SCOPE))


class RequestTrace:
    """The trace of one downstream request; `trace_id` and `span_id` (hex) go to the access log.

    `span_id` is the server span's id; `parent_id` the downstream's span, when it sent a context.
    Nothing but ids is made unless `sampled` (and an exporter is configured): the fields of the
    span are kept only then (`_recording()`), so an unsampled request sets five slots.
    """

    __slots__ = ("_fallback", "_incoming", "_method", "_path", "_peer", "_record", "_route", "_seen",
                 "_server", "_service", "_side", "_stage", "_start_ns", "_tracing", "parent_id",
                 "sampled", "span_id", "trace_id")

    def __init__(self, tracing: Tracing, trace_id: str, span_id: str, parent_id: str | None,
                 sampled: bool, incoming: Incoming | None, seen: bool) -> None:
        self._tracing = tracing
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.sampled = sampled
        self._incoming = incoming
        self._seen = seen
        self._record = sampled and tracing.recording

    def _recording(self, method: str, path: str, server_address: str) -> None:
        self._start_ns = time.time_ns()
        self._method = method
        self._path = path
        self._server = server_address
        self._route: str | None = None
        self._service: str | None = None
        self._stage: str | None = None
        self._side: str | None = None
        self._fallback: str | None = None
        self._peer: str | None = None

    def peer(self, identity: str) -> None:
        """The caller's identity on the inbound listener (`peel.peer.identity`)."""
        if self._record:
            self._peer = identity

    def route(self, route: str, service: str, stage: str | None) -> None:
        """The matched route (its name is `http.route`), its service, and its migration's stage."""
        if self._record:
            self._route = route
            self._service = service
            self._stage = stage

    def strip(self, headers: Headers) -> Headers:
        """`headers` without trace context; free when the downstream sent none."""
        if not self._seen:
            return headers
        names = TRACE_HEADERS
        return [header for header in headers if header[0] not in names]

    def attempt(self, endpoint_url: str, attempt: int, side: str | None,
                service: str | None = None) -> AttemptTrace:
        """One try at an upstream: `attempt` counts the tries at this service from 1 (the first
        try at `from` after a fallback is 1 again); `service` when it is not the route's (the
        `from`/`to` service of a migration)."""
        trace = AttemptTrace(self, _new_span_id())
        if self._record:
            if side is not None:
                self._side = side
            if service is not None:
                self._service = service
            trace._recording(endpoint_url, attempt, side, service or self._service)
        return trace

    def end(self, status: int, error: str | None) -> None:
        """The response went downstream with `status` (`error`: Peel's error code, if any)."""
        if not self._record:
            return
        self._record = False  # one server span, even if called twice
        attributes: dict[str, Any] = {"http.request.method": self._method, "url.path": self._path,
                                      "server.address": self._server,
                                      "http.route": self._route or "unmatched"}
        if status:
            attributes["http.response.status_code"] = status
        if self._service is not None:
            attributes["peel.service"] = self._service
        if self._stage is not None:
            attributes["peel.stage"] = self._stage
        if self._side is not None:
            attributes["peel.side"] = self._side
        if self._fallback is not None:
            attributes["peel.fallback"] = self._fallback
        if self._peer is not None:
            attributes["peel.peer.identity"] = self._peer
        # A server span fails on a 5xx only (semantic conventions): a 4xx is the caller's.
        failed = error if error is not None else (str(status) if status >= 500 else None)
        if failed is not None:
            attributes["error.type"] = failed
        incoming = self._incoming
        self._tracing._span(f"{self._method} {self._route or 'unmatched'}", SpanKind.SERVER,
                            self.trace_id, self.span_id, self.parent_id, True,
                            incoming.tracestate if incoming is not None else None, attributes,
                            self._start_ns, time.time_ns(), failed)


class AttemptTrace:
    """One upstream attempt of a request: the context it carries upstream and its client span."""

    __slots__ = ("_attempt", "_endpoint", "_request", "_service", "_side", "_start_ns", "span_id")

    def __init__(self, request: RequestTrace, span_id: str) -> None:
        self._request = request
        self.span_id = span_id
        self._start_ns = 0

    def _recording(self, endpoint_url: str, attempt: int, side: str | None,
                   service: str | None) -> None:
        self._start_ns = time.time_ns()
        self._endpoint = endpoint_url
        self._attempt = attempt
        self._side = side
        self._service = service

    def headers(self) -> Headers:
        """Trace headers for the upstream request: `traceparent` (with `tracestate` and `baggage`
        as the downstream sent them) and, when the downstream spoke B3, B3 in its form."""
        request = self._request
        sampled = request.sampled
        out: Headers = [(propagation.TRACEPARENT, traceparent(request.trace_id, self.span_id, sampled))]
        incoming = request._incoming
        if incoming is not None:
            if incoming.tracestate is not None:
                out.append((propagation.TRACESTATE, incoming.tracestate))
            if incoming.baggage is not None:
                out.append((propagation.BAGGAGE, incoming.baggage))
            if incoming.b3 is not None:
                b3_trace = incoming.b3_trace_id or request.trace_id
                if incoming.b3 == "single":
                    out.append((propagation.B3, b3_single(b3_trace, self.span_id, sampled,
                                                          incoming.debug, request.span_id)))
                else:
                    out.extend(b3_multi(b3_trace, self.span_id, sampled, incoming.debug,
                                        request.span_id))
        return out

    def end(self, status: int | None, error: str | None, fallback: str | None = None) -> None:
        """The attempt is over: `status` from the upstream (None: none came), Peel's `error` code,
        and `fallback`: the `to` failure this attempt answers for (the `from` attempt of a fallback).
        """
        start_ns = self._start_ns
        if not start_ns:
            return
        self._start_ns = 0  # one client span per attempt
        request = self._request
        if fallback is not None:
            request._fallback = fallback
        if not request._record:
            return  # the request already ended
        host, port = request._tracing.endpoint_address(self._endpoint)
        attributes: dict[str, Any] = {"http.request.method": request._method, "server.address": host,
                                      "peel.endpoint": self._endpoint, "peel.attempt": self._attempt}
        if port is not None:
            attributes["server.port"] = port
        if self._attempt > 1:
            attributes["http.request.resend_count"] = self._attempt - 1
        if status is not None:
            attributes["http.response.status_code"] = status
        if self._service is not None:
            attributes["peel.service"] = self._service
        if request._stage is not None:
            attributes["peel.stage"] = request._stage
        if self._side is not None:
            attributes["peel.side"] = self._side
        if fallback is not None:
            attributes["peel.fallback"] = fallback
        # A client span fails on any 4xx/5xx (semantic conventions), or when no answer came.
        failed = error if error is not None else (
            str(status) if status is not None and status >= 400 else None)
        if failed is not None:
            attributes["error.type"] = failed
        request._tracing._span(request._method, SpanKind.CLIENT, request.trace_id, self.span_id,
                               request.span_id, False, None, attributes, start_ns, time.time_ns(),
                               failed)
