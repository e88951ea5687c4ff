"""Request bodies held before an upstream is asked: request buffering, retry and fallback replay.

One mechanism for every reason to hold a body:

- buffering (a route's effective `buffering`, on by default): the whole body is read before any
  upstream connection is used, so a slow client ties up Peel (a coroutine and a buffer), never an
  upstream worker; it must arrive at `min_rate` on average (after `RATE_GRACE`) and within
  `timeout`, else 408 (`BodyTimeout`);
- retries and fallback: the same bytes go to a second attempt or to `from`, so the body is read
  first, up to the policy's `max_body` (in memory, no rate rule: the listener's body idle timeout
  still applies), unless buffering holds it already.

`read_body` returns a `BufferedBody`: the first `memory` bytes in memory, the rest in an unnamed
temporary file (mode 0600, gone when closed), at most `limit` bytes; `complete` says whether that is
all of it. `BufferedBody.reader(rest)` hands it over as ASGI messages from the start, as often as
asked, then goes on with `rest` (the downstream) when it is not complete.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from typing import IO, Final

from gateway.core.asgi import Message, Receive
from gateway.dataplane.request import BodyTooLarge
from gateway.upstream.pool import ExchangeAborted
from routes.migration import CompiledMigration
from routes.policies import RATE_GRACE

# Bytes read from the temporary file per message when a held body is replayed.
FILE_CHUNK: Final = 64 * 1024


class Watch:
    """How `_forward` treats a failure of the `to` side of a migration.

    `replay`: the request may be answered by `from` (nothing is sent downstream when `to` fails);
    otherwise the failure is only reported back (a retired miss is counted) and answered as is.
    """

    __slots__ = ("on_error", "replay", "statuses")

    def __init__(self, migration: CompiledMigration, replay: bool) -> None:
        self.statuses = migration.statuses
        self.on_error = migration.fallback.on_error
        self.replay = replay


class BodyTimeout(Exception):
    """A buffered request body came too slowly: 408 with `code` (`body-too-slow`, `body-timeout`)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class BufferedBody:
    """A request body read ahead: memory first, then a temporary file (`read_body` fills it)."""

    __slots__ = ("_file", "_memory", "_parts", "complete", "size")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._memory = 0  # bytes in `_parts`
        self._file: IO[bytes] | None = None
        self.size = 0
        self.complete = False

    @property
    def spilled(self) -> bool:
        """Part of the body went to a temporary file."""
        return self._file is not None

    def add(self, data: bytes, memory: int) -> None:
        if self._file is None and self._memory + len(data) <= memory:
            self._parts.append(data)
            self._memory += len(data)
        else:
            if self._file is None:
                # Unnamed (unlinked at once where the system allows), 0600, gone on close.
                self._file = tempfile.TemporaryFile(prefix="peel-body-")  # noqa: SIM115 (closed by close())
            self._file.write(data)
        self.size += len(data)

    def reader(self, rest: Receive | None = None) -> Receive:
        """A `receive` over the held bytes from the start, then `rest` when the body goes on."""
        held = b"".join(self._parts)
        if len(self._parts) > 1:
            self._parts = [held]
        file = self._file
        more = not self.complete
        offset = 0
        sent_memory = False

        async def receive() -> Message:
            nonlocal sent_memory, offset
            if not sent_memory:
                sent_memory = True
                if held or file is None:
                    return {"type": "http.request", "body": held, "more_body": file is not None or more}
            if file is not None:
                file.seek(offset)
                data = file.read(FILE_CHUNK)
                if data:
                    offset += len(data)
                    last = not more and file.tell() >= self.size - self._memory
                    return {"type": "http.request", "body": data, "more_body": not last}
            if rest is not None and more:
                return await rest()
            return {"type": "http.request", "body": b"", "more_body": False}

        return receive

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._parts = []


async def read_body(receive: Receive, limit: int, *, memory: int | None = None, min_rate: int = 0,
                    timeout: float | None = None, max_body: int | None = None,
                    grace: float = RATE_GRACE) -> BufferedBody:
    """Read a request body ahead, up to `limit` bytes (then `complete` is False).

    `memory`: bytes kept in memory before a temporary file takes the rest (None: all of it);
    `min_rate` (bytes/s, 0: none; by `grace` + n / min_rate seconds n bytes must be in) and
    `timeout` (s, None: none) raise `BodyTimeout`; `max_body`, the route's cap, raises
    `BodyTooLarge`; a client that leaves raises `ExchangeAborted`.
    """
    body = BufferedBody()
    keep = limit if memory is None else memory
    if not min_rate and timeout is None:
        await _read(receive, body, limit, keep, max_body, None)
        return body
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + timeout if timeout is not None else None

    def due() -> float:
        if not min_rate:
            assert end is not None
            return end
        by_rate = start + grace + body.size / min_rate
        return by_rate if end is None or by_rate < end else end

    try:
        async with asyncio.timeout_at(due()) as scope:
            await _read(receive, body, limit, keep, max_body, lambda: scope.reschedule(due()))
    except TimeoutError:
        body.close()
        elapsed = loop.time() - start
        if end is not None and loop.time() >= end - 0.001:
            raise BodyTimeout("body-timeout", f"the request body was not in after {timeout:g} s "
                              f"({body.size} bytes arrived)") from None
        raise BodyTimeout("body-too-slow", f"the request body came at {body.size / elapsed:.0f} "
                          f"bytes/s; this route needs at least {min_rate} bytes/s") from None
    except BaseException:
        body.close()
        raise
    return body


async def _read(receive: Receive, body: BufferedBody, limit: int, memory: int, max_body: int | None,
                progress: Callable[[], None] | None) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request":
            body.close()
            raise ExchangeAborted("the downstream closed the connection")
        data: bytes = message.get("body", b"")
        if data:
            if max_body is not None and body.size + len(data) > max_body:
                body.close()
                raise BodyTooLarge(max_body)
            body.add(data, memory)
        if not message.get("more_body", False):
            body.complete = True
            return
        if body.size >= limit:
            return
        if progress is not None:
            progress()
