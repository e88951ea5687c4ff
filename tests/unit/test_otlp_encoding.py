"""Peel's OTLP span encoder (`gateway.telemetry.otlp`) against OpenTelemetry's own.

OpenTelemetry's encoder (opentelemetry-exporter-otlp-proto-common, a test dependency only) is the
reference: for every span hypothesis makes, with events, links, remote parents, trace state and
attribute values of every type, nested, the bytes must be the same, so a collector reads exactly what
it read from the SDK's encoder.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as reference
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

from gateway.telemetry import export
from gateway.telemetry.otlp import encode_spans

ids = st.integers(1, 2**64 - 1)
trace_ids = st.integers(1, 2**128 - 1)
text = st.text(max_size=12)
scalars = st.one_of(st.booleans(), text, st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=False), st.binary(max_size=8), st.none())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)), max_leaves=6)
attributes = st.dictionaries(text, values, max_size=5)
states = st.lists(st.tuples(st.from_regex(r"[a-z][a-z0-9_\-*/]{0,8}", fullmatch=True),
                            st.from_regex(r"[!-+\--<>-~]{1,8}", fullmatch=True)),
                  max_size=3, unique_by=lambda kv: kv[0]).map(TraceState)


@st.composite
def contexts(draw: st.DrawFn, remote: bool | None = None) -> SpanContext:
    return SpanContext(draw(trace_ids), draw(ids),
                       is_remote=draw(st.booleans()) if remote is None else remote,
                       trace_flags=TraceFlags(draw(st.sampled_from([0, 1]))), trace_state=draw(states))


resources = st.sampled_from([Resource.create({"service.name": "peel"}),
                             Resource({"service.name": "other", "host.id": 7}, schema_url="https://s/1"),
                             Resource({})])
scopes = st.sampled_from([InstrumentationScope("peel"), InstrumentationScope("peel", "1.2", "https://s/2"),
                          InstrumentationScope("x", attributes={"a": 1}), None])
statuses = st.sampled_from([Status(StatusCode.UNSET), Status(StatusCode.OK),
                            Status(StatusCode.ERROR, "upstream_timeout"), Status(StatusCode.ERROR)])


@st.composite
def spans(draw: st.DrawFn) -> ReadableSpan:
    start = draw(st.integers(0, 2**63))
    events = draw(st.lists(st.builds(Event, text, attributes, st.integers(0, 2**63)), max_size=2))
    links = draw(st.lists(st.builds(Link, contexts(), attributes), max_size=2))
    return ReadableSpan(draw(text), draw(contexts(remote=False)), draw(st.none() | contexts()),
                        draw(resources), draw(attributes), events, links, draw(st.sampled_from(SpanKind)),
                        status=draw(statuses), start_time=start, end_time=draw(st.integers(0, 2**63)),
                        instrumentation_scope=draw(scopes))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(spans(), max_size=5))
def test_the_bytes_are_opentelemetrys(batch: list[ReadableSpan]) -> None:
    assert encode_spans(batch) == reference(batch).SerializeToString()


def test_spans_group_by_resource_then_scope_in_the_order_first_seen() -> None:
    one, two = Resource({"service.name": "a"}), Resource({"service.name": "b"})
    context = SpanContext(1, 2, is_remote=False)
    batch = [ReadableSpan(f"s{n}", context, resource=resource,
                          instrumentation_scope=InstrumentationScope(scope))
             for n, (resource, scope) in enumerate([(one, "x"), (two, "x"), (one, "y"), (one, "x")])]
    request = ExportTraceServiceRequest.FromString(encode_spans(batch))
    got = [(r.resource.attributes[0].value.string_value, s.scope.name, [span.name for span in s.spans])
           for r in request.resource_spans for s in r.scope_spans]
    assert got == [("a", "x", ["s0", "s3"]), ("a", "y", ["s2"]), ("b", "x", ["s1"])]


def test_a_peel_span_reads_back_with_its_ids_times_and_flags() -> None:
    parent = SpanContext(0xABC, 0x12, is_remote=True, trace_state=TraceState([("k", "v")]))
    context = SpanContext(0xABC, 0x34, is_remote=False, trace_state=parent.trace_state)
    span = ReadableSpan("GET orders", context, parent, Resource.create({"service.name": "peel"}),
                        {"http.response.status_code": 503, "peel.service": "orders"}, kind=SpanKind.SERVER,
                        status=Status(StatusCode.ERROR, "503"), start_time=10, end_time=25,
                        instrumentation_scope=InstrumentationScope("peel"))
    [got] = ExportTraceServiceRequest.FromString(encode_spans([span])).resource_spans[0].scope_spans[0].spans
    assert got.trace_id == (0xABC).to_bytes(16, "big") and got.span_id == (0x34).to_bytes(8, "big")
    assert got.parent_span_id == (0x12).to_bytes(8, "big") and got.trace_state == "k=v"
    assert (got.kind, got.start_time_unix_nano, got.end_time_unix_nano) == (2, 10, 25)  # SPAN_KIND_SERVER
    assert (got.status.code, got.status.message) == (2, "503")
    assert got.flags == 0x300  # is_remote known, and true
    assert {a.key: a.value.WhichOneof("value") for a in got.attributes} == \
        {"http.response.status_code": "int_value", "peel.service": "string_value"}


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, object()])
def test_a_value_without_an_otlp_form_is_left_out_and_logged(value: Any, caplog: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # the logger lets a message through once a minute once an exporter is made (export._QUIET): as
    # in a serving process, where a bad attribute on every span must not flood the log
    monkeypatch.setattr(export._QUIET, "_last", {})
    if export._QUIET not in export.export_log.filters:
        monkeypatch.setattr(export.export_log, "filters", [*export.export_log.filters, export._QUIET])
    span = ReadableSpan("s", SpanContext(1, 2, is_remote=False), attributes={"bad": value, "good": 1})
    with caplog.at_level(logging.ERROR, "peel.tracing.export"):
        request = ExportTraceServiceRequest.FromString(encode_spans([span]))
    [got] = request.resource_spans[0].scope_spans[0].spans
    assert [a.key for a in got.attributes] == ["good"]
    assert "'bad' not encoded" in caplog.text
