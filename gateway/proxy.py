"""The data plane: a raw ASGI app that matches, rewrites, forwards and streams back.

Per request: read the route table once; normalise the path (route and forward the same form);
refuse absolute-form targets for hosts no route names (Peel is not an open proxy); strip beta
headers and cookies that untrusted downstreams sent; match; for a migrated route ask its compiled
migration which service answers (and, when `to` fails, answer from `from` per its fallback); build
the upstream request (hop-by-hop headers stripped, forwarded headers, request id, route edits);
forward it on a pooled upstream connection; stream the response back with backpressure both ways.

Failures before the response started become `application/problem+json` answers (the `code` comes
from the error class, the request id is included); after it started the downstream connection is
reset, so a cut body can never pass for a complete one. Starlette is deliberately not used here:
its Request/Response objects alone cost more than the whole throughput budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httptools

from facade.beta import BetaTrust
from facade.compiled import BetaFilter, BetaUsers, CompiledMigration
from facade.counts import FALLBACK, FROM, RETIRED_MISSES, TO, TrafficCounts
from facade.fallback import Watch, buffer_body, prefixed_body, replay_body
from gateway import problems
from gateway.accesslog import AccessLog
from gateway.errors import UpstreamError
from gateway.headers import ForwardingRules, new_request_id, valid_request_id
from gateway.holder import TableHolder
from gateway.http1 import LAST_CHUNK, chunk, request_head
from gateway.paths import DEFAULT_RULES, normalise, path_rules
from gateway.pool import ExchangeAborted, UpstreamConnection, UpstreamPool
from gateway.protocol import DOWNSTREAM, TARGET, Downstream
from gateway.settings import FacadeSettings, ProxySettings, Settings
from routes.model import Endpoint
from routes.table import CompiledService, RouteTable

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("peel.proxy")
_perf = time.perf_counter
_PROBLEM = problems.CONTENT_TYPE.encode()
_NO_USERS: BetaUsers = {}


class BodyTooLarge(Exception):
    """A request body passed its route's `max_body` while it streamed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this route takes request bodies of at most {limit} bytes")


class _Request:
    """What the access log needs to know about one request, filled in as it goes."""

    __slots__ = ("bytes_in", "bytes_out", "endpoint", "error", "fallback", "request_id", "route",
                 "sent", "service", "side", "started", "status", "upstream")

    def __init__(self, request_id: bytes) -> None:
        self.request_id = request_id
        self.route: str | None = None
        self.service: str | None = None
        self.side: str | None = None  # "from" or "to" on a migrated route
        self.fallback: str | None = None  # the `to` failure that `from` answered for
        self.endpoint: Endpoint | None = None
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.upstream: float | None = None
        self.error: str | None = None
        self.started = False  # the response head went downstream
        self.sent = False  # the request went upstream completely


class ProxyApp:
    """The data-plane ASGI 3 app of the public (and outbound) listeners.

    `holder` gives the current route table; `pool` the upstream connections (closed on lifespan
    shutdown or `aclose()`); `settings` is `Settings` or just its `proxy` part (the facade's beta
    trust then comes from `facade`, default: nobody trusted); `access_log` may be None for none;
    `counts` receives the per-route traffic counts of migrations (None: not counted).
    """

    def __init__(self, holder: TableHolder, pool: UpstreamPool, settings: ProxySettings | Settings,
                 access_log: AccessLog | None = None, *, facade: FacadeSettings | None = None,
                 counts: TrafficCounts | None = None) -> None:
        # The path rules come with the whole settings; given only `proxy`, the defaults apply.
        self._paths = DEFAULT_RULES
        if isinstance(settings, Settings):
            facade = facade or settings.facade
            self._paths = path_rules(settings.paths)
            settings = settings.proxy
        facade = facade or FacadeSettings()
        self._trust = BetaTrust(facade.trusted_networks, facade.beta_secret)
        # The beta filter of the last table seen, rebuilt when the table is swapped.
        self._beta: tuple[object, BetaFilter] | None = None
        self.counts = counts if counts is not None else TrafficCounts()
        self._holder = holder
        self._pool = pool
        self._rules = ForwardingRules(settings.trusted_proxies, settings.request_id_header)
        self._rid_name = self._rules.request_id_name
        # Peel's request id replaces the upstream's own in the response.
        self._drop = frozenset({self._rid_name})
        self._response_timeout = settings.response_timeout
        self._idle_timeout = settings.idle_timeout
        self._log = access_log if access_log is not None and access_log.enabled else None

    async def aclose(self) -> None:
        await self._pool.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        t0 = _perf()
        rid_name = self._rid_name
        request_id: bytes | None = None
        host: bytes | None = None
        hosts = 0
        length: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
                hosts += 1
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
            elif name == rid_name and request_id is None and valid_request_id(value):
                request_id = value
        req = _Request(request_id or new_request_id())
        try:
            if hosts > 1:
                await self._problem(send, req, 400, "bad-request", "more than one Host header")
            else:
                await self._handle(scope, receive, send, req, host, length, chunked)
        except ExchangeAborted:
            req.error = req.error or "downstream-disconnected"
        except Exception as exc:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            req.error = "internal-error"
            if not req.started:
                await self._problem(send, req, 500, "internal-error",
                                    f"the gateway failed on this request ({type(exc).__name__})")
            else:
                self._abort_downstream(scope)
        finally:
            if self._log is not None:
                client = scope.get("client")
                self._log.log(req.request_id, client[0] if client else None, scope["method"],
                              scope.get("path", ""), req.route, req.service, req.endpoint,
                              req.status, req.bytes_in, req.bytes_out, _perf() - t0, req.upstream,
                              req.error, req.side, req.fallback)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, req: _Request,
                      host_header: bytes | None, length: bytes | None, chunked: bool) -> None:
        table = self._holder.table
        if table is None:
            return await self._problem(send, req, 503, "no-route-table", "no route table loaded yet")
        try:
            path = normalise(scope.get("raw_path") or scope["path"].encode("utf-8"), self._paths)
        except ValueError as exc:
            return await self._problem(send, req, 400, "bad-path", f"the request path is refused: {exc}")
        scope["path"] = path
        extensions = scope.get("extensions") or {}
        target: bytes | None = extensions.get(TARGET)
        host = _hostname(host_header) if host_header is not None else ""
        if target is not None and target[:1] != b"/":
            # Absolute form (or `*`, or authority form): only for hosts that a route names.
            target_host = _absolute_host(target)
            if target_host is None or not table.routes_host(target_host):
                return await self._problem(send, req, 400, "not-an-open-proxy",
                                           "not an open proxy: the request target names a host "
                                           "that no route serves")
            host = target_host
        method: str = scope["method"]
        query: bytes = scope["query_string"]
        client = scope.get("client")
        client_addr: str | None = client[0] if client else None
        beta_users = _NO_USERS
        if table.beta_headers or table.beta_cookies:
            # Beta values steer routing: an untrusted one is gone before matching and forwarding.
            cleaned, beta_users = self._beta_filter(table).apply(scope["headers"], client_addr)
            if cleaned is not None:
                scope["headers"] = cleaned
        route = table.match(method, host, path, query, scope["headers"])
        if route is None:
            return await self._problem(send, req, 404, "no-route", "no route matches this request")
        req.route = route.name
        limit = route.max_body
        if limit is not None and length is not None and length.isdigit() and int(length) > limit:
            # Before anything is read, so an `Expect: 100-continue` client gets no 100 Continue.
            return await self._problem(send, req, 413, "body-too-large",
                                       f"this route takes request bodies of at most {limit} bytes",
                                       close=True)
        migration: CompiledMigration | None = route.migration
        if migration is None:
            await self._send_to(scope, receive, send, req, route, route.service, host_header, path,
                                query, length, chunked, None)
            return
        decision = migration.decide(scope["headers"], client_addr, method, beta_users)
        counts = self.counts
        req.side = decision.side
        if decision.side == "from":
            counts.add(route.name, table.version, FROM)
            await self._send_to(scope, receive, send, req, route, migration.from_service, host_header,
                                path, query, length, chunked, None)
            return
        counts.add(route.name, table.version, TO)
        replay = decision.fallback and migration.fallback.allows_method(method)
        has_body = length is not None or chunked
        if replay and has_body:
            body, complete = await buffer_body(receive, migration.fallback.max_body)
            # Larger than the buffer: sent to `to` only (the rest streamed), without a fallback.
            replay = complete and len(body) <= migration.fallback.max_body
            receive = replay_body(body) if complete else prefixed_body(body, receive)
        watch = Watch(migration, replay) if replay or decision.count_misses else None
        failed = await self._send_to(scope, receive, send, req, route, migration.to_service,
                                     host_header, path, query, length, chunked, watch)
        if failed is None:
            return
        if not replay:
            counts.add(route.name, table.version, RETIRED_MISSES)
            return
        counts.add(route.name, table.version, FALLBACK)
        req.fallback = failed
        req.side = "from"
        req.error = None
        req.sent = False
        req.upstream = None
        await self._send_to(scope, receive, send, req, route, migration.from_service, host_header,
                            path, query, length, chunked, None)

    def _beta_filter(self, table: RouteTable) -> BetaFilter:
        cached = self._beta
        if cached is None or cached[0] is not table:
            cached = self._beta = (table, BetaFilter(table.beta_headers, table.beta_cookies, self._trust))
        return cached[1]

    async def _send_to(self, scope: Scope, receive: Receive, send: Send, req: _Request, route: Any,
                       service: CompiledService, host_header: bytes | None, path: str,
                       query: bytes, length: bytes | None, chunked: bool,
                       watch: Watch | None) -> str | None:
        """Forward to one endpoint of `service`; the error code when `watch` saw `to` fail."""
        req.service = service.name
        try:
            endpoint = service.pick()
        except UpstreamError as exc:
            if watch is not None and watch.on_error and watch.replay:
                return exc.code
            req.error = exc.code
            await self._problem(send, req, exc.status, exc.code, str(exc) or exc.code)
            return exc.code if watch is not None and watch.on_error else None
        req.endpoint = endpoint

        client = scope.get("client")
        headers = self._rules.upstream_request(
            scope["headers"], client=client[0] if client else None, scheme=scope["scheme"],
            host=host_header, request_id=req.request_id)
        upstream_host = route.upstream_host
        if upstream_host is not None:
            headers.append((b"host", upstream_host.encode("ascii")))
        elif host_header is not None:
            headers.append((b"host", host_header))
        else:
            headers.append((b"host", endpoint.url.split("://", 1)[1].encode("ascii")))
        has_body = length is not None or chunked
        if chunked:
            # Content-Length from the client is refused with chunked by the listener's parser.
            headers.append((b"transfer-encoding", b"chunked"))
        headers = route.request_headers.apply(headers)
        new_path = route.rewrite_path(path)
        target_out = new_path.encode("ascii", "backslashreplace")
        if query:
            target_out += b"?" + query
        head = request_head(scope["method"], target_out, headers)

        downstream: Downstream | None = (scope.get("extensions") or {}).get(DOWNSTREAM)
        return await self._forward(scope, receive, send, req, route, endpoint, head, has_body, chunked,
                                   downstream, watch)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, req: _Request, route: Any,
                       endpoint: Any, head: bytes, has_body: bool, chunked: bool,
                       downstream: Downstream | None, watch: Watch | None = None) -> str | None:
        """Forward one request and stream the answer back.

        With `watch`, a failure of this (the `to`) side is returned as its code: a connect error or
        timeout (when `watch.on_error`) or one of `watch.statuses`. When `watch.replay` nothing
        reaches the downstream then, so the caller can ask `from`.
        """
        pool = self._pool
        method = scope["method"]
        conn: UpstreamConnection | None = None
        upload: asyncio.Task[None] | None = None
        try:
            try:
                conn = pool.take_idle(endpoint) or await pool.connect(endpoint)
            except UpstreamError as exc:
                if watch is not None and watch.on_error and watch.replay:
                    return exc.code
                req.error = exc.code
                await self._problem(send, req, exc.status, exc.code, str(exc))
                return exc.code if watch is not None and watch.on_error else None
            if downstream is not None:
                if downstream.lost:
                    conn.close()
                    raise ExchangeAborted("the downstream closed the connection")
                downstream.on_lost = conn.abort_exchange
            payload: bytes | None = head
            if has_body:
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
                    payload = None  # streamed: not replayable
                    conn.begin(head_request=method == "HEAD", drop=self._drop)
                    conn.write(head + body if body else head)
                    upload = asyncio.get_running_loop().create_task(
                        self._upload(conn, receive, chunked, req, route.max_body))
                else:
                    payload = head + body + (LAST_CHUNK if chunked else b"")
            t_sent = _perf()
            if payload is not None:
                conn.begin(head_request=method == "HEAD", drop=self._drop)
                conn.write(payload)
                req.sent = True
            reader = conn.reader
            assert reader is not None
            retried = False
            while reader.head is None:
                error = conn.error
                if error is not None:
                    if payload is not None and not retried and conn.stale():
                        # The keep-alive race: the upstream closed the idle connection as the
                        # request went out. Nothing was processed; replay once on a new one.
                        retried = True
                        conn = await pool.connect(endpoint)
                        if downstream is not None:
                            downstream.on_lost = conn.abort_exchange
                        conn.begin(head_request=method == "HEAD", drop=self._drop)
                        conn.write(payload)
                        reader = conn.reader
                        assert reader is not None
                        continue
                    raise error
                if upload is not None and not upload.done():
                    await conn.wait(None, "response head")
                else:
                    await conn.wait(self._response_timeout, "response head")
            req.upstream = _perf() - t_sent
            failed: str | None = None
            if watch is not None and reader.head.status in watch.statuses:
                failed = f"status-{reader.head.status}"
                if watch.replay:
                    # Its answer is not wanted: `from` answers instead.
                    conn.close(abort=True)
                    return failed
            await self._respond(send, req, route, conn, upload, downstream)
            return failed
        except BodyTooLarge as exc:
            # A chunked body passed the route's cap: the upstream exchange is cut either way.
            req.error = "body-too-large"
            if conn is not None:
                conn.close(abort=True)
            if not req.started:
                await self._problem(send, req, 413, "body-too-large", str(exc), close=True)
            else:
                self._abort_downstream(scope)
            return None
        except UpstreamError as exc:
            req.error = exc.code
            if conn is not None:
                conn.close(abort=True)
            if not req.started:
                if watch is not None and watch.on_error:
                    if watch.replay:
                        req.error = None
                        return exc.code
                    await self._problem(send, req, exc.status, exc.code, str(exc))
                    return exc.code
                await self._problem(send, req, exc.status, exc.code, str(exc))
            else:
                log.warning("response from %s cut short: %s", endpoint.url, exc)
                self._abort_downstream(scope)
            return None
        except BaseException:
            if conn is not None:
                conn.close(abort=True)
            raise
        finally:
            if downstream is not None:
                downstream.on_lost = None
            if upload is not None and not upload.done():
                upload.cancel()

    async def _respond(self, send: Send, req: _Request, route: Any, conn: UpstreamConnection,
                       upload: asyncio.Task[None] | None, downstream: Downstream | None) -> None:
        reader = conn.reader
        assert reader is not None and reader.head is not None
        head = reader.head
        status = head.status
        # The reader already left out hop-by-hop headers (http1.parse_head).
        headers = route.response_headers.apply(head.headers)
        headers.append((self._rid_name, req.request_id))
        req.status = status
        start = {"type": "http.response.start", "status": status, "headers": headers}
        if reader.done:
            # The whole response came with the head (the common small answer): two sends.
            data = conn.take() if conn.body else b""
            self._finish(conn, upload, req, downstream)
            req.started = True
            await send(start)
            req.bytes_out = len(data)
            await send({"type": "http.response.body", "body": data, "more_body": False})
            return
        req.started = True
        await send(start)
        idle_timeout = self._idle_timeout
        while True:
            if conn.body:
                data = conn.take()
                done = reader.done
                if done:
                    self._finish(conn, upload, req, downstream)
                req.bytes_out += len(data)
                await send({"type": "http.response.body", "body": data, "more_body": not done})
                if done:
                    return
            elif reader.done:
                self._finish(conn, upload, req, downstream)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            elif (error := conn.error) is not None:
                raise error
            else:
                await conn.wait(idle_timeout, "response data")

    def _finish(self, conn: UpstreamConnection, upload: asyncio.Task[None] | None,
                req: _Request, downstream: Downstream | None) -> None:
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

    async def _upload(self, conn: UpstreamConnection, receive: Receive, chunked: bool,
                      req: _Request, limit: int | None) -> None:
        """Stream the rest of the request body upstream, as fast as the upstream takes it.

        A body above `limit` fails the exchange with `BodyTooLarge` (the proxy answers 413).
        """
        idle_timeout = self._idle_timeout
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

    async def _problem(self, send: Send, req: _Request, status: int, code: str, detail: str,
                       *, close: bool = False) -> None:
        """Answer a problem+json; `close`: and end the connection (its request body was not read)."""
        req.status = status
        req.error = req.error or code
        body = problems.encode(problems.problem(status, code, detail,
                                                request_id=req.request_id.decode("ascii")))
        req.started = True
        req.bytes_out = len(body)
        headers = [(b"content-type", _PROBLEM), (b"content-length", b"%d" % len(body)),
                   (self._rid_name, req.request_id)]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _abort_downstream(self, scope: Scope) -> None:
        downstream = (scope.get("extensions") or {}).get(DOWNSTREAM)
        if isinstance(downstream, Downstream):
            downstream.abort()
        else:
            # Without Peel's protocol, raising makes the server close the connection.
            raise ExchangeAborted("response cut short") from None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _hostname(host: bytes) -> str:
    """The Host header's host, lower-case, without the port."""
    text = host.decode("latin-1").lower()
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    return text.split(":", 1)[0] if ":" in text else text


def _absolute_host(target: bytes) -> str | None:
    if not (target[:7].lower() == b"http://" or target[:8].lower() == b"https://"):
        return None
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return None
    return url.host.decode("latin-1").lower() if url.host else None
