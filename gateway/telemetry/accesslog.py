"""The access log: one JSON line per request, made on the event loop, written off it.

`AccessLog.log(...)` makes the request's line (`gateway.telemetry.accesslines.LineWriter.line`,
about 1.4 us compiled) and appends its bytes to a bounded pending batch, one buffer; a writer
thread takes the batch every `interval` and writes it with one `write`, without the GIL. Writing
never stalls a request: when the writer falls behind and the batch is full, new lines are dropped;
when a write fails (a full disk, a closed stdout), that batch is dropped; both are counted in
`dropped` (exported as `peel_access_log_dropped_total`), and a failing target is reported on the
log at most once a minute while the thread keeps going. `close()` writes what is pending and
flushes.

Why the line is made on the loop (issue 16, bench/README.md "The access log's line, made where
the request ends"): made in the writer thread, from a tuple of the request's objects queued for
it, a line cost the process about 5 us of a request's CPU, most of it not the formatting: the
thread formats holding the GIL the event loop waits for, on another core, from objects the loop
made and the cache no longer holds, and every request's objects (ids, path, times, the tuple)
stay alive until the writer frees them, so the loop's allocations come from colder memory. Made at
once, from what the loop has just touched, the line's objects are freed where they were made and
only bytes wait for the writer.

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

import logging
import os
import sys
import threading
import time
from typing import IO, Final

from gateway.telemetry.accesslines import FIELDS, LineWriter
from routes.model import Endpoint

__all__ = ["FIELDS", "AccessLog", "open_private"]

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
    only its name). `max_queue` bounds the lines pending for the writer, `interval` is how often
    (seconds) it writes them. `dropped` counts the lines lost: too many pending, or write failed.
    """

    def __init__(self, target: str, *, max_queue: int = 65536, interval: float = 0.05,
                 stream: IO[bytes] | None = None) -> None:
        self.target = target
        self.enabled = target != "off"
        self.full_drops = 0  # counted by the event loop
        self._max = max_queue
        self._interval = interval
        # The lines made since the writer last took them, and how many: swapped under `_lock`.
        self._pending = bytearray()
        self._pending_lines = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._file: IO[bytes] | None = None
        self._lines: LineWriter | None = None
        self._owns_file = False
        self._writer: threading.Thread | None = None
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
            self._lines = LineWriter(self._file, target, self._complain)
            self._writer = threading.Thread(target=self._run, name="peel-access-log", daemon=True)
            self._writer.start()

    @property
    def write_drops(self) -> int:
        """Lines lost in batches whose write failed (counted by the writer thread)."""
        return self._lines.drops if self._lines is not None else 0

    @property
    def dropped(self) -> int:
        """Lines lost so far: dropped because `max_queue` lines were pending, or in a batch whose
        write failed."""
        return self.full_drops + self.write_drops

    def log(self, request_id: bytes, client: str | None, method: str, path: str, route: str | None,
            service: str | None, endpoint: Endpoint | str | None, status: int, bytes_in: int, bytes_out: int,
            duration: float, upstream: float | None, error: str | None, side: str | None = None,
            fallback: str | None = None, *, trace_id: str | None = None, span_id: str | None = None,
            attempts: int = 0, detail: str | None = None, peer: str | None = None) -> None:
        """Make one line for the writer; never waits for it. `duration` and `upstream` are in seconds.

        `endpoint` may be the `Endpoint` itself (its URL is written). `side` is "from" or "to" on a
        migrated route; `fallback` the error code of the `to` attempt that `from` answered for;
        `trace_id`/`span_id` hex ids of the request's server span; `attempts` the upstream attempts
        made; `peer` the caller's identity (SPIFFE ID) on the inbound listener.
        """
        lines = self._lines
        if lines is None or self._file is None:  # off, or closed
            return
        if self._pending_lines >= self._max:
            self.full_drops += 1
            return
        data = lines.line(time.time() - duration, trace_id, span_id, request_id, client, method, path,
                          route, service,
                          endpoint if endpoint is None or isinstance(endpoint, str) else endpoint.url,
                          side, status, bytes_in, bytes_out, duration, upstream, attempts, fallback,
                          error, detail, peer).encode("utf-8", "backslashreplace")
        with self._lock:
            self._pending += data
            self._pending_lines += 1

    def close(self) -> None:
        """Write everything pending, flush, and stop the writer thread; later lines are not made."""
        if self._writer is not None:
            self._stop.set()
            self._writer.join()
            self._writer = None
        if self._file is not None:
            self._write_pending()
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
            self._write_pending()

    def _write_pending(self) -> None:
        lines = self._lines
        if lines is None or self._file is None:  # off, or closed
            return
        with self._lock:
            data, count = self._pending, self._pending_lines
            if not count:
                return
            self._pending = bytearray()
            self._pending_lines = 0
        lines.write(data, count)  # the GIL is released while the system call writes
        lines.flush()

    def _complain(self, text: str) -> None:
        log.error("%s, %d so far", text, self.dropped)
