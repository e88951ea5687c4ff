"""East-west on the data plane: the outbound listener's request classification and the tables a
sidecar serves (`docs/east-west.md`).

    outbound = follow_derived(holder, outbound_table)          # the outbound listener's table
    inbound = follow_derived(holder, lambda t: sidecar_table(t, "orders", app))   # a sidecar's
    app = OutboundApp(ProxyApp(outbound, ...), outbound, service_ports={15101: "orders"})

The outbound listener is the same data plane as the public one (`ProxyApp`: resolve, balancing,
retries, deadlines, tracing, the dial seam with upstream mTLS), over a table derived from the one
the process follows:

- every service of the table that no route names by host gets a route of its own, matching that
  host (the service name) on any path, above every stored route (`SERVICE_PRIORITY`): an app calls
  `http://orders/...` and reaches service `orders`, not a host-less route that happens to match
  the path. A service that some route names by host is left to those routes (their policies and
  migrations apply);
- authorization policies are left out: the caller here is the local app, and the policy is enforced
  where the caller's identity can be verified, by the destination's inbound listener.

`OutboundApp` stands in front of that `ProxyApp` and decides, before anything is resolved, whether
the request names a destination Peel forwards to (`classify`): the host of an absolute-form target
(`HTTP_PROXY`), else the Host header, else the service of the local port the connection came in on
(`[listeners.outbound] service_ports`). A host that is neither a service name nor a host some route
names is refused, 403 `unknown-destination`, and counted: the outbound listener is never an open
proxy. The `Proxy` request header is always stripped (httpoxy: a CGI app would read it as its
`HTTP_PROXY`), and so are `Proxy-Authorization` and `Proxy-Connection`, which are meant for a proxy
and never for the upstream.

A sidecar's inbound listener serves `sidecar_table`: the routes of its own service (the identity's
`svc/<name>`; authorization policies kept, migrations dropped: the caller chose the side), plus a
route for the service's own host, all answered by the local app (`[listeners.inbound] app`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

from gateway.core import problems
from gateway.core.asgi import TARGET, Receive, Scope, Send
from gateway.http.hosts import absolute_target, parse_host
from gateway.telemetry.metrics import Metrics
from routes.compiler import compile_document
from routes.errors import PeelError
from routes.holder import TableHolder
from routes.model import Document, Match, Route
from routes.services import Endpoint, Service
from routes.table import RouteTable

log = logging.getLogger("peel.outbound")

# Above every stored route's priority (at most 1,000,000): a service's own host goes to it.
SERVICE_PRIORITY = 2_000_000
# The name of the route a service gets for its own host ("service:orders"; stored route names
# cannot hold ':', so it never collides with one).
SERVICE_ROUTE = "service:"
# Request headers meant for a proxy: never forwarded (`Proxy` is the httpoxy vector).
PROXY_HEADERS = frozenset({b"proxy", b"proxy-authorization", b"proxy-connection"})


def _service_route(name: str) -> Route:
    return Route(f"{SERVICE_ROUTE}{name}", Match(hosts=(name,)), name, SERVICE_PRIORITY)


def outbound_table(table: RouteTable) -> RouteTable:
    """The outbound listener's table: `table`'s routes without authorization policies, plus a
    route per service that no route names by host (see the module docstring)."""
    routes = [dataclasses.replace(r.spec, authorization=None) if r.spec.authorization is not None
              else r.spec for r in table.routes]
    routes += [_service_route(name) for name in table.services if not table.routes_host(name)]
    document = Document(tuple(s.spec for s in table.services.values()), tuple(routes))
    return compile_document(document, table.version, table.registered)


def sidecar_table(table: RouteTable, service: str, app: Endpoint) -> RouteTable:
    """A sidecar's inbound table: the routes of `service` (those whose service it is or whose
    migration goes to it, without the migration) and a route for its own host, all answered by
    `app`. The service keeps its policies (retries, timeouts) but not its TLS or health check."""
    own = table.services.get(service)
    spec = (dataclasses.replace(own.spec, endpoints=(app,), tls=None, health_check=None)
            if own is not None else Service(service, (app,)))
    routes = [dataclasses.replace(r.spec, service=service, migration=None) for r in table.routes
              if r.service.name == service
              or (r.migration is not None and r.migration.to_service.name == service)]
    if not table.routes_host(service):
        routes.append(_service_route(service))
    return compile_document(Document((spec,), tuple(routes)), table.version)


def app_endpoint(url: str) -> Endpoint:
    """`[listeners.inbound] app` (checked by the settings: http://host:port) as an endpoint."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    return Endpoint("http", parts.hostname, parts.port or 80)


def follow_derived(source: TableHolder, build: Callable[[RouteTable], RouteTable]) -> TableHolder:
    """A holder that gets `build(table)` for every table `source` swaps in (a follower of it).

    The first table is derived at once (the listeners open with it). Later ones are derived in a
    thread and swapped in on the event loop when done, the newest winning: deriving compiles the
    table again (about 40 ms per 1,000 routes, 0.8 s for 10,000 on the 2-core machine), which would
    stall every request of the loop if done in the follower. Meanwhile the previous derived table
    serves, so the outbound listener may follow a new config version a moment later than the
    public one. Without a running loop (tests, a synchronous refresh) every table is derived at
    once. A table that cannot be derived leaves the previous derived table live, with an error
    logged.
    """
    derived = TableHolder()
    latest: list[RouteTable] = []
    running: list[asyncio.Task[None]] = []

    def derive(table: RouteTable) -> RouteTable | None:
        try:
            return build(table)
        except PeelError as exc:
            log.error("config version %s: the derived table cannot be built, the previous one stays "
                      "in use: %s", table.version, exc)
        except Exception:
            log.exception("config version %s: deriving the table failed, the previous one stays in use",
                          table.version)
        return None

    async def catch_up() -> None:
        try:
            while latest:
                table = latest.pop()
                fresh = await asyncio.to_thread(derive, table)
                if fresh is not None and not latest:
                    derived.swap(fresh)
        finally:
            running.clear()

    def swap(table: RouteTable) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or derived.table is None:
            fresh = derive(table)
            if fresh is not None:
                derived.swap(fresh)
            return
        latest[:] = [table]
        if not running:
            running.append(loop.create_task(catch_up()))

    source.follow(swap)
    return derived


@dataclasses.dataclass(frozen=True, slots=True)
class Destination:
    """Where an outbound request goes: the host it names (a service, or a host a route names);
    `service_port` when it came in on a service's local port (its Host is then that service)."""

    host: str
    service_port: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Refused:
    """An outbound request Peel does not forward: status, Peel code, detail."""

    status: int
    code: str
    detail: str


def classify(table: RouteTable | None, target: bytes | None, host_header: bytes | None,
             port: int | None, service_ports: Mapping[int, str]) -> Destination | Refused | None:
    """Where an outbound request goes (pure; see the module docstring).

    `target` is the raw request target, `host_header` the (first) Host header, `port` the local
    port the connection came in on. None: leave it to the resolve step (no table yet, a missing or
    malformed Host: its own refusals say so). `table` is the outbound table (`outbound_table`),
    where every service's name is a host that a route names.
    """
    service = service_ports.get(port) if port is not None else None
    if table is None:
        return None
    if service is not None:
        if not table.routes_host(service):
            return Refused(503, "unknown-service", f"this local port stands for service {service!r}, "
                           "which the route table does not hold (yet)")
        return Destination(service, service_port=True)
    if target is not None and target[:1] != b"/" and target != b"*":
        absolute = absolute_target(target)
        if absolute is None:
            return Refused(400, "bad-target", "the request target is neither a path nor an "
                           "http:// URL")
        host = absolute[0]
    elif host_header is not None:
        parsed = parse_host(host_header)
        if parsed is None:
            return None
        host = parsed
    else:
        return None
    if not table.routes_host(host):
        return Refused(403, "unknown-destination", f"the outbound listener forwards only to "
                       f"registered services and to hosts that routes name; {host!r} is neither "
                       "(not an open proxy)")
    return Destination(host)


class OutboundCounts:
    """What the outbound listener refused, by Peel code, forwarded, by destination host, and
    tunnelled, by destination (at most `MAX_HOSTS` keys each; the rest as `other`). Refusals and
    tunnels also go to `metrics` (`peel_outbound_refused_total`, `peel_outbound_tunnels_total`)."""

    MAX_HOSTS = 1000

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self.refused: dict[str, int] = {}
        self.forwarded: dict[str, int] = {}
        self.tunnels: dict[str, int] = {}

    def refuse(self, code: str) -> None:
        self._add(self.refused, code)
        if self.metrics is not None:
            self.metrics.outbound_refused(code)

    def forward(self, host: str) -> None:
        self._add(self.forwarded, host)

    def tunnel(self, destination: str) -> None:
        self._add(self.tunnels, destination)
        if self.metrics is not None:
            self.metrics.outbound_tunnel(destination)

    def _add(self, counts: dict[str, int], key: str) -> None:
        if key not in counts and len(counts) >= self.MAX_HOSTS:
            key = "other"
        counts[key] = counts.get(key, 0) + 1


Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


class OutboundApp:
    """The outbound listener's ASGI app: classify, strip the proxy headers, then the data plane.

    `proxy` is the `ProxyApp` over `holder` (the outbound table); `service_ports` maps a local
    port to the service it stands for.
    """

    def __init__(self, proxy: Asgi, holder: TableHolder, *, service_ports: Mapping[int, str] | None = None,
                 counts: OutboundCounts | None = None) -> None:
        self._proxy = proxy
        self._holder = holder
        self._ports = dict(service_ports or {})
        self.counts = counts if counts is not None else OutboundCounts()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self._proxy(scope, receive, send)
            return
        headers = scope["headers"]
        host_header: bytes | None = None
        stripped = False
        for name, value in headers:
            if name == b"host" and host_header is None:
                host_header = value
            elif name in PROXY_HEADERS:
                stripped = True
        if stripped:
            headers = [(n, v) for n, v in headers if n not in PROXY_HEADERS]
        extensions = scope.get("extensions") or {}
        server = scope.get("server")
        found = classify(self._holder.table, extensions.get(TARGET), host_header,
                         server[1] if server else None, self._ports)
        if isinstance(found, Refused):
            self.counts.refuse(found.code)
            log.info("outbound: refused %s %s: %s", scope.get("method", "GET"),
                     (extensions.get(TARGET) or b"").decode("latin-1")[:200], found.code)
            await _refuse(kind, send, found)
            return
        if found is not None:
            self.counts.forward(found.host)
            if found.service_port:
                # The port names the service: it is the Host, whatever the app sent.
                headers = [(n, v) for n, v in headers if n != b"host"]
                headers.append((b"host", found.host.encode("ascii")))
                extensions[TARGET] = None
        if headers is not scope["headers"]:
            scope["headers"] = headers
        await self._proxy(scope, receive, send)


async def _refuse(kind: str, send: Send, refused: Refused) -> None:
    if kind == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": refused.code})
        return
    headers, body = problems.render(refused.status, refused.code, refused.detail)
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


__all__ = ["PROXY_HEADERS", "SERVICE_PRIORITY", "SERVICE_ROUTE", "Destination", "OutboundApp",
           "OutboundCounts", "Refused", "app_endpoint", "classify", "follow_derived", "outbound_table",
           "sidecar_table"]
