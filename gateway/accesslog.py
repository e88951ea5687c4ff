"""The access log: one JSON line per request, written off the event loop.

`AccessLog.log(...)` only appends a tuple to a bounded in-memory queue; a writer thread turns the
tuples into JSON lines and writes them in batches. When the writer falls behind and the queue is
full, lines are dropped and counted (`dropped`) rather than slowing requests down or growing
memory. `close()` writes what is queued and flushes.

Fields: time (RFC 3339 UTC, the request's start), request_id, client, method, path, route,
service, endpoint, status, bytes_in, bytes_out, duration_ms, upstream_ms, error (a Peel error code
or null), side ("from"/"to" on a migrated route, else null), fallback (the code of the `to` failure
that `from` answered for, else null).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from typing import IO, Any

from routes.model import Endpoint

FIELDS = ("time", "request_id", "client", "method", "path", "route", "service", "endpoint",
          "status", "bytes_in", "bytes_out", "duration_ms", "upstream_ms", "error", "side", "fallback")
_BATCH = 256  # lines written per GIL hand-over: a long batch would stall the event loop


class AccessLog:
    """Access log to `target`: "stdout", "off", or a file path (appended to)."""

    def __init__(self, target: str, *, max_queue: int = 65536, interval: float = 0.05) -> None:
        self.target = target
        self.enabled = target != "off"
        self.dropped = 0
        self._max = max_queue
        self._interval = interval
        self._queue: deque[tuple[Any, ...]] = deque()
        self._stop = threading.Event()
        self._file: IO[bytes] | None = None
        self._owns_file = False
        self._thread: threading.Thread | None = None
        self._second = -1
        self._second_text = ""
        if self.enabled:
            if target == "stdout":
                self._file = sys.stdout.buffer
            else:
                self._file = open(target, "ab")  # noqa: SIM115 - closed in close()
                self._owns_file = True
            self._thread = threading.Thread(target=self._run, name="peel-access-log", daemon=True)
            self._thread.start()

    def log(self, request_id: bytes, client: str | None, method: str, path: str, route: str | None,
            service: str | None, endpoint: Endpoint | str | None, status: int, bytes_in: int, bytes_out: int,
            duration: float, upstream: float | None, error: str | None, side: str | None = None,
            fallback: str | None = None) -> None:
        """Queue one line; never blocks. `duration` and `upstream` are in seconds.

        `endpoint` may be the `Endpoint` itself: its URL is then formatted by the writer thread.
        `side` is "from" or "to" on a migrated route; `fallback` the error code of the `to`
        attempt that `from` answered for.
        """
        queue = self._queue
        if len(queue) >= self._max or not self.enabled:
            if self.enabled:
                self.dropped += 1
            return
        queue.append((time.time() - duration, request_id, client, method, path, route, service,
                      endpoint, status, bytes_in, bytes_out, duration, upstream, error, side, fallback))

    def close(self) -> None:
        """Write everything queued, flush, and stop the writer thread."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._file is not None:
            self._write_queued()
            self._file.flush()
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
            try:
                self._write_queued()
            except OSError as exc:  # a full disk must not kill the thread; the lines are lost
                print(f"peel: access log write failed: {exc}", file=sys.stderr)

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
            file.write("".join(lines).encode("utf-8", "backslashreplace"))
            # Hand the GIL back to the event loop between batches.
            time.sleep(0)
        file.flush()

    def _rfc3339(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((when - second) * 1000):03d}Z"

    def _line(self, record: tuple[Any, ...]) -> str:
        # Formatted by hand: json.dumps of a dict costs several times more, and this thread
        # competes with the event loop for the GIL. Strings go through the C JSON escaper.
        (when, request_id, client, method, path, route, service, endpoint, status, bytes_in,
         bytes_out, duration, upstream, error, side, fallback) = record
        return (f'{{"time":"{self._rfc3339(when)}",'
                f'"request_id":{_quote(request_id.decode("ascii", "replace"))},'
                f'"client":{_text(client)},"method":{_quote(method)},"path":{_quote(path)},'
                f'"route":{_text(route)},"service":{_text(service)},'
                f'"endpoint":{_text(_url(endpoint))},'
                f'"status":{status:d},"bytes_in":{bytes_in:d},"bytes_out":{bytes_out:d},'
                f'"duration_ms":{duration * 1000:.3f},'
                f'"upstream_ms":{"null" if upstream is None else format(upstream * 1000, ".3f")},'
                f'"error":{_text(error)},"side":{_text(side)},"fallback":{_text(fallback)}}}\n')


_quote = json.encoder.encode_basestring


def _url(endpoint: Endpoint | str | None) -> str | None:
    return endpoint if endpoint is None or isinstance(endpoint, str) else endpoint.url


def _text(value: str | None) -> str:
    return "null" if value is None else _quote(value)
