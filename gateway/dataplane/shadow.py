"""The shadow stage on the request path: `from` answers, a copy goes to `to` and is compared.

    shadower = Shadower(proxy_settings, dialer, stats, rules)
    pending = await shadower.prepare(req, route, migration, version)   # before `from` is asked
    await forwarder.call(req, migration.from_service, None)             # the primary, unchanged
    shadower.submit(pending, req)                                       # after it was answered

`prepare` decides whether the request can be copied (the method: GET, HEAD and OPTIONS only,
unless the route allows others or names a sandbox for them; the body: up to `shadow.max_body`,
else skipped and counted; the route's queue: full means dropped and counted, before any work),
takes a copy of the request body and wraps `req.send` so that the primary's answer is recorded as
it goes downstream (status, headers and the body up to `shadow.max_body`): the bytes the client gets
are the same, in the same messages.

`submit` puts the job on the route's own bounded queue (`shadow.queue`), served by at most
`shadow.concurrency` tasks; nothing on the primary's path waits for a copy. A copy goes on a
connection pool of its own (never the primary's idle connections), with `shadow.timeout` for the
whole exchange, the marker header `Peel-Shadow: 1` and Peel's request id; a sampled share of the
copies (`baseline_percent`, safe methods only) also goes a second time to `from`, the noise baseline.
The pair is compared (`facade.compare`) in one worker thread, off the event loop, and counted in
`facade.shadow_counts.ShadowStats` (flushed to the store like the traffic counts), with a redacted
example pair when it differs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from facade.compare import CREDENTIAL_HEADERS, REDACTED, Comparison, Reply, compare
from facade.shadow_counts import ShadowStats
from facade.window import GuardSamples, measured
from gateway.core.asgi import Message
from gateway.core.settings import ProxySettings
from gateway.dataplane.buffering import read_body
from gateway.dataplane.request import RequestState
from gateway.http.headers import ForwardingRules
from gateway.http.http1 import request_head
from gateway.upstream.dial import Dial
from gateway.upstream.pool import UpstreamPool
from routes.migration import FULL_SHARE, SAFE_METHODS, CompiledMigration, ShadowSpec
from routes.services import Endpoint
from routes.table import CompiledRoute, RouteTable

log: Final = logging.getLogger("peel.shadow")
MARKER_NAME: Final = b"peel-shadow"
MARKER: Final = (MARKER_NAME, b"1")
_DROP: Final = frozenset({b"content-length", b"transfer-encoding", b"peel-shadow"})
# Differences kept in one example pair.
EXAMPLE_DIFFERENCES: Final = 10
# Bytes (request bodies and recorded answers) one route's lane holds while copies wait or run: a
# full queue of 1 MiB bodies would otherwise hold hundreds of MiB. Past it, copies are dropped.
LANE_BYTES: Final = 16 << 20


class ShadowTooLarge(Exception):
    """An answer of a copy passed `shadow.max_body`: the pair is skipped."""


class Pending:
    """A request being shadowed: what `prepare` took, and the primary's answer as it went out."""

    __slots__ = ("baseline", "body", "chunks", "head_request", "headers", "lane", "limit", "method",
                 "migration", "oversize", "reply_headers", "route", "size", "spec", "status", "target",
                 "target_path", "version")

    def __init__(self, route: CompiledRoute, migration: CompiledMigration, spec: ShadowSpec,
                 version: int, lane: Lane, target: str, baseline: bool) -> None:
        self.route = route
        self.migration = migration
        self.spec = spec
        self.version = version
        self.lane = lane
        self.target = target
        self.baseline = baseline
        self.method = ""
        self.target_path = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.head_request = False
        self.limit = spec.max_body
        # the primary's answer
        self.status = 0
        self.reply_headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.oversize = False

    def capture(self, send: Callable[[Message], Any]) -> Callable[[Message], Any]:
        """`send` that records the primary's answer on its way (the same messages go out)."""

        async def recording(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                self.status = message["status"]
                self.reply_headers = list(message.get("headers", ()))
            elif kind == "http.response.body" and not self.oversize:
                data = message.get("body", b"")
                if data:
                    self.size += len(data)
                    if self.size > self.limit:
                        self.oversize = True
                        self.chunks = []
                    else:
                        self.chunks.append(bytes(data))
            await send(message)

        return recording

    def primary(self) -> Reply:
        return Reply(self.status, tuple(self.reply_headers), b"".join(self.chunks))


class Lane:
    """The bounded queue and the workers of one route's shadow in this process."""

    __slots__ = ("held", "queue", "spec", "tasks")

    def __init__(self, spec: ShadowSpec) -> None:
        self.spec = spec
        self.queue: asyncio.Queue[tuple[Pending, Reply]] = asyncio.Queue(maxsize=spec.queue)
        self.tasks: list[asyncio.Task[None]] = []
        self.held = 0  # bytes of the copies queued or in flight (`LANE_BYTES`)

    def start(self, run: Callable[[Pending, Reply], Any]) -> None:
        if self.tasks:
            return

        async def work() -> None:
            while True:
                pending, primary = await self.queue.get()
                try:
                    await run(pending, primary)
                except Exception:
                    log.exception("shadow copy of route %s failed unexpectedly", pending.route.name)
                finally:
                    self.held -= len(pending.body) + len(primary.body)

        self.tasks = [asyncio.create_task(work()) for _ in range(self.spec.concurrency)]

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks = []


class Shadower:
    """The shadow copies of one serving process: a pool of their own, lanes per route, a comparer.

    `stats` receives the counts; `rand` draws the baseline sample; `clock` dates the examples.
    """

    def __init__(self, settings: ProxySettings, dialer: Dial | None, stats: ShadowStats,
                 rules: ForwardingRules, *, rand: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.time) -> None:
        self.stats = stats
        self.samples: GuardSamples | None = None  # the guard's measurements (ProxyApp sets them)
        self._pool = UpstreamPool(settings, dialer=dialer)
        self._rules = rules
        self._rand = rand
        self._clock = clock
        self._lanes: dict[str, Lane] = {}
        self._turn = 0
        # One thread: comparing costs CPU in proportion to the bodies, and must not hold the loop.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="peel-shadow-compare")

    def follow(self, table: RouteTable) -> None:
        """A new route table: stop the lanes of routes that are gone or whose shadow changed."""
        for name in list(self._lanes):
            lane = self._lanes[name]
            route = table.route(name)
            wanted = route.migration.shadow if route is not None and route.migration is not None else None
            if wanted != lane.spec:
                lane.stop()
                del self._lanes[name]

    async def aclose(self) -> None:
        for lane in self._lanes.values():
            lane.stop()
        self._lanes = {}
        await self._pool.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _lane(self, route: str, spec: ShadowSpec) -> Lane:
        lane = self._lanes.get(route)
        if lane is not None and lane.spec is spec:
            return lane
        if lane is not None and lane.spec == spec:
            # A new table with the same shadow: the lane (its queue, its copies in flight) goes on.
            lane.spec = spec
            return lane
        if lane is not None:
            lane.stop()
        lane = self._lanes[route] = Lane(spec)
        lane.start(self._run)
        return lane

    async def prepare(self, req: RequestState, route: CompiledRoute, migration: CompiledMigration,
                      version: int) -> Pending | None:
        """Whether this request is copied (None: skipped or dropped, and counted); when it is,
        its body is held and the primary's answer will be recorded."""
        spec = migration.shadow
        if spec is None:
            return None
        name = route.name
        target = spec.target(req.method)
        if target is None:
            self.stats.skipped(name, version)
            return None
        lane = self._lane(name, spec)
        if lane.queue.full():
            self.stats.dropped(name, version)
            return None
        body = b""
        if req.has_body:
            if req.body is None:  # not held by buffering already
                req.body = await read_body(req.receive, spec.max_body)
            held = req.body
            if not held.complete or held.size > spec.max_body:
                self.stats.skipped(name, version)
                return None
            parts = []
            receive = held.reader()
            while True:
                message = await receive()
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = b"".join(parts)
        # The baseline sends the request to `from` a second time: safe methods only, whatever the
        # route allows for `to` (a second POST to the old service would write twice).
        baseline = (req.method in SAFE_METHODS and spec.baseline_share > 0
                    and self._rand() * FULL_SHARE < spec.baseline_share)
        pending = Pending(route, migration, spec, version, lane, target, baseline)
        pending.method = req.method
        pending.head_request = req.method == "HEAD"
        pending.body = body
        path = route.rewrite_path(req.path).encode("ascii", "backslashreplace")
        pending.target_path = path + b"?" + req.query if req.query else path
        scope = req.scope
        headers = [(n, v) for n, v in self._rules.upstream_request(
            scope["headers"], client=req.client, scheme=scope["scheme"], host=req.host_header,
            request_id=req.request_id) if n not in _DROP]
        host = route.upstream_host
        if host is not None:
            headers.append((b"host", host.encode("ascii")))
        elif req.host_header is not None:
            headers.append((b"host", req.host_header))
        if body or req.has_body:
            headers.append((b"content-length", b"%d" % len(body)))
        headers.append(MARKER)
        pending.headers = route.request_headers.apply(headers)
        req.send = pending.capture(req.send)
        req.respond = None  # the answer goes through `send`, where it is recorded
        return pending

    def submit(self, pending: Pending | None, req: RequestState) -> None:
        """The primary was answered: queue the copy (never waits; full: dropped and counted)."""
        if pending is None:
            return
        name = pending.route.name
        if req.error is not None or pending.oversize or not pending.status:
            # The primary failed or was too large to record: nothing to compare it with.
            self.stats.skipped(name, pending.version)
            return
        lane = pending.lane
        primary = pending.primary()
        size = len(pending.body) + len(primary.body)
        if lane.held + size > LANE_BYTES or lane.queue.full():
            self.stats.dropped(name, pending.version)
            return
        lane.queue.put_nowait((pending, primary))
        lane.held += size

    def _endpoint(self, pending: Pending, side: str) -> Endpoint:
        if side == "sandbox":
            sandbox = pending.spec.sandbox
            assert sandbox is not None
            return sandbox
        endpoints = pending.migration.service(side).endpoints
        self._turn += 1
        return endpoints[self._turn % len(endpoints)]

    async def _run(self, pending: Pending, primary: Reply) -> None:
        name, version, spec = pending.route.name, pending.version, pending.spec
        timeout = spec.timeout
        # a guarded migration's shadow step judges `to` by these copies (facade.window.measured)
        samples = self.samples if pending.migration.spec.guard is not None else None
        copies = [measured(samples, name, "to", self._copy(pending, pending.target, timeout),
                           lambda reply: reply.status)]
        if pending.baseline:
            copies.append(self._copy(pending, "from", timeout))
        results = await asyncio.gather(*copies, return_exceptions=True)
        candidate = results[0]
        if isinstance(candidate, ShadowTooLarge):
            self.stats.skipped(name, version)
            return
        if isinstance(candidate, BaseException):
            if isinstance(candidate, asyncio.CancelledError):
                raise candidate
            self.stats.failed(name, version)
            return
        baseline = results[1] if len(results) > 1 and isinstance(results[1], Reply) else None
        rules = spec.compare
        loop = asyncio.get_running_loop()
        new, old = await loop.run_in_executor(
            self._executor, lambda: (compare(primary, candidate, rules),
                                     compare(primary, baseline, rules) if baseline is not None else None))
        example = None if new.same else self._example(pending, primary, candidate, new)
        self.stats.compared(name, version, new, old, example)

    async def _copy(self, pending: Pending, side: str, timeout: float) -> Reply:
        endpoint = self._endpoint(pending, side)
        head = request_head(pending.method, pending.target_path, pending.headers)
        reply = await asyncio.wait_for(self._exchange(endpoint, head + pending.body,
                                                      pending.head_request, pending.limit, timeout),
                                       timeout)
        # The answer as the primary's went downstream: through the route's response header rules.
        return Reply(reply.status, tuple(pending.route.response_headers.apply(list(reply.headers))),
                     reply.body)

    async def _exchange(self, endpoint: Endpoint, request: bytes, head_request: bool, limit: int,
                        timeout: float) -> Reply:
        pool = self._pool
        conn = pool.take_idle(endpoint)
        if conn is None:
            conn = await pool.connect(endpoint, timeout)
        done = False
        try:
            conn.begin(head_request=head_request)
            reader = conn.reader
            assert reader is not None
            conn.write_whole(request)
            while reader.head is None:
                if conn.error is not None:
                    raise conn.error
                if conn.closed:
                    raise ConnectionError(f"{endpoint.url} closed the connection")
                await conn.wait(None, "shadow response head")
            chunks: list[bytes] = []
            size = 0
            while True:
                if conn.body:
                    data = conn.take()
                    size += len(data)
                    if size > limit:
                        raise ShadowTooLarge(f"{endpoint.url} answered more than {limit} bytes")
                    chunks.append(data)
                if reader.done:
                    break
                if conn.error is not None:
                    raise conn.error
                if conn.closed:
                    raise ConnectionError(f"{endpoint.url} closed the connection")
                await conn.wait(None, "shadow response body")
            head = reader.head
            reply = Reply(head.status, tuple(head.headers), b"".join(chunks))
            pool.release(conn)
            done = True
            return reply
        finally:
            if not done:
                conn.close(abort=True)

    def _example(self, pending: Pending, primary: Reply, candidate: Reply,
                 comparison: Comparison) -> dict[str, Any]:
        """A redacted example pair: the request line, the compared heads, the first differences."""
        wanted = pending.spec.compare.headers

        def head(reply: Reply) -> dict[str, Any]:
            headers: dict[str, str] = {}
            for name, value in reply.headers:
                text = name.decode("latin-1").lower()
                if text in wanted:
                    shown = REDACTED if text in CREDENTIAL_HEADERS else value.decode("latin-1")
                    headers[text] = f"{headers[text]}, {shown}" if text in headers else shown
            return {"status": reply.status, "headers": headers}

        path = pending.target_path.split(b"?", 1)[0].decode("ascii", "replace")
        return {"time": self._clock(), "method": pending.method, "path": path,
                "primary": head(primary), "candidate": head(candidate),
                "differences": [{"path": d.path, "field": d.field, "kind": d.kind,
                                 "primary": d.primary, "candidate": d.candidate}
                                for d in comparison.differences[:EXAMPLE_DIFFERENCES]],
                "total": comparison.total}

