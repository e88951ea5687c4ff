"""Forwarding one request to one service: endpoint choice, attempts, retries, deadlines, streaming.

`Forwarder.call(request, service, watch)` is step 6 of the request path (DESIGN.md): check the
service's circuit breaker, pick an endpoint (`gateway.upstream.endpoints`), send the request on a pooled
upstream connection, and either stream the answer back or, when the attempt failed before anything
went downstream, retry it per the route's policy (`gateway.policy.retry`) on another endpoint, within the
retry budget and the request's deadline. Each attempt reports its latency and outcome to the
endpoint's state (balancing, outlier ejection).

A failure that is not retried is answered as `application/problem+json` (or, for a migration's `to`
side with a replayable body, handed back so that `from` answers: see `gateway.dataplane.buffering.Watch`).
Once the response has started, a failure resets the downstream connection, so a cut body never
passes for a complete one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from facade.cohort import with_side
from gateway.core.asgi import Downstream, Receive
from gateway.core.errors import (
    CircuitOpen,
    DeadlineExceeded,
    ProtocolError,
    UpstreamError,
    UpstreamReset,
    UpstreamTimeout,
)
from gateway.core.settings import ProxySettings
from gateway.dataplane.buffering import BodyTimeout, Watch, read_body
from gateway.dataplane.request import BodyTooLarge, RequestState, abort_downstream, send_problem
from gateway.http.headers import ForwardingRules
from gateway.http.http1 import LAST_CHUNK, chunk, request_head
from gateway.policy.deadline import MIN_REMAINING, DeadlineRules, expired
from gateway.policy.retry import (
    IDEMPOTENT_METHODS,
    RetryBudget,
    RetryBudgets,
    backoff,
    may_retry_after,
    method_may_retry,
    retry_after,
    retry_statuses,
)
from gateway.upstream.balancer import hash_key
from gateway.upstream.pool import ExchangeAborted, UpstreamConnection, UpstreamPool

if TYPE_CHECKING:
    from gateway.telemetry.metrics import Metrics
    from gateway.upstream.endpoints import EndpointState, ServiceState, Upstreams
    from routes.model import Endpoint
    from routes.table import CompiledRoute, CompiledService

log: Final = logging.getLogger("peel.proxy")
_perf: Final = time.perf_counter
_now: Final = time.monotonic
_RETRY_AFTER_ONE: Final = (b"retry-after", b"1")


class Forwarder:
    """Sends requests to services and streams the answers back (one per serving process)."""

    def __init__(self, pool: UpstreamPool, upstreams: Upstreams, rules: ForwardingRules,
                 settings: ProxySettings, *, deadlines: DeadlineRules | None = None,
                 metrics: Metrics | None = None) -> None:
        self._pool = pool
        self._upstreams = upstreams
        self._rules = rules
        self._rid_name = rules.request_id_name
        # Peel's request id replaces the upstream's own in the response.
        self._drop = frozenset({self._rid_name})
        self._connect_timeout = settings.connect_timeout
        self._response_timeout = settings.response_timeout
        self._idle_timeout = settings.idle_timeout
        self._deadlines = deadlines
        self._metrics = metrics
        self.budgets = RetryBudgets()

    async def problem(self, req: RequestState, status: int, code: str, detail: str, *,
                      close: bool = False, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        await send_problem(req, status, code, detail, close=close, headers=headers,
                           rid_name=self._rid_name)

    async def buffer(self, req: RequestState, route: CompiledRoute) -> bool:
        """Read the whole request body before any upstream is asked (the route's `buffering`).

        False when the body came too slowly: it was answered 408 (and the connection closes). A body
        past the route's `max_body` raises `BodyTooLarge`; past `buffering.max_body`, the held part
        goes first and the rest streams.
        """
        policy = route.buffering
        assert policy is not None
        try:
            req.body = await read_body(req.receive, policy.max_body, memory=policy.memory,
                                       min_rate=policy.min_rate, timeout=policy.timeout,
                                       max_body=route.max_body)
        except BodyTimeout as exc:
            await self.problem(req, 408, exc.code, str(exc), close=True)
            return False
        req.bytes_in = req.body.size
        return True

    async def call(self, req: RequestState, service: CompiledService,
                   watch: Watch | None) -> str | None:
        """Forward `req` to `service`; the failure code when `watch` saw this (`to`) side fail.

        With `watch.replay`, nothing reaches the downstream on such a failure, so the caller can ask
        `from`; otherwise the failure has been answered already.
        """
        req.service = service.name
        return await self._attempts(req, service, self._upstreams.service(service), watch)

    async def _fail(self, req: RequestState, exc: UpstreamError, watch: Watch | None) -> str | None:
        """A failure before anything went downstream: hand it to the fallback, or answer it."""
        if watch is not None and watch.on_error:
            if watch.replay:
                return exc.code
            req.error = exc.code
            await self.problem(req, exc.status, exc.code, str(exc) or exc.code,
                               headers=_retry_after_for(exc))
            return exc.code
        req.error = exc.code
        await self.problem(req, exc.status, exc.code, str(exc) or exc.code, headers=_retry_after_for(exc))
        return None

    async def _attempts(self, req: RequestState, service: CompiledService, state: ServiceState,
                        watch: Watch | None) -> str | None:
        route = req.compiled
        assert route is not None
        policy = route.retries
        retry = policy.attempts > 1 and method_may_retry(req.method, req.scope["headers"], policy)
        budget: RetryBudget | None = None
        if retry:
            budget = self.budgets.get(route.name, policy)
            budget.request()
            if req.has_body:
                if req.body is None:
                    req.body = await read_body(req.receive, policy.max_body)
                if not req.body.complete or req.body.size > policy.max_body:
                    retry = False  # larger than the retry buffer: sent (the rest streamed) once
        hash_on = service.balancer.hash_on
        key = hash_key(hash_on, req.scope["headers"], req.client) if hash_on is not None else None
        statuses = retry_statuses(policy) if retry else frozenset()
        tried: list[EndpointState] = []
        attempt = 0
        while True:
            attempt += 1
            req.attempts += 1  # over the whole request: a fallback's attempts add to `to`'s
            if req.deadline is not None and expired(req.deadline, _now()):
                return await self._fail(req, DeadlineExceeded(
                    "the request's deadline passed before an upstream answered"), watch)
            # The breaker is asked right before each attempt takes its slot (`begin()`, with no
            # await in between): not while a body is buffered, nor for a retry's backoff.
            if not state.admit():  # also counted in the service's live state
                if self._metrics is not None:
                    self._metrics.circuit_open(service.name)
                return await self._fail(req, CircuitOpen(
                    f"service {service.name} is at its circuit breaker's limit of requests in "
                    "flight"), watch)
            try:
                chosen = state.pick(key, tried)
            except UpstreamError as exc:
                return await self._fail(req, exc, watch)
            may_retry = retry and attempt < policy.attempts
            outcome = await self._attempt(req, route, state, chosen, watch,
                                          statuses if may_retry else None, attempt)
            if isinstance(outcome, str | None):
                return outcome
            # A failed attempt that nothing downstream has seen: retry, or answer the failure.
            failure, wait = outcome
            error = failure if isinstance(failure, UpstreamError) else None
            if may_retry and budget is not None and may_retry_after(policy, error):
                delay = backoff(attempt, policy.backoff_base, policy.backoff_max)
                if wait is not None:
                    delay = max(delay, wait)
                limit = (req.deadline - _now()) if req.deadline is not None else \
                    (route.timeouts.response or self._response_timeout)
                # The budget is spent only by a retry that really goes out.
                if delay < limit and budget.try_spend():
                    if self._metrics is not None:
                        self._metrics.retry(route.name)
                    if not isinstance(failure, UpstreamError):
                        failure[0].close(abort=True)  # the unwanted answer's connection
                    tried.append(chosen)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    continue
            if isinstance(failure, UpstreamError):
                return await self._fail(req, failure, watch)
            # A retryable status that will not be retried after all: its answer was kept.
            conn, upload = failure
            return await self._deliver(req, route, conn, upload, watch)

    async def _attempt(self, req: RequestState, route: CompiledRoute, state: ServiceState,
                       chosen: EndpointState, watch: Watch | None, retry_on: frozenset[int] | None,
                       attempt: int) -> str | tuple[Any, float | None] | None:
        """One attempt on one endpoint.

        Returns what `call` returns when the attempt settled the request; otherwise
        `(failure, retry_after)` where failure is the `UpstreamError`, or, for a status in
        `retry_on`, `(conn, upload)` holding the unanswered response.
        """
        endpoint = chosen.endpoint
        req.endpoint = endpoint
        trace = (req.trace.attempt(endpoint.url, attempt, req.side, req.service)
                 if req.trace is not None else None)
        chosen.begin()
        t0 = _now()
        t1: float | None = None  # when the response head arrived
        latency: float | None = None
        # what the attempt says about the endpoint; "cancelled": nothing (the client left, the
        # request's own deadline or body cut it)
        result = "cancelled"
        status: int | None = None
        error: str | None = None
        try:
            try:
                conn, upload = await self._exchange(req, route, state, endpoint,
                                                    trace.headers() if trace is not None else None)
            except UpstreamError as exc:
                error = exc.code
                if isinstance(exc, UpstreamTimeout) and not isinstance(exc, DeadlineExceeded):
                    latency = _now() - t0  # a hanging endpoint counts as a slow one
                    result = "failure"
                elif not isinstance(exc, DeadlineExceeded | CircuitOpen):
                    result = "failure"
                return exc, None
            assert conn.reader is not None and conn.reader.head is not None
            head = conn.reader.head
            status = head.status
            t1 = _now()
            latency = t1 - t0
            result = "5xx" if status >= 500 else "ok"
            if retry_on is not None and status in retry_on:
                # Not answered yet: the caller decides whether to try again.
                value = next((v for n, v in head.headers if n == b"retry-after"), None)
                return (conn, upload), (retry_after(value) if value is not None else None)
            return await self._deliver(req, route, conn, upload, watch)
        finally:
            chosen.end(latency, result, t1 if t1 is not None else _now())  # type: ignore[arg-type]
            if self._metrics is not None:
                self._metrics.attempt(req.service or "", endpoint.url, result)
            if trace is not None:
                trace.end(status, error, req.fallback)

    async def _deliver(self, req: RequestState, route: CompiledRoute, conn: UpstreamConnection,
                       upload: asyncio.Task[None] | None, watch: Watch | None) -> str | None:
        """The response head is in: stream it downstream (or hand a watched failure to `from`)."""
        assert conn.reader is not None and conn.reader.head is not None
        status = conn.reader.head.status
        failed: str | None = None
        if watch is not None and status in watch.statuses:
            failed = f"status-{status}"
            if watch.replay:
                # Its answer is not wanted: `from` answers instead.
                conn.close(abort=True)
                if upload is not None and not upload.done():
                    upload.cancel()
                return failed
        downstream: Downstream | None = (req.scope.get("extensions") or {}).get("peel.downstream")
        # Once the answer is read the connection goes back to the pool, maybe while the client is
        # still written to: a failure after that is not the connection's to pay for.
        exchange = conn.exchanges
        try:
            await self._respond(req, route, conn, upload, downstream)
        except UpstreamError as exc:
            req.error = exc.code
            if conn.holds(exchange):
                conn.close(abort=True)
            log.warning("response from %s cut short: %s", conn.endpoint.url, exc)
            abort_downstream(req.scope)
        except BaseException:
            if conn.holds(exchange):
                conn.close(abort=True)
            raise
        finally:
            if downstream is not None:
                downstream.on_lost = None
            if upload is not None and not upload.done():
                upload.cancel()
        return failed

    def _head(self, req: RequestState, route: CompiledRoute, endpoint: Endpoint,
              trace_headers: list[tuple[bytes, bytes]] | None) -> bytes:
        scope = req.scope
        trace = req.trace
        headers = self._rules.upstream_request(
            trace.strip(scope["headers"]) if trace is not None else scope["headers"],
            client=req.client, scheme=scope["scheme"], host=req.host_header, request_id=req.request_id)
        upstream_host = route.upstream_host
        if upstream_host is not None:
            headers.append((b"host", upstream_host.encode("ascii")))
        elif req.host_header is not None:
            headers.append((b"host", req.host_header))
        else:
            headers.append((b"host", endpoint.url.split("://", 1)[1].encode("ascii")))
        if req.chunked:
            # Content-Length from the client is refused with chunked by the listener's parser. A
            # body held whole goes with a Content-Length (as nginx does): legacy upstreams that
            # cannot read chunked requests get it too.
            held = req.body
            if held is not None and held.complete:
                headers.append((b"content-length", b"%d" % held.size))
            else:
                headers.append((b"transfer-encoding", b"chunked"))
        if req.deadline is not None and self._deadlines is not None:
            remaining = req.deadline - _now()
            if remaining < MIN_REMAINING:
                # Expired since the attempt began: never forward a budget of 0 ms.
                raise DeadlineExceeded("the request's deadline passed before an upstream answered")
            headers += self._deadlines.outgoing(remaining)
        if trace_headers:
            headers += trace_headers
        if req.baggage:
            # Peel's baggage member: the side chosen for this request (facade.cohort), or none.
            headers = with_side(headers, req.cohort)
        headers = route.request_headers.apply(headers)
        target = route.rewrite_path(req.path).encode("ascii", "backslashreplace")
        if req.query:
            target += b"?" + req.query
        return request_head(req.method, target, headers)

    def _limit(self, req: RequestState, configured: float) -> tuple[float, bool]:
        """A wait's timeout: `configured`, or less when the deadline comes first (then True)."""
        if req.deadline is None:
            return configured, False
        remaining = req.deadline - _now()
        return (remaining, True) if remaining < configured else (configured, False)

    async def _connect(self, req: RequestState, route: CompiledRoute, state: ServiceState,
                       endpoint: Endpoint) -> UpstreamConnection:
        """A new connection, within the service's `max_pending` and the request's deadline."""
        if not state.begin_pending():
            raise CircuitOpen(f"service {state.name} has {state.pending} connections opening, its "
                              "circuit breaker's max_pending")
        timeout, by_deadline = self._limit(req, route.timeouts.connect or self._connect_timeout)
        try:
            return await self._pool.connect(endpoint, timeout)
        except UpstreamTimeout as exc:
            if by_deadline:
                raise DeadlineExceeded(f"connecting to {endpoint.url}: the request's deadline "
                                       "passed") from exc
            raise
        finally:
            state.end_pending()

    async def _exchange(self, req: RequestState, route: CompiledRoute, state: ServiceState,
                        endpoint: Endpoint, trace_headers: list[tuple[bytes, bytes]] | None,
                        ) -> tuple[UpstreamConnection, asyncio.Task[None] | None]:
        """Send the request on a connection and wait for the response head."""
        timeouts = route.timeouts
        pool = self._pool
        head = self._head(req, route, endpoint, trace_headers)
        downstream: Downstream | None = (req.scope.get("extensions") or {}).get("peel.downstream")
        conn: UpstreamConnection | None = pool.take_idle(endpoint)
        upload: asyncio.Task[None] | None = None
        head_request = req.method == "HEAD"
        cut_by_deadline = False
        try:
            if conn is None:
                conn = await self._connect(req, route, state, endpoint)
            if downstream is not None:
                if downstream.lost:
                    conn.close()
                    raise ExchangeAborted("the downstream closed the connection")
                downstream.on_lost = conn.abort_exchange
            payload: bytes | None = head
            if req.has_body:
                held = req.body
                receive = held.reader(req.receive) if held is not None else req.receive
                chunked = req.chunked and not (held is not None and held.complete)
                message = await receive()
                if message["type"] != "http.request":
                    raise ExchangeAborted("the downstream closed the connection")
                body: bytes = message.get("body", b"")
                req.bytes_in = len(body)
                if route.max_body is not None and req.bytes_in > route.max_body:
                    raise BodyTooLarge(route.max_body)
                if chunked and body:
                    body = chunk(body)
                if message.get("more_body", False):
                    payload = None  # streamed: not replayable on this connection
                    conn.begin(head_request=head_request, drop=self._drop)
                    conn.write(head + body if body else head)
                    upload = asyncio.get_running_loop().create_task(
                        self._upload(conn, req, receive, chunked, route.max_body,
                                     timeouts.idle or self._idle_timeout))
                else:
                    payload = head + body + (LAST_CHUNK if chunked else b"")
            t_sent = _perf()
            if payload is not None:
                conn.begin(head_request=head_request, drop=self._drop)
                conn.write_whole(payload)
                req.sent = True
            reader = conn.reader
            assert reader is not None
            replayed = False
            response_timeout = timeouts.response or self._response_timeout
            while reader.head is None:
                error = conn.error
                if error is not None:
                    if payload is not None and not replayed and conn.stale() \
                            and req.method in IDEMPOTENT_METHODS:
                        # The keep-alive race: the upstream closed the idle connection as the
                        # request went out, most likely unread; replay once on a new one. Only an
                        # idempotent request: the upstream may have read it (RFC 9112 9.3.1).
                        replayed = True
                        conn = await self._connect(req, route, state, endpoint)
                        if downstream is not None:
                            downstream.on_lost = conn.abort_exchange
                        conn.begin(head_request=head_request, drop=self._drop)
                        conn.write_whole(payload)
                        reader = conn.reader
                        assert reader is not None
                        continue
                    if isinstance(error, ProtocolError) and not conn.got_bytes \
                            and not isinstance(error, UpstreamReset):
                        raise UpstreamReset(f"{endpoint.url} closed the connection before "
                                            f"answering ({error})")
                    raise error
                if upload is not None and not upload.done():
                    await conn.wait(None, "response head")
                elif req.deadline is None:
                    await conn.wait(response_timeout, "response head")
                else:
                    timeout, cut_by_deadline = self._limit(req, response_timeout)
                    await conn.wait(max(timeout, 0.0), "response head")
            req.upstream = _perf() - t_sent
            return conn, upload
        except UpstreamTimeout as exc:
            self._close(conn, upload, downstream)
            if cut_by_deadline:
                raise DeadlineExceeded(f"{endpoint.url}: the request's deadline passed while "
                                       "waiting for the response") from exc
            raise
        except BaseException:
            self._close(conn, upload, downstream)
            raise

    @staticmethod
    def _close(conn: UpstreamConnection | None, upload: asyncio.Task[None] | None,
               downstream: Downstream | None) -> None:
        if conn is not None:
            conn.close(abort=True)
        if upload is not None and not upload.done():
            upload.cancel()
        if downstream is not None:
            downstream.on_lost = None

    async def _respond(self, req: RequestState, route: CompiledRoute, conn: UpstreamConnection,
                       upload: asyncio.Task[None] | None, downstream: Downstream | None) -> None:
        reader = conn.reader
        assert reader is not None and reader.head is not None
        head = reader.head
        status = head.status
        send = req.send
        # The reader already left out hop-by-hop headers (http1.parse_head).
        headers = route.response_headers.apply(head.headers)
        headers.append((self._rid_name, req.request_id))
        if req.response_headers:
            headers += req.response_headers
        req.status = status
        start = {"type": "http.response.start", "status": status, "headers": headers}
        if reader.done:
            # The whole response came with the head (the common small answer): two sends.
            # (a large body as a view of the read it came in: written from there, not copied)
            whole = conn.take_view() if conn.body else b""
            self._finish(conn, upload, req, downstream)
            req.started = True
            req.bytes_out = len(whole)
            if req.respond is not None and req.respond(status, headers, whole):
                return  # one call, one write (gateway.edge.cycle.ResponseCycle.respond)
            await send(start)
            data = whole if isinstance(whole, bytes) else bytes(whole)
            await send({"type": "http.response.body", "body": data, "more_body": False})
            return
        req.started = True
        await send(start)
        idle_timeout = route.timeouts.idle or self._idle_timeout
        buffering = route.buffering
        tail: list[bytes] = []  # the rest of an answer that completed while the client was written to
        if buffering is not None:
            # Read ahead of a slow client, up to the bound: an answer that fits is read whole.
            conn.high_water = buffering.response

        def complete() -> None:
            # The answer is in while the client is still being written to: keep what is left,
            # give the connection back now (the upstream is free), send the rest at the client's pace.
            tail.append(conn.take())
            self._finish(conn, upload, req, downstream)

        while True:
            if conn.body:
                data = conn.take()
                done = reader.done
                if done:
                    self._finish(conn, upload, req, downstream)
                req.bytes_out += len(data)
                if done or buffering is None:
                    await send({"type": "http.response.body", "body": data, "more_body": not done})
                    if done:
                        return
                    continue
                conn.on_done = complete
                try:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                finally:
                    if not tail:
                        conn.on_done = None
                if tail:
                    req.bytes_out += len(tail[0])
                    await send({"type": "http.response.body", "body": tail[0], "more_body": False})
                    return
            elif reader.done:
                self._finish(conn, upload, req, downstream)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            elif (error := conn.error) is not None:
                raise error
            elif req.deadline is None:
                await conn.wait(idle_timeout, "response data")
            else:
                timeout, by_deadline = self._limit(req, idle_timeout)
                await conn.wait(max(timeout, 0.0), "response data")
                if by_deadline and conn.error is not None and isinstance(conn.error, UpstreamTimeout):
                    raise DeadlineExceeded("the request's deadline passed while the response streamed")

    def _finish(self, conn: UpstreamConnection, upload: asyncio.Task[None] | None,
                req: RequestState, downstream: Downstream | None) -> None:
        """The response is read: the connection goes back when the request was sent in full."""
        if downstream is not None:
            # From here on the connection may serve another request: a late disconnect of this
            # downstream must not abort that one.
            downstream.on_lost = None
        if upload is not None and not upload.done():
            conn.close()
        elif req.sent:
            self._pool.release(conn)
        else:
            conn.close()

    async def _upload(self, conn: UpstreamConnection, req: RequestState, receive: Receive,
                      chunked: bool, limit: int | None, idle_timeout: float) -> None:
        """Stream the rest of the request body upstream, as fast as the upstream takes it.

        A body above `limit` fails the exchange with `BodyTooLarge` (the proxy answers 413).
        """
        try:
            while not conn.closed:
                message = await receive()
                if message["type"] != "http.request":
                    conn.abort_exchange()
                    return
                body = message.get("body", b"")
                if body:
                    req.bytes_in += len(body)
                    if limit is not None and req.bytes_in > limit:
                        conn.fail(BodyTooLarge(limit))
                        return
                    conn.write(chunk(body) if chunked else body)
                    await conn.drain(idle_timeout)
                if not message.get("more_body", False):
                    if chunked:
                        conn.write(LAST_CHUNK)
                    req.sent = not conn.closed
                    return
        finally:
            conn.wake()


def _retry_after_for(exc: UpstreamError) -> list[tuple[bytes, bytes]] | None:
    return [_RETRY_AFTER_ONE] if isinstance(exc, CircuitOpen) else None
