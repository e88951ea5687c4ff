"""Finished spans as an OTLP `ExportTraceServiceRequest`, in protobuf's wire format, written here.

`encode_spans(spans)` gives the same bytes as OpenTelemetry's encoder
(`opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans(spans).SerializeToString()`,
which the tests compare it with) for any `ReadableSpan`: spans grouped by resource, then by
instrumentation scope, in the order first seen; events, links, the parent's remote flag, every
attribute value type (arrays and maps nested). The wire format is protobuf's (tag, varint, fixed,
length-delimited), every message written field by field in field-number order, proto3's defaults
left out, as protobuf writes them.

Why not the SDK's encoder: it builds a protobuf object per span, attribute and value, which holds
the GIL about 30 us a span on the export thread (taken from the serving event loop), and it loads
protobuf and the generated OTLP classes, about 2.8 MiB in every serving process. Here a span costs
a few microseconds, and a resource or a scope is encoded once per batch.

Message and field numbers: opentelemetry-proto's `trace/v1/trace.proto`, `common/v1/common.proto`,
`resource/v1/resource.proto` and `collector/trace/v1/trace_service.proto`.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext

log: Final = logging.getLogger("peel.tracing.export")

# Span.flags (fixed32): the context's is_remote is known (always), and true (a remote parent).
HAS_IS_REMOTE: Final = 0x100
IS_REMOTE: Final = 0x200

_FIXED64: Final = struct.Struct("<Q")
_FIXED32: Final = struct.Struct("<I")
_DOUBLE: Final = struct.Struct("<d")
# Tags, (field number << 3) | wire type (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32),
# written as their varint: every field number here is below 16 but Span.flags' 16 (two bytes).
_BYTES_TAG: Final = [bytes([(number << 3) | 2]) for number in range(16)]


def _varint(value: int) -> bytes:
    """An unsigned varint; a negative int64 as its 64-bit two's complement (ten bytes)."""
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL: Final = [bytes((n,)) for n in range(0x80)]  # the one-byte varints


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a string, bytes or a message)."""
    return _BYTES_TAG[number] + _varint(len(payload)) + payload


def _text(number: int, value: str | None) -> bytes:
    """A string field, left out when empty (proto3)."""
    return _field(number, value.encode()) if value else b""


def _count(number: int, value: int) -> bytes:
    """A uint32 count, left out when zero."""
    return bytes(((number << 3),)) + _varint(value) if value else b""


def _value(value: Any) -> bytes:
    """An `AnyValue` message's body: one of its oneof fields, which is written even when empty."""
    if isinstance(value, str):
        return _field(1, value.encode())
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        if not -(1 << 63) <= value < 1 << 63:
            raise OverflowError(f"{value} is out of int64's range")
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join([_field(1, _value(item)) for item in value]))
    if isinstance(value, Mapping):
        return _field(6, b"".join([_field(1, _key_value(str(key), item)) for key, item in value.items()]))
    raise TypeError(f"an attribute value of type {type(value).__name__} has no OTLP form")


# A `KeyValue`'s key field by key: Peel's spans repeat the same dozen keys.
_KEYS: Final[dict[str, bytes]] = {}
_MAX_KEYS: Final = 1024


def _key_value(key: str, value: Any) -> bytes:
    head = _KEYS.get(key)
    if head is None:
        head = _text(1, key)
        if len(_KEYS) < _MAX_KEYS:
            _KEYS[key] = head
    return head + _field(2, _value(value))


def _attributes(number: int, attributes: Mapping[str, Any] | None) -> bytes:
    """`attributes` as repeated `KeyValue` field `number`; a value with no OTLP form is left out,
    and logged, as the SDK's encoder does."""
    if not attributes:
        return b""
    parts: list[bytes] = []
    for key, value in attributes.items():
        try:
            parts.append(_field(number, _key_value(key, value)))
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("span attribute %r not encoded: %s", key, exc)
    return b"".join(parts)


def _flags(context: SpanContext | None) -> bytes:
    """A span's or a link's flags (fixed32), as the SDK's encoder sets them: is_remote is known,
    and whether `context` (a span's parent, a link's target) is remote."""
    return _FIXED32.pack(HAS_IS_REMOTE | (IS_REMOTE if context is not None and context.is_remote else 0))


def _span(span: ReadableSpan) -> bytes:
    """One `Span` message's body."""
    context = span.context
    assert context is not None  # a ReadableSpan always has one (typed optional in the SDK)
    parent = span.parent
    parts = [_field(1, context.trace_id.to_bytes(16, "big")), _field(2, context.span_id.to_bytes(8, "big"))]
    if context.trace_state:
        parts.append(_text(3, ",".join([f"{key}={value}" for key, value in context.trace_state.items()])))
    if parent is not None:
        parts.append(_field(4, parent.span_id.to_bytes(8, "big")))
    parts.append(_text(5, span.name))
    kind = span.kind.value + 1  # the SDK's INTERNAL is 0, OTLP's SPAN_KIND_INTERNAL 1 (0: unspecified)
    parts.append(b"\x30" + _varint(kind))
    if span.start_time:
        parts.append(b"\x39" + _FIXED64.pack(span.start_time))
    if span.end_time:
        parts.append(b"\x41" + _FIXED64.pack(span.end_time))
    parts.append(_attributes(9, span.attributes))
    parts.append(_count(10, span.dropped_attributes))
    for event in span.events:
        parts.append(_field(11, (b"\x09" + _FIXED64.pack(event.timestamp) if event.timestamp else b"")
                            + _text(2, event.name) + _attributes(3, event.attributes)
                            + _count(4, event.dropped_attributes)))
    parts.append(_count(12, span.dropped_events))
    for link in span.links:
        linked = link.context
        parts.append(_field(13, _field(1, linked.trace_id.to_bytes(16, "big"))
                            + _field(2, linked.span_id.to_bytes(8, "big"))
                            + _attributes(4, link.attributes) + _count(5, link.dropped_attributes)
                            + b"\x35" + _flags(linked)))  # field 6
    parts.append(_count(14, span.dropped_links))
    status = span.status
    if status is not None:
        code = status.status_code.value
        parts.append(_field(15, _text(2, status.description) + (b"\x18" + _varint(code) if code else b"")))
    parts.append(b"\x85\x01" + _flags(parent))  # field 16, fixed32: a two-byte tag
    return b"".join(parts)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialised `ExportTraceServiceRequest` for `spans`."""
    # resource -> scope -> encoded spans; dicts keep the order each was first seen, as the SDK's
    groups: dict[Any, dict[Any, list[bytes]]] = {}
    last: Any = None  # the last span's resource and its group: hashing a Resource is a json.dumps
    by_scope: dict[Any, list[bytes]] = {}
    for span in spans:
        if span.resource is not last:
            last = span.resource
            by_scope = groups.setdefault(last, {})
        scope = span.instrumentation_scope or None
        encoded = by_scope.get(scope)
        if encoded is None:
            encoded = by_scope[scope] = []
        encoded.append(_field(2, _span(span)))
    out: list[bytes] = []
    for resource, by_scope in groups.items():
        scopes: list[bytes] = []
        for scope, encoded in by_scope.items():
            head = b"" if scope is None else (
                _text(1, scope.name) + _text(2, scope.version) + _attributes(3, scope.attributes))
            scopes.append(_field(2, _field(1, head) + b"".join(encoded)
                                 + (_text(3, scope.schema_url) if scope is not None else b"")))
        out.append(_field(1, _field(1, _attributes(1, resource.attributes)) + b"".join(scopes)
                          + _text(3, resource.schema_url)))
    return b"".join(out)
