"""The resolve step: what a request gets from the route table, before anything is sent upstream.

    Resolver(paths=, beta=, deadlines=, limiters=).resolve(table, incoming, now) -> Resolution | Refusal

One function for every way a request reaches Peel: HTTP (`gateway.dataplane.proxy`), WebSocket
handshakes (`gateway.dataplane.websocket`) and the admin `POST /api/v1/match` (`peel match`), so a
policy added to a route applies to all three and `peel match` answers what a request would really
get. In order (DESIGN.md, "The request path"):

1. the route table is there (503 `no-route-table`), one Host header (400 `bad-request`), a valid
   `host[:port]` (400 `bad-host`; one trailing dot is dropped: `gateway.http.hosts`);
2. the path is normalised once (400 `bad-path`); routed and forwarded in that form;
3. an absolute-form target (`GET http://host/p`) is honoured only for a host that a route names
   (400 `not-an-open-proxy`); its host chooses the route;
4. beta values that untrusted downstreams sent are stripped before matching (`facade.beta_filter`);
5. match (404 `no-route`);
6. the route's body limit against a declared Content-Length (413 `body-too-large`, close);
7. the route's rate limit (429 `rate-limited`), unless the resolver has no limiters (`/match`);
8. the deadline: an incoming `Peel-Timeout-Ms`/`grpc-timeout` from trusted networks, or the route's
   total timeout, whichever ends first (400 `bad-deadline`; 504 `deadline-exceeded` when less than a
   millisecond is left); the deadline headers are stripped either way;
9. the facade decision for a migrated route (`facade.decision.decide_request`): which side answers.

Between 4 and 5, cohorts across hops (`facade.cohort`, docs/east-west.md): a `peel-side` baggage
member is honoured only from a trusted source (a local app on the outbound listener, an mTLS peer in
`trust_domain` on the inbound listener) and stands in for the migration's percentage bucket; from
anyone else Peel's members are stripped (other members kept). `Resolution.cohort` is the side to
carry upstream and `Resolution.baggage` whether the outgoing `baggage` must be rewritten.

Between 5 and 6, authorization by identity (`docs/mtls.md`): the route's `authorization` policy
against the peer (`Incoming.peer`, the inbound listener's `Peer`; None elsewhere), 403
`forbidden-identity` naming the route's policy; in `dry_run` mode the request passes and
`Resolution.dry_run_denied` says it would not have. On a strict inbound listener a route without a
policy is refused (default deny).

Pure apart from the rate limiter's buckets and the clock (`now` is passed in); no I/O. A refusal
says what the client is answered (status, Peel code, detail, extra headers, whether to close) and
which route it was refused on, so the caller records it in metrics, traces and the access log.
"""

from __future__ import annotations

from facade.beta import BetaTrust
from facade.beta_filter import TableBetaFilter
from facade.cohort import BAGGAGE, carried_side, strip_members, to_carry, trusted_source
from facade.decision import NO_USERS, BetaUsers, Decision, Side, decide_request
from gateway.core.asgi import Peer
from gateway.http.hosts import absolute_target, parse_host
from gateway.http.paths import DEFAULT_RULES, PathRules, normalise
from gateway.policy.deadline import DeadlineRules, expired
from gateway.policy.ratelimit import RateLimiters, rate_key
from routes.table import CompiledRoute, CompiledService, RouteTable

Headers = list[tuple[bytes, bytes]]


def from_gateway(peer: Peer | None, trust_domain: str | None) -> bool:
    """Whether the caller is a peer gateway: an mTLS peer on the inbound listener whose certificate
    names an identity of `trust_domain`. Its deadline and trace context are believed whatever its
    address (docs/east-west.md)."""
    return peer is not None and peer.mtls and trusted_source("inbound", peer.identity, True, trust_domain)


class Incoming:
    """The facts of one request that the listener read: the input of `Resolver.resolve`.

    `target` is the raw request target when the listener kept it (absolute form starts without
    `/`), else the raw path; `host_header` is the (first) Host header and `hosts` how many there
    were; `length` the Content-Length value; `deadline` whether a deadline header is present (the
    HTTP listener spots it while it reads the headers once; None: look); `peer` the inbound
    listener's `Peer` (the caller's identity; None on other listeners); `listener` the kind of
    listener it came in on ("public", "outbound"; a `peer` makes it "inbound"); `baggage` whether a
    `baggage` header is present (None: look).
    """

    __slots__ = ("baggage", "client", "deadline", "headers", "host_header", "hosts", "length", "listener",
                 "method", "peer", "query", "raw_path", "target")

    def __init__(self, method: str, raw_path: bytes, query: bytes, headers: Headers, client: str | None,
                 *, target: bytes | None = None, host_header: bytes | None = None, hosts: int = -1,
                 length: bytes | None = None, deadline: bool | None = None,
                 peer: Peer | None = None, listener: str = "public", baggage: bool | None = None) -> None:
        self.peer = peer
        self.listener = "inbound" if peer is not None else listener
        self.baggage = baggage
        self.method = method
        self.raw_path = raw_path
        self.target = target
        self.query = query
        self.headers = headers
        self.client = client
        if hosts < 0:
            hosts = 0
            for name, value in headers:
                if name == b"host":
                    if host_header is None:
                        host_header = value
                    hosts += 1
        self.host_header = host_header
        self.hosts = hosts
        self.length = length
        self.deadline = deadline


class Resolution:
    """Where a request goes and under which rules.

    `headers` are the request's headers after stripping (untrusted beta values, deadline headers);
    `service` is the service that answers (a migration's chosen side, else the route's); `decision`
    is the facade's (None without a migration); `deadline` the absolute deadline on the caller's
    clock (None: none); `rate_headers` the `RateLimit` headers to add to the answer;
    `authority` the host[:port] of an absolute-form target, which replaces Host upstream;
    `cohort` the side to carry upstream in `baggage` (`facade.cohort`) and `baggage` whether the
    outgoing `baggage` is rewritten (the request had one, or there is a side to carry).
    """

    __slots__ = ("authority", "baggage", "beta_users", "cohort", "deadline", "decision", "dry_run_denied",
                 "headers", "host", "path", "query", "rate_headers", "route", "service")

    def __init__(self, route: CompiledRoute, service: CompiledService, host: str, path: str, query: bytes,
                 headers: Headers, beta_users: BetaUsers, deadline: float | None,
                 decision: Decision | None, rate_headers: Headers | tuple[()] = (),
                 authority: bytes | None = None) -> None:
        self.route = route
        self.service = service
        self.host = host
        self.path = path
        self.query = query
        self.headers = headers
        self.beta_users = beta_users
        self.deadline = deadline
        self.decision = decision
        self.rate_headers = rate_headers
        self.authority = authority
        # the route's authorization policy in dry_run mode would have refused this request
        self.dry_run_denied = False
        self.cohort: Side | None = None
        self.baggage = False


class Refusal:
    """The answer to a request that goes nowhere: status, Peel code, detail, headers, close.

    `route` is the matched route when the refusal came after matching (a rate limit, a body limit,
    a deadline), so metrics, traces and the access log name it.
    """

    __slots__ = ("close", "code", "detail", "headers", "route", "status")

    def __init__(self, status: int, code: str, detail: str, *, headers: Headers | tuple[()] = (),
                 close: bool = False, route: CompiledRoute | None = None) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers
        self.close = close
        self.route = route

    def __repr__(self) -> str:
        return f"Refusal({self.status}, {self.code!r})"


class Resolver:
    """The resolve step of one listener (or of `/match`): its path rules, beta trust, deadline
    rules and rate limiters. `limiters=None` takes no tokens (what `/match` asks). `trust_domain`
    is this gateway's: inbound peers in it may carry a cohort (None: no peer may).
    `cohort_stripped` counts the requests whose `peel-*` baggage members were stripped."""

    __slots__ = ("_beta", "_deadlines", "_limiters", "_paths", "beta_trust", "cohort_stripped",
                 "trust_domain")

    def __init__(self, *, paths: PathRules = DEFAULT_RULES, beta: BetaTrust | None = None,
                 deadlines: DeadlineRules, limiters: RateLimiters | None = None,
                 trust_domain: str | None = None) -> None:
        self.trust_domain = trust_domain
        self.cohort_stripped = 0
        self._paths = paths
        self.beta_trust = beta if beta is not None else BetaTrust()
        self._beta = TableBetaFilter(self.beta_trust)
        self._deadlines = deadlines
        self._limiters = limiters

    @property
    def beta_filter(self) -> TableBetaFilter:
        """The beta filter of the tables this resolver sees (its `stripped` count)."""
        return self._beta

    @property
    def paths(self) -> PathRules:
        return self._paths

    def prune(self, table: RouteTable) -> None:
        """Forget the rate-limit buckets of routes that `table` no longer limits."""
        if self._limiters is not None:
            self._limiters.prune(_RateLimited(table))

    def resolve(self, table: RouteTable | None, incoming: Incoming, now: float,
                wall: float | None = None) -> Resolution | Refusal:
        """Resolve one request against `table`. `now` is the monotonic clock of deadlines and rate
        limits; `wall` the Unix time for signed beta values (default: now's wall clock)."""
        if table is None:
            return Refusal(503, "no-route-table", "no route table loaded yet")
        if incoming.hosts > 1:
            return Refusal(400, "bad-request", "more than one Host header")
        host_header = incoming.host_header
        host = parse_host(host_header) if host_header is not None else ""
        if host is None:
            return Refusal(400, "bad-host", "the Host header is not a valid host[:port]")
        raw_path = incoming.raw_path
        target = incoming.target
        authority: bytes | None = None
        if target is not None and target[:1] != b"/":
            # Absolute form (or `*`, or authority form): only for hosts that a route names.
            absolute = absolute_target(target)
            if absolute is None or not table.routes_host(absolute[0]):
                return Refusal(400, "not-an-open-proxy", "not an open proxy: the request target "
                               "names a host that no route serves")
            host, raw_path = absolute
            # RFC 9112 §3.2.2: the target's authority replaces the Host header.
            authority = target.split(b"://", 1)[1].split(b"/", 1)[0].split(b"?", 1)[0].rpartition(b"@")[2]
        try:
            path = normalise(raw_path, self._paths)
        except ValueError as exc:
            return Refusal(400, "bad-path", f"the request path is refused: {exc}")
        headers = incoming.headers
        client = incoming.client
        beta_users = NO_USERS
        if table.beta_headers or table.beta_cookies:
            # Beta values steer routing: an untrusted one is gone before matching and forwarding.
            cleaned, beta_users = self._beta.for_table(table).apply(headers, client, wall)
            if cleaned is not None:
                headers = cleaned
        carried: Side | None = None
        baggage = incoming.baggage
        if baggage is None:
            baggage = any(name == BAGGAGE for name, _ in headers)
        if baggage:
            side, ours = carried_side(headers)
            if ours:
                peer = incoming.peer
                if trusted_source(incoming.listener, peer.identity if peer is not None else None,
                                  peer is not None and peer.mtls, self.trust_domain):
                    carried = side
                else:
                    # A cohort is not the client's to pick: gone before matching and forwarding.
                    headers = strip_members(headers)
                    self.cohort_stripped += 1
        method = incoming.method
        query = incoming.query
        route = table.match(method, host, path, query, headers)
        if route is None:
            return Refusal(404, "no-route", "no route matches this request")
        dry_run_denied = False
        peer = incoming.peer
        authz = route.authorization
        if authz is not None:
            if not authz.allows(peer.identity if peer is not None else None):
                if authz.mode == "enforce":
                    return Refusal(403, "forbidden-identity", f"the authorization policy of route "
                                   f"{route.name} does not allow this caller", route=route)
                dry_run_denied = True
        elif peer is not None and peer.strict:
            return Refusal(403, "forbidden-identity", f"route {route.name} has no authorization policy: "
                           "in strict mode the inbound listener serves only routes that name their callers",
                           route=route)
        limit = route.max_body
        length = incoming.length
        if limit is not None and length is not None and length.isdigit() and int(length) > limit:
            # Before anything is read, so an `Expect: 100-continue` client gets no 100 Continue.
            return Refusal(413, "body-too-large", f"this route takes request bodies of at most {limit} "
                           "bytes", close=True, route=route)
        rate_headers: Headers | tuple[()] = ()
        policy = route.rate_limit
        if policy is not None and self._limiters is not None:
            verdict = self._limiters.get(route.name, policy).take(rate_key(policy, headers, client))
            if not verdict.allowed:
                return Refusal(429, "rate-limited", f"this route allows {policy.requests} "
                               f"requests per {policy.per:g} s per client; try again later",
                               headers=verdict.headers, route=route)
            rate_headers = verdict.headers
        deadlines = self._deadlines
        until: float | None = None
        has_deadline = incoming.deadline
        if has_deadline is None:
            names = deadlines.names
            has_deadline = any(name in names for name, _ in headers)
        if has_deadline:
            # The incoming deadline counts from trusted networks, or from a peer gateway of the
            # trust domain (the remaining budget of the caller's hop, docs/east-west.md), only;
            # either way Peel's own (the remaining budget) replaces it upstream.
            try:
                until = deadlines.read(headers, client, now,
                                       trusted=from_gateway(incoming.peer, self.trust_domain))
            except ValueError as exc:
                return Refusal(400, "bad-deadline", f"the deadline header is refused: {exc}", route=route)
            headers = deadlines.strip(headers)
        total = route.timeouts.total
        if total is not None and (until is None or now + total < until):
            until = now + total
        if until is not None and expired(until, now):
            return Refusal(504, "deadline-exceeded", "the request's deadline had passed when it arrived",
                           route=route)
        migration = route.migration
        if migration is None:
            resolution = Resolution(route, route.service, host, path, query, headers, beta_users, until,
                                    None, rate_headers, authority)
            cohort = carried
        else:
            decision = decide_request(migration, headers, client, method, beta_users, carried=carried)
            resolution = Resolution(route, migration.service(decision.side), host, path, query, headers,
                                    beta_users, until, decision, rate_headers, authority)
            cohort = to_carry(decision, migration.spec.policy.split, carried)
        if dry_run_denied:
            resolution.dry_run_denied = True
        if baggage or cohort is not None:
            resolution.cohort = cohort
            resolution.baggage = True
        return resolution


class _RateLimited:
    """The names of `table`'s routes that have a rate limit, as a container: pruning asks about the
    few routes with limiters, not the whole table."""

    __slots__ = ("table",)

    def __init__(self, table: RouteTable) -> None:
        self.table = table

    def __contains__(self, name: object) -> bool:
        route = self.table.route(name) if isinstance(name, str) else None
        return route is not None and route.rate_limit is not None
