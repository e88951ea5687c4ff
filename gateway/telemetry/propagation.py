"""Trace context on the wire: W3C `traceparent`/`tracestate`, `baggage`, and B3 (pure).

Peel parses and writes these headers itself instead of through OpenTelemetry's propagators: the
propagators build a `Context` and a span object per request, which costs more than the whole
budget of an unsampled request (a few hundred nanoseconds here). Ids stay as lower-case hex text
from parsing to the access log and the upstream header; only a sampled request converts them to
integers for the SDK.

Formats (https://www.w3.org/TR/trace-context/, https://www.w3.org/TR/baggage/,
https://github.com/openzipkin/b3-propagation):

- `traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; all-zero ids, upper-case
  hex, version `ff` and a version-00 value with extra fields are invalid. A later version may carry
  more fields after a `-`; its first four are read (the spec's forward compatibility).
- `tracestate` is kept (all fields joined) only with a valid `traceparent`, up to 512 bytes.
- `baggage` is kept as it came (fields joined), up to 8192 bytes; it does not depend on a trace.
- `b3: <trace id>-<span id>[-<sampling>[-<parent id>]]` or `b3: <sampling>` (0, 1 or d), and the
  multi-header form `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled` (1/0, also true/false),
  `X-B3-Flags: 1` (debug). B3 trace ids are 16 or 32 hex; 16 are padded to 32 for W3C.

A valid `traceparent` wins over B3; an invalid one is ignored (then B3, if valid, is used).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

Headers = list[tuple[bytes, bytes]]

TRACEPARENT: Final = b"traceparent"
TRACESTATE: Final = b"tracestate"
BAGGAGE: Final = b"baggage"
B3: Final = b"b3"
B3_TRACE_ID: Final = b"x-b3-traceid"
B3_SPAN_ID: Final = b"x-b3-spanid"
B3_PARENT_ID: Final = b"x-b3-parentspanid"
B3_SAMPLED: Final = b"x-b3-sampled"
B3_FLAGS: Final = b"x-b3-flags"

# Every header that carries trace context: removed from what goes upstream, since Peel sends its
# own per attempt (and a context from an untrusted downstream must not reach the upstream at all).
TRACE_HEADERS: Final = frozenset({TRACEPARENT, TRACESTATE, BAGGAGE, B3, B3_TRACE_ID, B3_SPAN_ID,
                           B3_PARENT_ID, B3_SAMPLED, B3_FLAGS})

MAX_TRACESTATE: Final = 512
MAX_BAGGAGE: Final = 8192

_TRACEPARENT_RE: Final = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")
_TRACEPARENT_00_RE: Final = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")
_ODD_HEX: Final = frozenset("13579bdf")  # flags whose low bit, `sampled`, is set
_HEX_ID_RE: Final = re.compile(rb"(?:[0-9a-f]{16}){1,2}\Z")
_SPAN_ID_RE: Final = re.compile(rb"[0-9a-f]{16}\Z")
# Printable ASCII without DEL: what both list headers allow (their finer grammar is the
# producer's business; Peel only refuses what could not be a header value worth forwarding).
_LIST_RE: Final = re.compile(rb"[\x20-\x7e]*\Z")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16

# The B3 single-header sampling field: sampled? and debug?
_B3_SAMPLING: Final[dict[bytes, tuple[bool, bool]]] = {b"0": (False, False), b"1": (True, False),
                                                b"d": (True, True)}
_B3_SAMPLED_VALUES: Final[dict[bytes, bool]] = {b"1": True, b"0": False, b"true": True, b"false": False}


class Incoming:
    """The trace context a downstream sent, as far as it was valid.

    `trace_id` and `parent_id` are None when no valid ids came (a `b3: 0` alone, or only
    `baggage`); `sampled` is None when the sender left the decision to Peel (B3 without a sampling
    field). `b3` is "single" or "multi" when the context came as B3 (Peel then answers in kind),
    with `b3_trace_id` the id as the downstream wrote it (16 or 32 hex).
    """

    __slots__ = ("b3", "b3_trace_id", "baggage", "debug", "parent_id", "sampled", "trace_id",
                 "tracestate")

    def __init__(self, trace_id: str | None = None, parent_id: str | None = None,
                 sampled: bool | None = None, *, tracestate: bytes | None = None,
                 baggage: bytes | None = None, b3: str | None = None,
                 b3_trace_id: str | None = None, debug: bool = False) -> None:
        self.trace_id = trace_id
        self.parent_id = parent_id
        self.sampled = sampled
        self.tracestate = tracestate
        self.baggage = baggage
        self.b3 = b3
        self.b3_trace_id = b3_trace_id
        self.debug = debug

    def __repr__(self) -> str:
        return (f"Incoming(trace_id={self.trace_id!r}, parent_id={self.parent_id!r}, "
                f"sampled={self.sampled!r}, b3={self.b3!r})")


def parse_traceparent(value: bytes) -> tuple[str, str, bool] | None:
    """(trace id, parent id, sampled) of a valid `traceparent`, else None."""
    if _TRACEPARENT_00_RE.match(value):
        # The common case, without regex groups: slices of one decoded string.
        text = value.decode("ascii")
        trace, parent, sampled = text[3:35], text[36:52], text[54] in _ODD_HEX
    else:
        found = _TRACEPARENT_RE.match(value)
        if found is None:
            return None
        version, trace_id, parent_id, flags, rest = found.groups()
        if version == b"ff" or (version == b"00" and rest is not None):
            return None
        trace = trace_id.decode("ascii")
        parent = parent_id.decode("ascii")
        sampled = bool(int(flags, 16) & 1)
    if trace == _ZERO_TRACE or parent == _ZERO_SPAN:
        return None
    return trace, parent, sampled


def parse_b3_single(value: bytes) -> Incoming | None:
    """The context of a `b3` header, else None (malformed)."""
    value = value.strip().lower()
    sampling = _B3_SAMPLING.get(value)
    if sampling is not None:
        # Only a decision, no ids: Peel starts the trace and follows the decision.
        return Incoming(None, None, sampling[0], b3="single", debug=sampling[1])
    fields = value.split(b"-")
    if not 2 <= len(fields) <= 4:
        return None
    trace, span = fields[0], fields[1]
    if not _HEX_ID_RE.match(trace) or not _SPAN_ID_RE.match(span):
        return None
    sampled: bool | None = None
    debug = False
    if len(fields) >= 3:
        decision = _B3_SAMPLING.get(fields[2])
        if decision is None:
            return None
        sampled, debug = decision
    if len(fields) == 4 and not _SPAN_ID_RE.match(fields[3]):
        return None
    return _b3_context(trace, span, sampled, debug, "single")


def parse_b3_multi(trace: bytes | None, span: bytes | None, sampled_value: bytes | None,
                   flags: bytes | None) -> Incoming | None:
    """The context of the `X-B3-*` headers, else None (absent or malformed)."""
    debug = flags is not None and flags.strip() == b"1"
    sampled: bool | None = None
    if debug:
        sampled = True
    elif sampled_value is not None:
        sampled = _B3_SAMPLED_VALUES.get(sampled_value.strip().lower())
        if sampled is None:
            return None
    if trace is None and span is None:
        return Incoming(None, None, sampled, b3="multi", debug=debug) if sampled is not None else None
    if trace is None or span is None:
        return None
    trace = trace.strip().lower()
    span = span.strip().lower()
    if not _HEX_ID_RE.match(trace) or not _SPAN_ID_RE.match(span):
        return None
    return _b3_context(trace, span, sampled, debug, "multi")


def _b3_context(trace: bytes, span: bytes, sampled: bool | None, debug: bool,
                form: str) -> Incoming | None:
    original = trace.decode("ascii")
    trace_id = original.rjust(32, "0")
    parent_id = span.decode("ascii")
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return Incoming(trace_id, parent_id, sampled, b3=form, b3_trace_id=original, debug=debug)


def _list_value(values: list[bytes] | None, limit: int) -> bytes | None:
    """Several fields of one list header joined; None when empty, too long or not text."""
    if not values:
        return None
    joined = values[0] if len(values) == 1 else b",".join(values)
    joined = joined.strip()
    if not joined or len(joined) > limit or not _LIST_RE.match(joined):
        return None
    return joined


def extract(headers: Iterable[tuple[bytes, bytes]]) -> Incoming | None:
    """The downstream's trace context from its (lower-case) headers; None when it sent none.

    A context whose ids are invalid comes back without ids (and without tracestate) but keeps
    its baggage, so the caller starts a new trace and still passes the baggage on.
    """
    found = [(name, value) for name, value in headers if name in TRACE_HEADERS]
    if not found:
        return None
    if len(found) == 1 and found[0][0] == TRACEPARENT:
        # The common case: a W3C parent alone.
        parsed = parse_traceparent(found[0][1].strip())
        return Incoming(*parsed) if parsed is not None else None
    traceparent: list[bytes] = []
    tracestate: list[bytes] | None = None
    baggage: list[bytes] | None = None
    b3: list[bytes] = []
    multi: dict[bytes, list[bytes]] | None = None
    for name, value in found:
        if name == TRACEPARENT:
            traceparent.append(value)
        elif name == TRACESTATE:
            tracestate = (tracestate or []) + [value]
        elif name == BAGGAGE:
            baggage = (baggage or []) + [value]
        elif name == B3:
            b3.append(value)
        else:
            if multi is None:
                multi = {}
            multi.setdefault(name, []).append(value)
    return _from_fields(traceparent, tracestate, baggage, b3, multi)


def _from_fields(traceparent: list[bytes], tracestate: list[bytes] | None, baggage: list[bytes] | None,
                b3: list[bytes], multi: dict[bytes, list[bytes]] | None) -> Incoming | None:
    context: Incoming | None = None
    # One traceparent only: two are ambiguous and both are ignored (W3C: treat as invalid).
    if len(traceparent) == 1:
        parsed = parse_traceparent(traceparent[0].strip())
        if parsed is not None:
            context = Incoming(*parsed, tracestate=_list_value(tracestate, MAX_TRACESTATE))
    if context is None and len(b3) == 1:
        context = parse_b3_single(b3[0])
    if context is None and multi is not None:
        context = parse_b3_multi(_single(multi, B3_TRACE_ID), _single(multi, B3_SPAN_ID),
                                 _single(multi, B3_SAMPLED), _single(multi, B3_FLAGS))
    kept = _list_value(baggage, MAX_BAGGAGE)
    if kept is not None:
        if context is None:
            context = Incoming()
        context.baggage = kept
    return context


def _single(fields: dict[bytes, list[bytes]], name: bytes) -> bytes | None:
    values = fields.get(name)
    return values[0] if values is not None and len(values) == 1 else None


def traceparent(trace_id: str, span_id: str, sampled: bool) -> bytes:
    """A version-00 `traceparent` value."""
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}".encode("ascii")


def b3_single(trace_id: str, span_id: str, sampled: bool, debug: bool, parent_id: str | None) -> bytes:
    """A `b3` value: trace id as the downstream wrote it, sampling 1/0/d, and the parent's id."""
    flag = "d" if debug else ("1" if sampled else "0")
    text = f"{trace_id}-{span_id}-{flag}"
    if parent_id is not None:
        text += f"-{parent_id}"
    return text.encode("ascii")


def b3_multi(trace_id: str, span_id: str, sampled: bool, debug: bool, parent_id: str | None) -> Headers:
    """The `X-B3-*` headers for one upstream request."""
    out: Headers = [(B3_TRACE_ID, trace_id.encode("ascii")), (B3_SPAN_ID, span_id.encode("ascii"))]
    if parent_id is not None:
        out.append((B3_PARENT_ID, parent_id.encode("ascii")))
    if debug:
        out.append((B3_FLAGS, b"1"))
    else:
        out.append((B3_SAMPLED, b"1" if sampled else b"0"))
    return out


def strip(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` without trace context (the same list when there is none to remove)."""
    names = TRACE_HEADERS
    for name, _ in headers:
        if name in names:
            return [(n, v) for n, v in headers if n not in names]
    return headers
