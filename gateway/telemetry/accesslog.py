"""The access log: one JSON line per request, written off the event loop.

`AccessLog.log(...)` only appends a tuple to a bounded in-memory queue; a writer thread turns the
tuples into JSON lines and writes them in batches. Writing never stalls a request: when the writer
falls behind and the queue is full, new lines are dropped; when a write fails (a full disk, a closed
stdout), that batch is dropped; both are counted in `dropped` (exported as
`peel_access_log_dropped_total`), and a failing target is reported on the log at most once a minute
while the thread keeps going. `close()` writes what is queued and flushes.

Fields, in this order: time (RFC 3339 UTC, the request's start), trace_id and span_id (of the
request's server span; null without tracing), request_id, client, method, path, route, service,
endpoint, side ("from"/"to" on a migrated route, else null), status, bytes_in, bytes_out,
duration_ms, upstream_ms (until the upstream's response head), attempts (upstream attempts made,
retries and the fallback included; 0: none), fallback (the code of the `to` failure that `from`
answered for, else null), error (a Peel error code or null), detail (what went wrong in the
operator's words, such as the endpoint that refused or the TLS error, where the client was given
a generic text; else null).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import deque
from typing import IO, Any, Final

from routes.model import Endpoint

FIELDS: Final = ("time", "trace_id", "span_id", "request_id", "client", "method", "path", "route", "service",
          "endpoint", "side", "status", "bytes_in", "bytes_out", "duration_ms", "upstream_ms", "attempts",
          "fallback", "error", "detail", "peer")
_BATCH: Final = 256  # lines written per GIL hand-over: a long batch would stall the event loop
_COMPLAIN_EVERY: Final = 60.0  # seconds between two reports of a failing target

log: Final = logging.getLogger("peel.accesslog")


def open_private(path: str) -> IO[bytes]:
    """`path` opened for appending, unbuffered; created 0600 whatever the umask (client addresses,
    paths and request ids are for the operator's eyes), an existing file's mode left alone."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o600)
    except FileExistsError:
        fd = os.open(path, flags)
    return os.fdopen(fd, "ab", buffering=0)


class AccessLog:
    """Access log to `target`: "stdout", "off", or a file path (appended to).

    `stream` replaces the target's file with an already open binary file (tests; `target` is then
    only its name). `dropped` counts the lines lost: queue full or write failed.
    """

    def __init__(self, target: str, *, max_queue: int = 65536, interval: float = 0.05,
                 stream: IO[bytes] | None = None) -> None:
        self.target = target
        self.enabled = target != "off"
        self.full_drops = 0  # counted by the event loop
        self.write_drops = 0  # counted by the writer thread
        self._max = max_queue
        self._interval = interval
        self._queue: deque[tuple[Any, ...]] = deque()
        self._stop = threading.Event()
        self._file: IO[bytes] | None = None
        self._owns_file = False
        self._writer: threading.Thread | None = None
        self._second = -1
        self._second_text = ""  # the line's start up to the current second's fraction
        self._torn = False  # a failed write may have left half a line: start the next on a new one
        self._complained = -_COMPLAIN_EVERY
        if self.enabled:
            if stream is not None:
                self._file = stream
            elif target == "stdout":
                self._file = sys.stdout.buffer
            else:
                # Unbuffered: lines are batched already, and a failed write must not leave bytes
                # behind in a buffer that a later flush would write out of order.
                self._file = open_private(target)
                self._owns_file = True
            self._writer = threading.Thread(target=self._run, name="peel-access-log", daemon=True)
            self._writer.start()

    @property
    def dropped(self) -> int:
        """Lines lost so far: dropped because the queue was full, or in a batch whose write failed."""
        return self.full_drops + self.write_drops

    def log(self, request_id: bytes, client: str | None, method: str, path: str, route: str | None,
            service: str | None, endpoint: Endpoint | str | None, status: int, bytes_in: int, bytes_out: int,
            duration: float, upstream: float | None, error: str | None, side: str | None = None,
            fallback: str | None = None, *, trace_id: str | None = None, span_id: str | None = None,
            attempts: int = 0, detail: str | None = None, peer: str | None = None) -> None:
        """Queue one line; never blocks. `duration` and `upstream` are in seconds.

        `endpoint` may be the `Endpoint` itself: its URL is then formatted by the writer thread.
        `side` is "from" or "to" on a migrated route; `fallback` the error code of the `to`
        attempt that `from` answered for; `trace_id`/`span_id` hex ids of the request's server
        span; `attempts` the upstream attempts made; `peer` the caller's identity (SPIFFE ID) on the
        inbound listener.
        """
        queue = self._queue
        if len(queue) >= self._max or not self.enabled:
            if self.enabled:
                self.full_drops += 1
            return
        queue.append((time.time() - duration, trace_id, span_id, request_id, client, method, path, route,
                      service, endpoint, side, status, bytes_in, bytes_out, duration, upstream, attempts,
                      fallback, error, detail, peer))

    def close(self) -> None:
        """Write everything queued, flush, and stop the writer thread."""
        if self._writer is not None:
            self._stop.set()
            self._writer.join()
            self._writer = None
        if self._file is not None:
            self._write_queued()
            if self._owns_file:
                self._file.close()
            self._file = None

    def __enter__(self) -> AccessLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writer thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._write_queued()

    def _write_queued(self) -> None:
        queue = self._queue
        file = self._file
        if file is None:
            return
        while queue:
            lines = []
            for _ in range(_BATCH):
                if not queue:
                    break
                lines.append(self._line(queue.popleft()))
            self._write(file, "".join(lines).encode("utf-8", "backslashreplace"), len(lines))
            # Hand the GIL back to the event loop between batches.
            time.sleep(0)
        try:
            file.flush()
        except OSError as exc:
            self._failed(exc, 0)

    def _write(self, file: IO[bytes], data: bytes, lines: int) -> None:
        """Write a batch whole, or drop and count it: a full disk must not stop the thread."""
        if self._torn:
            data = b"\n" + data
        view = memoryview(data)
        try:
            while view:
                written = file.write(view)
                if written is None:  # a non-blocking target that is full: drop like a full disk
                    raise BlockingIOError("the access-log target would block")
                view = view[written:]
                self._torn = bool(view)
        except OSError as exc:
            self._failed(exc, lines)
        else:
            self._torn = False

    def _failed(self, exc: OSError, lines: int) -> None:
        self.write_drops += lines
        now = time.monotonic()
        if now - self._complained >= _COMPLAIN_EVERY:
            self._complained = now
            log.error("access log %s: write failed (%s); dropping lines, %d so far", self.target,
                      exc.strerror or exc, self.dropped)

    def _line(self, record: tuple[Any, ...]) -> str:
        # Joined by hand: json.dumps of a dict costs several times more, and this thread competes
        # with the event loop for the GIL. No format spec either: compiled by mypyc, an f-string
        # with `:d` or `:.3f` fields took 4.2 us a line, this join 1.9 us. Strings go through the
        # C JSON escaper.
        (when, trace_id, span_id, request_id, client, method, path, route, service, endpoint, side,
         status, bytes_in, bytes_out, duration, upstream, attempts, fallback, error, detail, peer) = record
        second = int(when)
        if second != self._second:
            self._second = second
            self._second_text = '{"time":"' + time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        millis = int((when - second) * 1000)
        return "".join((
            self._second_text, _MILLIS[millis] if 0 <= millis < 1000 else "999",
            'Z","trace_id":', _text(trace_id), ',"span_id":', _text(span_id),
            ',"request_id":', _quote(request_id.decode("ascii", "replace")),
            ',"client":', _text(client), ',"method":', _quote(method), ',"path":', _quote(path),
            ',"route":', _text(route), ',"service":', _text(service),
            ',"endpoint":', _text(_url(endpoint)), ',"side":', _text(side),
            ',"status":', str(status), ',"bytes_in":', str(bytes_in), ',"bytes_out":', str(bytes_out),
            ',"duration_ms":', "%.3f" % (duration * 1000),
            ',"upstream_ms":', "null" if upstream is None else "%.3f" % (upstream * 1000),
            ',"attempts":', str(attempts), ',"fallback":', _text(fallback), ',"error":', _text(error),
            ',"detail":', _text(detail), ',"peer":', _text(peer), "}\n"))


_quote: Final = json.encoder.encode_basestring
_MILLIS: Final = tuple(f"{millis:03d}" for millis in range(1000))  # the milliseconds of a time, as written


def _url(endpoint: Endpoint | str | None) -> str | None:
    return endpoint if endpoint is None or isinstance(endpoint, str) else endpoint.url


def _text(value: str | None) -> str:
    return "null" if value is None else _quote(value)
