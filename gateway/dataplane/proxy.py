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
from typing import Final

from facade.beta import BetaTrust
from facade.counts import FALLBACK, FROM, RETIRED_MISSES, TO, TrafficCounts
from facade.decision import Decision
from facade.shadow_counts import ShadowStats
from facade.window import GuardSamples
from gateway.core.asgi import LISTENER, PEER, TARGET, Peer, Receive, Scope, Send
from gateway.core.settings import DeadlineSettings, FacadeSettings, ProxySettings, Settings
from gateway.dataplane.buffering import Watch, read_body
from gateway.dataplane.forward import Forwarder
from gateway.dataplane.request import BodyTooLarge, RequestState, abort_downstream
from gateway.dataplane.resolve import Incoming, Refusal, Resolver, from_gateway
from gateway.dataplane.shadow import MARKER_NAME, Shadower
from gateway.dataplane.websocket import WebSocketProxy
from gateway.http.headers import ForwardingRules, new_request_id, valid_request_id
from gateway.http.hosts import hostname
from gateway.http.paths import DEFAULT_RULES, path_rules
from gateway.policy.deadline import DeadlineRules
from gateway.policy.ratelimit import RateLimiters
from gateway.telemetry.accesslog import AccessLog
from gateway.telemetry.graph import EdgeCounts
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.tracing import Tracing
from gateway.upstream.endpoints import Upstreams
from gateway.upstream.pool import ExchangeAborted, UpstreamPool
from routes.holder import TableHolder
from routes.migration import CompiledMigration
from routes.table import CompiledRoute, RouteTable

log: Final = logging.getLogger("peel.proxy")
_perf: Final = time.perf_counter
_now: Final = time.monotonic


class ProxyApp:
    """The data-plane ASGI 3 app of the public (and outbound) listeners.

    `holder` gives the current route table; `pool` the upstream connections (closed on lifespan
    shutdown or `aclose()`); `settings` is `Settings` or just its `proxy` part (the facade's beta
    trust then comes from `facade`, default: nobody trusted; deadlines from `[deadlines]`'s
    defaults); `access_log` may be None for none; `counts` receives the per-route traffic counts of
    migrations (None: not counted); `upstreams` keeps the endpoints' live state (balancing, health,
    ejection; made here when not given); `tracing` and `metrics` are None when off; `graph`
    receives every request's dependency-graph edge (None: not recorded); `listener` is the kind of
    listener this app serves ("public" or "outbound"; a request with a peer is "inbound", and a
    request's `peel.listener` extension overrides it).
    """

    def __init__(self, holder: TableHolder, pool: UpstreamPool, settings: ProxySettings | Settings,
                 access_log: AccessLog | None = None, *, facade: FacadeSettings | None = None,
                 counts: TrafficCounts | None = None, upstreams: Upstreams | None = None,
                 tracing: Tracing | None = None, metrics: Metrics | None = None,
                 samples: GuardSamples | None = None, shadow_stats: ShadowStats | None = None,
                 graph: EdgeCounts | None = None, listener: str = "public") -> None:
        # The path rules come with the whole settings; given only `proxy`, the defaults apply.
        self._paths = DEFAULT_RULES
        deadlines = DeadlineSettings()
        trust_domain: str | None = None
        self.graph = graph
        self.listener = listener
        if isinstance(settings, Settings):
            trust_domain = settings.identity.trust_domain
            facade = facade or settings.facade
            self._paths = path_rules(settings.paths)
            deadlines = settings.deadlines
            settings = settings.proxy
        facade = facade or FacadeSettings()
        self.counts = counts if counts is not None else TrafficCounts()
        # the guard's measurements of guarded migrations (facade.window; None: not measured)
        self.samples = samples
        self._holder = holder
        self._pool = pool
        self.upstreams = upstreams if upstreams is not None else Upstreams()
        self._rules = ForwardingRules(settings.trusted_proxies, settings.request_id_header)
        self._rid_name = self._rules.request_id_name
        self._deadlines = DeadlineRules(deadlines)
        self._tracing = tracing
        self._metrics = metrics
        self._forward = Forwarder(pool, self.upstreams, self._rules, settings,
                                  deadlines=self._deadlines, metrics=metrics)
        # the shadow stage's copies: their own pool and queues (`shadow_stats`: their counts)
        self.shadow = Shadower(settings, pool.dialer, shadow_stats if shadow_stats is not None
                               else ShadowStats(), self._rules)
        self.shadow.samples = samples
        # the resolve step of this listener (its beta filter's counts are published as metrics)
        self.resolver = self._resolver = Resolver(
            paths=self._paths, deadlines=self._deadlines, limiters=RateLimiters(),
            beta=BetaTrust(facade.trusted_networks, facade.beta_secret), trust_domain=trust_domain)
        self._log = access_log if access_log is not None and access_log.enabled else None
        self._websocket = WebSocketProxy(holder, self._resolver, rules=self._rules, settings=settings,
                                         dialer=pool.dialer,
                                         access_log=self._log, upstreams=self.upstreams, counts=self.counts,
                                         tracing=tracing, metrics=metrics)
        if upstreams is None:
            # Its own endpoint state: it follows the tables too (else the owner registered it).
            holder.follow(self.upstreams.update)
        holder.follow(self._follow)
        holder.follow(self.shadow.follow)

    async def aclose(self) -> None:
        await self.shadow.aclose()
        await self._pool.close()

    def _follow(self, table: RouteTable) -> None:
        """This proxy's part in a new table (a `TableHolder` follower): forget the retry budgets
        and rate-limit buckets of routes that are gone."""
        self._forward.budgets.prune(table.names())
        self._resolver.prune(table)

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
        baggage = False
        marked = False  # a `Peel-Shadow` header from the client: never passed on
        # typed: compiled, the loop reads the list and its tuples directly and compares bytes in C
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        for name, value in headers:
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
            elif name == b"baggage":
                baggage = True
            elif name == MARKER_NAME:
                marked = True
        req = RequestState(request_id or new_request_id(), scope, receive, send)
        metrics = self._metrics
        if metrics is not None:
            metrics.in_flight += 1
        host_name = hostname(host) if host is not None else ""
        # the inbound listener's caller (gateway.edge.protocol reads it once per connection)
        extensions = scope.get("extensions") or {}
        peer: Peer | None = extensions.get(PEER)
        listener = "inbound" if peer is not None else extensions.get(LISTENER) or self.listener
        if self._tracing is not None:
            req.trace = self._tracing.start(headers, req.client, req.method,
                                            scope.get("path", ""), host_name,
                                            trusted=from_gateway(peer, self._resolver.trust_domain))
            if peer is not None and peer.identity is not None:
                req.trace.peer(peer.identity)
        try:
            await self._handle(req, host, hosts, length, chunked, deadline, peer, listener, baggage,
                               marked)
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
                                            f"{type(exc).__name__}: {exc}")
            else:
                abort_downstream(scope)
        finally:
            if req.body is not None:
                req.body.close()
            duration = _perf() - t0
            trace = req.trace
            if trace is not None:
                trace.end(req.status, req.error)
            if metrics is not None:
                metrics.in_flight -= 1
                metrics.request(req.route, req.service, req.side, req.status, duration)
                if peer is not None:
                    metrics.inbound(peer.mtls, peer.source)
            graph = self.graph
            if graph is not None:
                # the edge: who called, and the service that answered (or would have: a refusal
                # after matching names the route's service)
                destination = req.service or (req.compiled.service.name if req.compiled is not None
                                              else None)
                if destination is not None:
                    graph.record(listener, graph.source(listener, peer.source if peer is not None
                                                        else None),
                                 destination, req.status, _failed(req), duration)
            if self._log is not None:
                self._log.log(req.request_id, req.client, req.method, scope.get("path", ""), req.route,
                              req.service, req.endpoint, req.status, req.bytes_in, req.bytes_out,
                              duration, req.upstream, req.error, req.side, req.fallback,
                              trace_id=trace.trace_id if trace is not None else None,
                              span_id=trace.span_id if trace is not None else None,
                              attempts=req.attempts, detail=req.detail,
                              peer=peer.identity if peer is not None else None)

    async def _handle(self, req: RequestState, host_header: bytes | None, hosts: int,
                      length: bytes | None, chunked: bool, deadline: bool, peer: Peer | None,
                      listener: str = "public", baggage: bool | None = None,
                      marked: bool = False) -> None:
        scope = req.scope
        table = self._holder.table
        extensions = scope.get("extensions") or {}
        incoming = Incoming(req.method, scope.get("raw_path") or scope["path"].encode("utf-8"),
                            scope["query_string"], scope["headers"], req.client,
                            target=extensions.get(TARGET), host_header=host_header, hosts=hosts,
                            length=length, deadline=deadline, peer=peer, listener=listener,
                            baggage=baggage)
        resolved = self._resolver.resolve(table, incoming, _now())
        if isinstance(resolved, Refusal):
            return await self._refuse(req, resolved)
        route = resolved.route
        if resolved.dry_run_denied:
            log.warning("authorization dry run: route %s would refuse %s", route.name,
                        peer.source if peer is not None else req.client)
            if self._metrics is not None:
                self._metrics.authz_dry_run(route.name)
        req.route = route.name
        req.compiled = route
        if resolved.baggage:
            req.baggage = True
            req.cohort = resolved.cohort
        scope["path"] = resolved.path
        # Only Peel marks a request as a shadow copy: a client's marker could make `to` treat a
        # real request as one (and not act on it).
        scope["headers"] = resolved.headers if not marked else \
            [(n, v) for n, v in resolved.headers if n != MARKER_NAME]
        if req.trace is not None:
            req.trace.route(route.name, route.service.name,
                            route.migration.spec.stage if route.migration is not None else None)
        if resolved.rate_headers:
            req.response_headers = resolved.rate_headers
        if resolved.deadline is not None:
            req.deadline = resolved.deadline
        req.host_header = resolved.authority if resolved.authority is not None else host_header
        req.path = resolved.path
        req.query = resolved.query
        req.length = length
        req.chunked = chunked
        req.has_body = length is not None or chunked
        if req.has_body and route.buffering is not None and not await self._forward.buffer(req, route):
            return None  # the body came too slowly: answered 408
        migration: CompiledMigration | None = route.migration
        if migration is None or resolved.decision is None:
            await self._forward.call(req, route.service, None)
            return None
        assert table is not None
        await self._migrate(req, route, migration, resolved.decision, table)
        return None

    async def _refuse(self, req: RequestState, refusal: Refusal) -> None:
        """Answer a request that the resolve step refused (recording the route it matched)."""
        route = refusal.route
        if route is not None:
            req.route = route.name
            req.compiled = route
            if req.trace is not None:
                req.trace.route(route.name, route.service.name,
                                route.migration.spec.stage if route.migration is not None else None)
            if refusal.code == "rate-limited" and self._metrics is not None:
                self._metrics.rate_limited(route.name)
            elif refusal.code == "forbidden-identity" and self._metrics is not None:
                self._metrics.authz_denied(route.name)
        await self._forward.problem(req, refusal.status, refusal.code, refusal.detail,
                                    headers=refusal.headers or None, close=refusal.close)

    async def _migrate(self, req: RequestState, route: CompiledRoute, migration: CompiledMigration,
                       decision: Decision, table: RouteTable) -> None:
        """A migrated route: `from` or `to` answers per the decision, `from` again when `to` fails."""
        forward = self._forward
        method = req.method
        counts = self.counts
        req.side = decision.side
        samples = self.samples if migration.spec.guard is not None else None
        t0 = _perf()
        if decision.side == "from":
            counts.add(route.name, table.version, FROM)
            if decision.shadow:
                # The shadow stage: `from` answers; a copy goes to `to` once the answer is out.
                shadow = self.shadow
                pending = await shadow.prepare(req, route, migration, table.version)
                await forward.call(req, migration.from_service, None)
                shadow.submit(pending, req)
            else:
                await forward.call(req, migration.from_service, None)
            if samples is not None:
                _sample(samples, route.name, "from", req, None, t0)
            return
        counts.add(route.name, table.version, TO)
        replay = decision.fallback and migration.fallback.allows_method(method)
        if replay and req.has_body:
            if req.body is None:  # not held by buffering already
                req.body = await read_body(req.receive, migration.fallback.max_body)
            # Larger than the buffer: sent to `to` only (the rest streamed), without a fallback.
            replay = req.body.complete and req.body.size <= migration.fallback.max_body
        watch = Watch(migration, replay) if replay or decision.count_misses else None
        failed = await forward.call(req, migration.to_service, watch)
        if samples is not None:
            _sample(samples, route.name, "to", req, failed, t0)
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

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _sample(samples: GuardSamples, route: str, side: str, req: RequestState, failed: str | None,
            t0: float) -> None:
    """One answer of a guarded migration's side: an error is a 5xx or an upstream failure (a `to`
    failure answered by `from` counts against `to`; a 404 handed to the fallback does not)."""
    if failed is not None:
        error = not failed.startswith("status-") or failed >= "status-5"
    else:
        error = req.status >= 500 or req.error is not None
    samples.add(route, side, error=error, seconds=_perf() - t0, now=time.time())


def _failed(req: RequestState) -> bool:
    """The answer failed on the upstream's side without a 5xx status: cut after it started (a 5xx,
    Peel's own 502/503/504 included, is counted as an error by its status)."""
    return req.error is not None and req.status < 400 and req.error != "downstream-disconnected"
