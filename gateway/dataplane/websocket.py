"""WebSocket on the data plane: only on routes with `websocket: true`, relayed frame by frame.

How an upgrade gets here. `gateway.http.framing.check_head` strips every `Upgrade` offer (and
`HTTP2-Settings`) from a request head. The protocol layer (`gateway.edge.protocol`) keeps the offer only
when `gateway.dataplane.websocket_rules.websocket_offer` finds a complete WebSocket opening handshake (GET,
HTTP/1.1, `Connection: upgrade`, `Upgrade: websocket`, one `Sec-WebSocket-Key`, version 13, no
body) and the listener runs a WebSocket implementation; uvicorn's websockets-sansio protocol then takes the
connection and the app gets a `websocket` scope. Every other upgrade (h2c, a malformed handshake,
any other token) goes on as plain HTTP without the offer, as before.

`WebSocketProxy.handle` serves that scope: match the route (path normalised, absolute-form rule,
untrusted beta values stripped, as for HTTP), refuse unless the route has `websocket: true`
(403 `websocket-not-allowed`), open the upstream handshake on an endpoint of the route's service
(path and host rewrite, request header edits, forwarded headers and request id as for HTTP; the
client's subprotocols offered), then accept downstream with the subprotocol the upstream chose and
relay messages both ways until one side closes. A refusal by the upstream (non-101) reaches the
client with its status, headers and body; an unreachable upstream is a 502/504 problem+json.

On a migrated route the migration decides the side as for a GET, and the WebSocket counts once in
the route's traffic counts when it opens (`to` or `from`; a failed `to` handshake on a retired
route also as a retired miss). There is no fallback: a handshake is not replayed on `from`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from websockets.utils import generate_key

from facade.counts import FROM, RETIRED_MISSES, TO, TrafficCounts
from gateway.core import problems
from gateway.core.asgi import PEER, Receive, Scope, Send
from gateway.core.errors import ProtocolError, UpstreamError
from gateway.core.settings import ProxySettings
from gateway.dataplane.resolve import Headers, Incoming, Refusal, Resolver
from gateway.dataplane.websocket_rules import (
    MAX_MESSAGE,
    PING_INTERVAL,
    PING_TIMEOUT,
    downstream_close,
    upstream_close,
)
from gateway.http.headers import HOP_BY_HOP, ForwardingRules, strip_hop_by_hop
from gateway.http.hosts import hostname
from gateway.http.http1 import request_head
from gateway.telemetry.accesslog import AccessLog
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.tracing import AttemptTrace, RequestTrace, Tracing
from gateway.upstream.dial import Dial, Dialer
from gateway.upstream.endpoints import Upstreams
from gateway.upstream.websocket import UpstreamSocket
from routes.holder import TableHolder
from routes.model import Endpoint
from routes.table import CompiledService

log = logging.getLogger("peel.websocket")

_DENIAL = "websocket.http.response"
# Handshake headers of one hop: the upstream leg makes its own (key, version, extensions).
_HANDSHAKE = frozenset({b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
                        b"sec-websocket-accept", b"sec-websocket-protocol"})
# Left out of the upstream's handshake answer (uvicorn writes its own framing and Date).
_NOT_FORWARDED = tuple(_HANDSHAKE | {b"content-length", b"date"})
_perf = time.perf_counter
_now = time.monotonic


class _Entry:
    """What the access log says about one WebSocket, filled in as it goes."""

    __slots__ = ("detail", "endpoint", "error", "measured", "request_id", "route", "service", "side",
                 "started", "status", "upstream")

    def __init__(self, request_id: bytes) -> None:
        self.request_id = request_id
        self.route: str | None = None
        self.service: str | None = None
        self.side: str | None = None
        self.endpoint: Endpoint | None = None
        self.status = 0
        self.error: str | None = None
        self.detail: str | None = None  # what went wrong, for the access log (the client gets less)
        self.upstream: float | None = None  # seconds until the upstream's handshake answer
        self.started = False  # the client got an answer (101 or a refusal)
        self.measured = False  # the handshake's request metric is recorded


class WebSocketProxy:
    """Serves the data plane's `websocket` scopes (`await proxy.handle(scope, receive, send)`).

    `resolver` is the HTTP data plane's resolve step, so a handshake meets the same path rules,
    beta trust, route match, rate limit, deadline and facade decision as any request; `rules` the
    same header trust; `settings` gives the connect and response (handshake) timeouts, capped by
    the request's deadline; `dialer` opens the upstream connection (the pool's, so TLS is chosen
    as for requests); `tracing` and `metrics` (None: off) record the handshake as a request.
    """

    def __init__(self, holder: TableHolder, resolver: Resolver, *, rules: ForwardingRules,
                 settings: ProxySettings | None = None, access_log: AccessLog | None = None,
                 dialer: Dial | None = None,
                 max_message: int = MAX_MESSAGE, ping_interval: float | None = PING_INTERVAL,
                 ping_timeout: float | None = PING_TIMEOUT, upstreams: Upstreams,
                 counts: TrafficCounts | None = None, tracing: Tracing | None = None,
                 metrics: Metrics | None = None) -> None:
        settings = settings or ProxySettings()
        # the data plane's traffic counts of migrated routes: a WebSocket counts once, as it opens
        self._counts = counts
        self._holder = holder
        # the data plane's endpoint state: the balancer picks (a WebSocket is not counted in flight
        # and feeds no latency: it lives for minutes, its duration says nothing about the endpoint)
        self._upstreams = upstreams
        self._rules = rules
        self._resolver = resolver
        self._tracing = tracing
        self._metrics = metrics
        self._connect_timeout = settings.connect_timeout
        self._response_timeout = settings.response_timeout
        self._log = access_log if access_log is not None and access_log.enabled else None
        self._dialer: Dial = dialer if dialer is not None else Dialer()
        self._max_message = max_message
        self._ping = (ping_interval, ping_timeout)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one WebSocket from its `websocket.connect` to the end of both sides."""
        t0 = _perf()
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        entry = _Entry(self._rules.request_id(scope["headers"]))
        client = scope.get("client")
        client_addr: str | None = client[0] if client else None
        trace: RequestTrace | None = None
        if self._tracing is not None:
            host_header = next((v for n, v in scope["headers"] if n == b"host"), None)
            trace = self._tracing.start(scope["headers"], client_addr, "GET", scope.get("path", ""),
                                        hostname(host_header) if host_header is not None else "")
        link: UpstreamSocket | None = None
        try:
            link = await self._open(scope, send, entry, client_addr, trace)
            self._measure(entry, t0)
            if link is not None:
                await self._relay(receive, send, link)
        except Exception as exc:
            log.exception("unexpected error on WebSocket %s", scope.get("path"))
            entry.error = "internal-error"
            if not entry.started:
                await self._deny(scope, send, entry, 500, "internal-error", f"{type(exc).__name__}: {exc}")
            self._measure(entry, t0)
        finally:
            if trace is not None:
                trace.end(entry.status, entry.error)
            if self._log is not None:
                sent = link.sent_bytes if link is not None else 0
                received = link.received_bytes if link is not None else 0
                self._log.log(entry.request_id, client_addr, "GET",
                              scope.get("path", ""), entry.route, entry.service, entry.endpoint,
                              entry.status, sent, received, _perf() - t0, entry.upstream, entry.error,
                              entry.side, attempts=1 if entry.endpoint is not None else 0,
                              trace_id=trace.trace_id if trace is not None else None,
                              span_id=trace.span_id if trace is not None else None,
                              detail=entry.detail)

    def _measure(self, entry: _Entry, t0: float) -> None:
        """The handshake's request metric, once, when its answer is known (101 or a refusal): a
        WebSocket counts as one request whose duration is the handshake's, not its lifetime."""
        if self._metrics is not None and not entry.measured and entry.started:
            entry.measured = True
            self._metrics.request(entry.route, entry.service, entry.side, entry.status, _perf() - t0)

    async def _open(self, scope: Scope, send: Send, entry: _Entry, client_addr: str | None,
                    trace: RequestTrace | None) -> UpstreamSocket | None:
        """Resolve and open the upstream leg; None when the client was answered with a refusal."""
        table = self._holder.table
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        incoming = Incoming("GET", raw_path, scope.get("query_string", b""), scope["headers"], client_addr,
                            target=raw_path, peer=(scope.get("extensions") or {}).get(PEER))
        now = _now()
        resolved = self._resolver.resolve(table, incoming, now)
        route = resolved.route
        if route is not None:
            entry.route = route.name
            if trace is not None:
                trace.route(route.name, route.service.name,
                            route.migration.spec.stage if route.migration is not None else None)
        if isinstance(resolved, Refusal):
            if route is not None and resolved.code == "rate-limited" and self._metrics is not None:
                self._metrics.rate_limited(route.name)
            return await self._deny(scope, send, entry, resolved.status, resolved.code, resolved.detail,
                                    resolved.headers)
        route = resolved.route
        if not route.websocket:
            return await self._deny(scope, send, entry, 403, "websocket-not-allowed",
                                    "this route does not allow WebSocket (set `websocket: true` on it)")
        assert table is not None
        service: CompiledService = resolved.service
        decision = resolved.decision
        if decision is not None:
            entry.side = decision.side
            if self._counts is not None:
                self._counts.add(route.name, table.version, TO if decision.side == "to" else FROM)
        entry.service = service.name
        headers = resolved.headers if trace is None else list(trace.strip(resolved.headers))
        host_header = resolved.authority if resolved.authority is not None else incoming.host_header
        connect_timeout, response_timeout = self._connect_timeout, self._response_timeout
        if resolved.deadline is not None:
            left = resolved.deadline - now
            connect_timeout = min(connect_timeout, left)
            response_timeout = left if response_timeout is None else min(response_timeout, left)
        attempt: AttemptTrace | None = None
        try:
            endpoint = self._upstreams.service(service).pick().endpoint
            entry.endpoint = endpoint
            if trace is not None:
                attempt = trace.attempt(endpoint.url, 1, entry.side, service.name)
                headers = headers + list(attempt.headers())
            key = generate_key()
            head = self._handshake(scope, route, headers, host_header, resolved.path, resolved.query,
                                   endpoint, key, entry.request_id)
            t_sent = _perf()
            link = await UpstreamSocket.open(
                endpoint, head, key, scope.get("subprotocols") or [], max_size=self._max_message,
                connect_timeout=connect_timeout, response_timeout=response_timeout,
                ping_interval=self._ping[0], ping_timeout=self._ping[1],
                dialer=self._dialer)
            entry.upstream = _perf() - t_sent
            response = link.response
            assert response is not None
            if not link.accepted and response.status_code < 200:
                raise ProtocolError(f"{endpoint.url} answered the handshake with {response.status_code}")
        except UpstreamError as exc:
            entry.error = exc.code
            if attempt is not None:
                attempt.end(None, exc.code)
            if decision is not None and decision.count_misses and self._counts is not None:
                # a retired route's `to` failed a handshake that `from` would have served
                self._counts.add(route.name, table.version, RETIRED_MISSES)
            return await self._deny(scope, send, entry, exc.status, exc.code, str(exc) or exc.code)
        if attempt is not None:
            attempt.end(response.status_code, None)
        try:
            return await self._answer(scope, send, entry, route, link, resolved.rate_headers)
        except BaseException:
            link.abort()
            raise

    async def _answer(self, scope: Scope, send: Send, entry: _Entry, route: Any,
                      link: UpstreamSocket, extra: Headers | tuple[()] = ()) -> UpstreamSocket | None:
        """Accept the client with the upstream's subprotocol, or relay the upstream's refusal."""
        response = link.response
        assert response is not None
        answer = [(n.lower().encode("ascii"), v.encode("latin-1")) for n, v in response.headers.raw_items()]
        answer = route.response_headers.apply(strip_hop_by_hop(answer, _NOT_FORWARDED))
        rid_name = self._rules.request_id_name
        answer = [(n, v) for n, v in answer if n != rid_name]
        answer.append((rid_name, entry.request_id))
        answer.extend(extra)
        entry.status = response.status_code
        entry.started = True
        if not link.accepted:
            # The upstream refused the upgrade: the client gets its answer as it is.
            if _DENIAL in (scope.get("extensions") or {}):
                await send({"type": "websocket.http.response.start", "status": response.status_code,
                            "headers": answer})
                await send({"type": "websocket.http.response.body", "body": bytes(response.body)})
            else:
                await send({"type": "websocket.close", "code": 1008})
            return None
        try:
            await send({"type": "websocket.accept", "subprotocol": link.subprotocol, "headers": answer})
        except OSError:  # uvicorn's ClientDisconnected: the client left during the handshake
            entry.error = "downstream-disconnected"
            link.close(1001, "the client went away")
            await link.wait_closed()
            return None
        return link

    def _handshake(self, scope: Scope, route: Any, headers: list[tuple[bytes, bytes]],
                   host_header: bytes | None, path: str, query: bytes, endpoint: Endpoint,
                   key: str, request_id: bytes) -> bytes:
        """The upstream's opening handshake: the HTTP path's header rules, then the WebSocket fields."""
        client = scope.get("client")
        scheme = "https" if scope.get("scheme") == "wss" else "http"
        out = self._rules.upstream_request(headers, client=client[0] if client else None, scheme=scheme,
                                           host=host_header, request_id=request_id)
        out = [(n, v) for n, v in out if n not in _HANDSHAKE]
        if route.upstream_host is not None:
            out.append((b"host", route.upstream_host.encode("ascii")))
        elif host_header is not None:
            out.append((b"host", host_header))
        else:
            out.append((b"host", endpoint.url.split("://", 1)[1].encode("ascii")))
        out = route.request_headers.apply(out)
        # A route edit may not change the handshake itself.
        out = [(n, v) for n, v in out if n.lower() not in HOP_BY_HOP and n.lower() not in _HANDSHAKE]
        out += [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
                (b"sec-websocket-key", key.encode("ascii")), (b"sec-websocket-version", b"13")]
        subprotocols = scope.get("subprotocols")
        if subprotocols:
            out.append((b"sec-websocket-protocol", ", ".join(subprotocols).encode("latin-1")))
        target = route.rewrite_path(path).encode("ascii", "backslashreplace")
        if query:
            target += b"?" + query
        return request_head("GET", target, out)

    async def _relay(self, receive: Receive, send: Send, link: UpstreamSocket) -> None:
        """Messages both ways until both sides are closed; either side's close reaches the other."""
        tasks = (asyncio.ensure_future(_client_to_upstream(receive, link)),
                 asyncio.ensure_future(_upstream_to_client(send, link)))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            link.abort()

    async def _deny(self, scope: Scope, send: Send, entry: _Entry, status: int, code: str,
                    detail: str, extra: Headers | tuple[()] = ()) -> UpstreamSocket | None:
        """Refuse the handshake with a problem+json answer (403 without the denial extension).

        Returns None, the `_open` result of a refused handshake.
        """
        entry.status = status
        entry.error = entry.error or code
        entry.started = True
        public = problems.public_detail(code, detail)
        if public is not detail:
            entry.detail = detail  # the specifics, for the access log only
            detail = public
        if _DENIAL not in (scope.get("extensions") or {}):
            entry.status = 403
            await send({"type": "websocket.close", "code": 1008})
            return None
        headers, body = problems.render(status, code, detail,
                                        headers=[(self._rules.request_id_name, entry.request_id), *extra],
                                        request_id=entry.request_id.decode("ascii"))
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return None


async def _client_to_upstream(receive: Receive, link: UpstreamSocket) -> None:
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            # A message after the upstream started closing is dropped: its close is on the way.
            await link.send(text if text is not None else message.get("bytes") or b"")
        elif kind == "websocket.disconnect":
            code = int(message.get("code", 1005))
            if code == 1005 and "reason" not in message:
                # uvicorn reports a connection lost without a close frame as 1005 with no reason
                # (a close frame without a code comes with one): that is an abnormal closure.
                code = 1006
            link.close(*upstream_close(code, message.get("reason") or ""))
            await link.wait_closed()
            return


async def _upstream_to_client(send: Send, link: UpstreamSocket) -> None:
    try:
        while True:
            data = await link.recv()
            if data is None:
                break
            if isinstance(data, str):
                await send({"type": "websocket.send", "text": data})
            else:
                await send({"type": "websocket.send", "bytes": data})
        code, reason = downstream_close(link.close_received, link.failure)
        await send({"type": "websocket.close", "code": code, "reason": reason})
    except OSError:
        return  # uvicorn's ClientDisconnected: the other direction sees the disconnect and closes upstream


__all__ = ["WebSocketProxy"]
