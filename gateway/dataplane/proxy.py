"""The data plane: a raw ASGI app that matches, rewrites, forwards and streams back.

Per request: read the route table once; normalise the path (route and forward the same form);
refuse absolute-form targets for hosts no route names (Peel is not an open proxy); strip beta
headers and cookies that untrusted downstreams sent; match; apply the route's rate limit and the
request's deadline (incoming header from trusted networks, or the route's total timeout); for a
migrated route ask its compiled migration which service answers (and, when `to` fails, answer from
`from` per its fallback); then `gateway.dataplane.forward.Forwarder` does the rest: circuit breaker, endpoint
choice, attempts and retries, the upstream request, streaming the response back. At the end of each
request: its trace span, metrics and access-log line. WebSocket scopes go to
`gateway.dataplane.websocket.WebSocketProxy`.

Failures before the response started become `application/problem+json` answers (the `code` comes
from the error class, the request id is included); after it started the downstream connection is
reset, so a cut body can never pass for a complete one. Starlette is deliberately not used here:
its Request/Response objects alone cost more than the whole throughput budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from facade.beta import BetaTrust
from facade.beta_filter import TableBetaFilter
from facade.counts import FALLBACK, FROM, RETIRED_MISSES, TO, TrafficCounts
from facade.decision import NO_USERS, BetaUsers, decide_request
from gateway.core.asgi import Receive, Scope, Send
from gateway.dataplane.buffering import Watch, buffer_body, prefixed_body, replay_body
from gateway.dataplane.forward import Forwarder
from gateway.dataplane.request import BodyTooLarge, RequestState, abort_downstream
from gateway.dataplane.websocket import WebSocketProxy
from gateway.edge.protocol import TARGET
from gateway.http.headers import ForwardingRules, new_request_id, valid_request_id
from gateway.http.hosts import absolute_target, hostname
from gateway.http.paths import DEFAULT_RULES, normalise, path_rules
from gateway.policy.deadline import DeadlineRules
from gateway.policy.ratelimit import RateLimiters, rate_key
from gateway.server.settings import DeadlineSettings, FacadeSettings, ProxySettings, Settings
from gateway.telemetry.accesslog import AccessLog
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.tracing import Tracing
from gateway.upstream.endpoints import Upstreams
from gateway.upstream.pool import ExchangeAborted, UpstreamPool
from routes.holder import TableHolder
from routes.migration import CompiledMigration
from routes.policies import RateLimit
from routes.table import CompiledRoute, RouteTable

log = logging.getLogger("peel.proxy")
_perf = time.perf_counter
_now = time.monotonic


class ProxyApp:
    """The data-plane ASGI 3 app of the public (and outbound) listeners.

    `holder` gives the current route table; `pool` the upstream connections (closed on lifespan
    shutdown or `aclose()`); `settings` is `Settings` or just its `proxy` part (the facade's beta
    trust then comes from `facade`, default: nobody trusted; deadlines from `[deadlines]`'s
    defaults); `access_log` may be None for none; `counts` receives the per-route traffic counts of
    migrations (None: not counted); `upstreams` keeps the endpoints' live state (balancing, health,
    ejection; made here when not given); `tracing` and `metrics` are None when off.
    """

    def __init__(self, holder: TableHolder, pool: UpstreamPool, settings: ProxySettings | Settings,
                 access_log: AccessLog | None = None, *, facade: FacadeSettings | None = None,
                 counts: TrafficCounts | None = None, upstreams: Upstreams | None = None,
                 tracing: Tracing | None = None, metrics: Metrics | None = None) -> None:
        # The path rules come with the whole settings; given only `proxy`, the defaults apply.
        self._paths = DEFAULT_RULES
        deadlines = DeadlineSettings()
        if isinstance(settings, Settings):
            facade = facade or settings.facade
            self._paths = path_rules(settings.paths)
            deadlines = settings.deadlines
            settings = settings.proxy
        facade = facade or FacadeSettings()
        self._trust = BetaTrust(facade.trusted_networks, facade.beta_secret)
        self._beta = TableBetaFilter(self._trust)
        self.counts = counts if counts is not None else TrafficCounts()
        self._holder = holder
        self._pool = pool
        self.upstreams = upstreams if upstreams is not None else Upstreams()
        # the table whose services `upstreams` was last updated with
        self._synced: RouteTable | None = None
        self._rules = ForwardingRules(settings.trusted_proxies, settings.request_id_header)
        self._rid_name = self._rules.request_id_name
        self._deadlines = DeadlineRules(deadlines)
        self._tracing = tracing
        self._metrics = metrics
        self._forward = Forwarder(pool, self.upstreams, self._rules, settings,
                                  deadlines=self._deadlines, metrics=metrics)
        self._limiters = RateLimiters()
        self._log = access_log if access_log is not None and access_log.enabled else None
        self._websocket = WebSocketProxy(holder, rules=self._rules, paths=self._paths, settings=settings,
                                         access_log=self._log, beta=self._trust,
                                         upstreams=self.upstreams, counts=self.counts)
        # called with each new table after `upstreams` took it (the active health checks)
        self.on_table: Callable[[RouteTable], None] | None = None

    async def aclose(self) -> None:
        await self._pool.close()

    def sync(self, table: RouteTable) -> None:
        """Bring the endpoints' state in line with `table` (on the event loop; idempotent)."""
        if table is not self._synced:
            self._synced = table
            self.upstreams.update(table)
            names = frozenset(r.name for r in table.routes)
            self._forward.budgets.prune(names)
            self._limiters.prune(frozenset(r.name for r in table.routes if r.rate_limit is not None))
            if self.on_table is not None:
                self.on_table(table)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._websocket.handle(scope, receive, send)
            elif scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        t0 = _perf()
        rid_name = self._rid_name
        deadline_names = self._deadlines.names
        request_id: bytes | None = None
        host: bytes | None = None
        hosts = 0
        length: bytes | None = None
        chunked = False
        deadline = False
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
            elif name in deadline_names:
                deadline = True
        req = RequestState(request_id or new_request_id(), scope, receive, send)
        metrics = self._metrics
        if metrics is not None:
            metrics.in_flight += 1
        host_name = hostname(host) if host is not None else ""
        if self._tracing is not None:
            req.trace = self._tracing.start(scope["headers"], req.client, req.method,
                                            scope.get("path", ""), host_name)
        try:
            if hosts > 1:
                await self._forward.problem(req, 400, "bad-request", "more than one Host header")
            else:
                await self._handle(req, host, host_name, length, chunked, deadline)
        except BodyTooLarge as exc:
            # A chunked body passed the route's cap: the upstream exchange was cut either way.
            req.error = "body-too-large"
            if not req.started:
                await self._forward.problem(req, 413, "body-too-large", str(exc), close=True)
            else:
                abort_downstream(scope)
        except ExchangeAborted:
            req.error = req.error or "downstream-disconnected"
        except Exception as exc:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            req.error = "internal-error"
            if not req.started:
                await self._forward.problem(req, 500, "internal-error",
                                            f"the gateway failed on this request ({type(exc).__name__})")
            else:
                abort_downstream(scope)
        finally:
            duration = _perf() - t0
            trace = req.trace
            if trace is not None:
                trace.end(req.status, req.error)
            if metrics is not None:
                metrics.in_flight -= 1
                metrics.request(req.route, req.service, req.side, req.status, duration)
            if self._log is not None:
                self._log.log(req.request_id, req.client, req.method, scope.get("path", ""), req.route,
                              req.service, req.endpoint, req.status, req.bytes_in, req.bytes_out,
                              duration, req.upstream, req.error, req.side, req.fallback,
                              trace_id=trace.trace_id if trace is not None else None,
                              span_id=trace.span_id if trace is not None else None,
                              attempts=req.attempts)

    async def _handle(self, req: RequestState, host_header: bytes | None, host: str,
                      length: bytes | None, chunked: bool, deadline: bool) -> None:
        scope = req.scope
        forward = self._forward
        table = self._holder.table
        if table is None:
            return await forward.problem(req, 503, "no-route-table", "no route table loaded yet")
        if table is not self._synced:
            self.sync(table)
        try:
            path = normalise(scope.get("raw_path") or scope["path"].encode("utf-8"), self._paths)
        except ValueError as exc:
            return await forward.problem(req, 400, "bad-path", f"the request path is refused: {exc}")
        scope["path"] = path
        extensions = scope.get("extensions") or {}
        target: bytes | None = extensions.get(TARGET)
        if target is not None and target[:1] != b"/":
            # Absolute form (or `*`, or authority form): only for hosts that a route names.
            absolute = absolute_target(target)
            if absolute is None or not table.routes_host(absolute[0]):
                return await forward.problem(req, 400, "not-an-open-proxy",
                                             "not an open proxy: the request target names a host "
                                             "that no route serves")
            host = absolute[0]
        method = req.method
        query: bytes = scope["query_string"]
        client_addr = req.client
        beta_users = NO_USERS
        if table.beta_headers or table.beta_cookies:
            # Beta values steer routing: an untrusted one is gone before matching and forwarding.
            cleaned, beta_users = self._beta.for_table(table).apply(scope["headers"], client_addr)
            if cleaned is not None:
                scope["headers"] = cleaned
        route = table.match(method, host, path, query, scope["headers"])
        if route is None:
            return await forward.problem(req, 404, "no-route", "no route matches this request")
        req.route = route.name
        req.compiled = route
        if req.trace is not None:
            req.trace.route(route.name, route.service.name,
                            route.migration.spec.stage if route.migration is not None else None)
        limit = route.max_body
        if limit is not None and length is not None and length.isdigit() and int(length) > limit:
            # Before anything is read, so an `Expect: 100-continue` client gets no 100 Continue.
            return await forward.problem(req, 413, "body-too-large",
                                         f"this route takes request bodies of at most {limit} bytes",
                                         close=True)
        if route.rate_limit is not None and not await self._rate_limit(req, route, route.rate_limit):
            return None
        until: float | None = None
        total = route.timeouts.total
        now = _now() if deadline or total is not None else 0.0
        if deadline:
            # The incoming deadline counts from trusted networks only; either way Peel's own
            # (the remaining budget) replaces it upstream.
            try:
                until = self._deadlines.read(scope["headers"], client_addr, now)
            except ValueError as exc:
                return await forward.problem(req, 400, "bad-deadline", f"the deadline header is "
                                             f"refused: {exc}")
            scope["headers"] = self._deadlines.strip(scope["headers"])
        if total is not None and (until is None or now + total < until):
            until = now + total
        if until is not None:
            if until <= now:
                return await forward.problem(req, 504, "deadline-exceeded",
                                             "the request's deadline had passed when it arrived")
            req.deadline = until
        req.host_header = host_header
        req.path = path
        req.query = query
        req.length = length
        req.chunked = chunked
        req.has_body = length is not None or chunked
        migration: CompiledMigration | None = route.migration
        if migration is None:
            await forward.call(req, route.service, None)
            return None
        await self._migrate(req, route, migration, beta_users, table)
        return None

    async def _migrate(self, req: RequestState, route: CompiledRoute, migration: CompiledMigration,
                       beta_users: BetaUsers, table: RouteTable) -> None:
        """A migrated route: `from` or `to` answers per the decision, `from` again when `to` fails."""
        forward = self._forward
        method = req.method
        decision = decide_request(migration, req.scope["headers"], req.client, method, beta_users)
        counts = self.counts
        req.side = decision.side
        if decision.side == "from":
            counts.add(route.name, table.version, FROM)
            await forward.call(req, migration.from_service, None)
            return
        counts.add(route.name, table.version, TO)
        replay = decision.fallback and migration.fallback.allows_method(method)
        if replay and req.has_body:
            body, complete = await buffer_body(req.receive, migration.fallback.max_body)
            # Larger than the buffer: sent to `to` only (the rest streamed), without a fallback.
            replay = complete and len(body) <= migration.fallback.max_body
            req.receive = replay_body(body) if complete else prefixed_body(body, req.receive)
            req.replayable = complete
        watch = Watch(migration, replay) if replay or decision.count_misses else None
        failed = await forward.call(req, migration.to_service, watch)
        if failed is None:
            return
        if not replay:
            counts.add(route.name, table.version, RETIRED_MISSES)
            return
        counts.add(route.name, table.version, FALLBACK)
        if self._metrics is not None:
            self._metrics.fallback(route.name)
        req.fallback = failed
        req.side = "from"
        req.error = None
        req.sent = False
        req.upstream = None
        await forward.call(req, migration.from_service, None)

    async def _rate_limit(self, req: RequestState, route: CompiledRoute, policy: RateLimit) -> bool:
        """Take a token from the route's bucket for this client; False when refused (answered 429)."""
        limiter = self._limiters.get(route.name, policy)
        verdict = limiter.take(rate_key(policy, req.scope["headers"], req.client))
        if verdict.allowed:
            req.response_headers = verdict.headers
            return True
        if self._metrics is not None:
            self._metrics.rate_limited(route.name)
        await self._forward.problem(req, 429, "rate-limited",
                                    f"route {route.name} allows {policy.requests} requests per "
                                    f"{policy.per:g} s per client; try again later",
                                    headers=verdict.headers)
        return False

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
