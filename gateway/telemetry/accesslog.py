"""The access log: one JSON line per request, made and written off the event loop.

`AccessLog.log(...)` only appends a tuple to a bounded in-memory queue; a writer thread turns the
tuples into JSON lines and writes them in batches (`gateway.telemetry.accesslines.LineWriter`).
Writing never stalls a request: when the writer falls behind and the queue is full, new lines are
dropped; when a write fails (a full disk, a closed stdout), that batch is dropped; both are counted
in `dropped` (exported as `peel_access_log_dropped_total`), and a failing target is reported on the
log at most once a minute while the thread keeps going. `close()` writes what is queued and flushes.

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
from collections import deque
from typing import IO, Final

from gateway.telemetry.accesslines import FIELDS, LineWriter, Record
from routes.model import Endpoint

__all__ = ["FIELDS", "AccessLog", "open_private"]

_BATCH: Final = 256  # lines written per GIL hand-over: a long batch would stall the event loop

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
        self._max = max_queue
        self._interval = interval
        self._queue: deque[Record] = deque()
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
        """Lines lost so far: dropped because the queue was full, or in a batch whose write failed."""
        return self.full_drops + self.write_drops

    def log(self, request_id: bytes, client: str | None, method: str, path: str, route: str | None,
            service: str | None, endpoint: Endpoint | str | None, status: int, bytes_in: int, bytes_out: int,
            duration: float, upstream: float | None, error: str | None, side: str | None = None,
            fallback: str | None = None, *, trace_id: str | None = None, span_id: str | None = None,
            attempts: int = 0, detail: str | None = None, peer: str | None = None) -> None:
        """Queue one line; never blocks. `duration` and `upstream` are in seconds.

        `endpoint` may be the `Endpoint` itself (its URL is written). `side` is "from" or "to" on a
        migrated route; `fallback` the error code of the `to` attempt that `from` answered for;
        `trace_id`/`span_id` hex ids of the request's server span; `attempts` the upstream attempts
        made; `peer` the caller's identity (SPIFFE ID) on the inbound listener.
        """
        queue = self._queue
        if len(queue) >= self._max or not self.enabled:
            if self.enabled:
                self.full_drops += 1
            return
        queue.append((time.time() - duration, trace_id, span_id, request_id, client, method, path, route,
                      service, endpoint if endpoint is None or isinstance(endpoint, str) else endpoint.url,
                      side, status, bytes_in, bytes_out, duration, upstream, attempts, fallback, error,
                      detail, peer))

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
        lines = self._lines
        if lines is None or self._file is None:  # off, or closed
            return
        while queue:
            lines.write([queue.popleft() for _ in range(min(len(queue), _BATCH))])
            # Hand the GIL back to the event loop between batches.
            time.sleep(0)
        lines.flush()

    def _complain(self, text: str) -> None:
        log.error("%s, %d so far", text, self.dropped)
