"""The access log's lines: a request's fields made a JSON line, and lines written to the target.

`LineWriter.line` takes the fields of `FIELDS`, in order, the first a Unix time, the endpoint
already its URL, and returns the line; `AccessLog.log` calls it on the event loop, as the request
ends, and appends the line's bytes to the pending batch. `LineWriter.write` runs in the access log's
writer thread: it writes a batch of lines with one `write` (a few after a partial write).

A failed write (a full disk, a closed stdout) drops that batch and counts its lines in `drops`; a
write that failed half way leaves a torn line, and the next batch starts on a new line; failures
are reported through `complain` at most once a minute, and the writer keeps going.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import IO, Final

from gateway.core.memo import remember

FIELDS: Final = ("time", "trace_id", "span_id", "request_id", "client", "method", "path", "route", "service",
          "endpoint", "side", "status", "bytes_in", "bytes_out", "duration_ms", "upstream_ms", "attempts",
          "fallback", "error", "detail", "peer")
COMPLAIN_EVERY: Final = 60.0  # seconds between two reports of a failing target
_KNOWN: Final = 4096  # quoted strings remembered (route, service, endpoint, client, method names)


class LineWriter:
    """Lines to `file` (binary; flushed by `flush()`); `complain(text)` hears of a failing target,
    at most once a minute, and `target` names it in that text."""

    def __init__(self, file: IO[bytes], target: str, complain: Callable[[str], None]) -> None:
        self.file = file
        self.target = target
        self.drops = 0
        self._complain = complain
        self._complained = -COMPLAIN_EVERY
        self._torn = False  # a failed write may have left half a line: start the next on a new one
        self._second = -1
        self._second_text = ""  # the line's start up to the current second's fraction
        # JSON texts of the strings that repeat from line to line (names, URLs, addresses)
        self._quoted: dict[str, str] = {}

    def write(self, data: bytes | bytearray, lines: int) -> None:
        """Write `data`, `lines` whole lines, or drop and count them: a full disk must not stop us."""
        if not data:
            return
        if self._torn:
            data = b"\n" + data
        view = memoryview(data)
        try:
            while view:
                written = self.file.write(view)
                if written is None:  # a non-blocking target that is full: drop like a full disk
                    raise BlockingIOError("the access-log target would block")
                view = view[written:]
                self._torn = bool(view)
        except OSError as exc:
            self.failed(exc, lines)
        else:
            self._torn = False

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as exc:
            self.failed(exc, 0)

    def failed(self, exc: OSError, lines: int) -> None:
        """`lines` lost to `exc`: counted, and told at most once a minute."""
        self.drops += lines
        now = time.monotonic()
        if now - self._complained >= COMPLAIN_EVERY:
            self._complained = now
            self._complain(f"access log {self.target}: write failed ({exc.strerror or exc}); "
                           "dropping lines")

    def line(self, when: float, trace_id: str | None, span_id: str | None, request_id: bytes,
             client: str | None, method: str, path: str, route: str | None, service: str | None,
             endpoint: str | None, side: str | None, status: int, bytes_in: int, bytes_out: int,
             duration: float, upstream: float | None, attempts: int, fallback: str | None,
             error: str | None, detail: str | None, peer: str | None) -> str:
        """The line of one request (the fields of `FIELDS`); not thread-safe (one caller: the loop).

        Joined by hand: json.dumps of a dict costs several times more. No format spec either:
        compiled by mypyc, an f-string with `:d` or `:.3f` fields took 4.2 us a line, this join
        1.9 us; the repeated strings' JSON texts remembered and the milliseconds from a table,
        1.4 us. Other strings go through the C JSON escaper.
        """
        second = int(when)
        if second != self._second:
            self._second = second
            self._second_text = '{"time":"' + time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        millis = int((when - second) * 1000)
        known = self._known
        return "".join((
            self._second_text, _MILLIS[millis] if 0 <= millis < 1000 else "999",
            'Z","trace_id":', _text(trace_id), ',"span_id":', _text(span_id),
            ',"request_id":', _quote(request_id.decode("ascii", "replace")),
            ',"client":', known(client), ',"method":', known(method), ',"path":', _quote(path),
            ',"route":', known(route), ',"service":', known(service),
            ',"endpoint":', known(endpoint), ',"side":', known(side),
            ',"status":', str(status), ',"bytes_in":', str(bytes_in), ',"bytes_out":', str(bytes_out),
            ',"duration_ms":', _millis(duration),
            ',"upstream_ms":', "null" if upstream is None else _millis(upstream),
            ',"attempts":', str(attempts), ',"fallback":', known(fallback), ',"error":', known(error),
            ',"detail":', _text(detail), ',"peer":', known(peer), "}\n"))

    def _known(self, value: str | None) -> str:
        """The JSON text of a string that repeats (a route's name, a client's address), remembered."""
        if value is None:
            return "null"
        text = self._quoted.get(value)
        if text is None:
            text = remember(self._quoted, value, _quote(value), _KNOWN)
        return text


_quote: Final = json.encoder.encode_basestring
_MILLIS: Final = tuple(f"{millis:03d}" for millis in range(1000))  # three digits, from a table


def _millis(seconds: float) -> str:
    """`seconds` in milliseconds with three decimals (rounded to the microsecond).

    Compiled, `int(x + 0.5)` costs half of `round(x)` (a generic call), and "%.3f" as much as
    `round`; most upstream times are under a millisecond.
    """
    micros = int(seconds * 1_000_000 + 0.5)
    if micros < 1000:
        if micros >= 0:
            return "0." + _MILLIS[micros]
        return "%.3f" % (seconds * 1000)  # a clock stepped back
    return str(micros // 1000) + "." + _MILLIS[micros % 1000]


def _text(value: str | None) -> str:
    return "null" if value is None else _quote(value)
