"""The route table: compiled routes and services of one config version, and the index that finds them.

A table is built by `routes.compiler.compile_document` and never changes afterwards; the data plane
reads `holder.table` once per request and calls `table.match(...)`.

The index. Routes are bucketed by host: an exact-host dict, a dict of wildcard suffixes (a request
host is looked up by its shorter label suffixes: `a.b.example.com` may try `b.example.com`,
`example.com` and `com`, but only the lengths some wildcard has)
and one bucket for routes without hosts. Each bucket is a trie of path segments (a dict of literal
children and at most one `{param}` child). Exact and template routes hang on the node where their
path ends; prefix routes, anchored regex routes (on their literal segments) and routes without a
path hang on the node where they start to accept. A lookup walks the trie along the request's
segments collecting those candidates, orders them by their precedence key and returns
the first whose remaining predicates hold. The work is proportional to the path's depth and the
handful of candidates on it, not to the number of routes.
"""

from __future__ import annotations

from collections.abc import Iterable, KeysView, Mapping
from functools import partial
from operator import attrgetter, is_not
from types import MappingProxyType
from typing import TYPE_CHECKING

from routes.matcher import CompiledMatch, FieldChecks, Headers, RequestFacts
from routes.migration import CompiledMigration
from routes.model import Endpoint, Route, Service
from routes.policies import (
    Authorization,
    Balancer,
    Buffering,
    CircuitBreaker,
    HealthCheck,
    OutlierDetection,
    RateLimit,
    RetryPolicy,
    ServiceTls,
    Timeouts,
)
from routes.regex import Regex
from routes.revocations import NO_REVOCATIONS, Revocations
from routes.rewrite import HeaderEdit, PathRewrite

if TYPE_CHECKING:
    from routes.registry import Registration

# A route's precedence key on one of its hosts (`routes.index.precedence_key`): smaller wins. It
# ends with the route's name, so no two routes share one.
PrecedenceKey = tuple[int, int, int, int, int, int, int, str]
# A candidate: (precedence key, route). Keys are unique, so sorting a list of candidates never
# compares routes; and a key is the route's own, so a table derived from another by a few changed
# routes (`routes.index`) keeps every other entry as it is.
Entry = tuple[PrecedenceKey, "CompiledRoute"]


_NAME = attrgetter("name")
_MIGRATION = attrgetter("migration")
_IS_SOME = partial(is_not, None)
_NO_BETA: tuple[frozenset[bytes], frozenset[str]] = (frozenset(), frozenset())


def _beta_names(routes: Iterable[CompiledRoute]) -> tuple[frozenset[bytes], frozenset[str]]:
    """The beta headers (lower-case) and cookies that the migrations of `routes` name (the
    migrations picked out in C: most routes have none)."""
    sources = [m.beta_source for m in filter(_IS_SOME, map(_MIGRATION, routes))
               if m.beta_source is not None]
    if not sources:
        return _NO_BETA
    return (frozenset(n for _, n in sources if isinstance(n, bytes)),
            frozenset(n for _, n in sources if isinstance(n, str)))


class _Frozen:
    """Refuses attribute assignment after construction: a live table is shared by every request."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; compile a new table instead")

    def _init(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)


class CompiledService:
    """A service of the route table: its name, its endpoints, its policies, and a plain
    round-robin `pick()` for callers without the live endpoint state (`gateway.upstream.balancer`).

    `spec` is the stored `routes.model.Service` (built from `name` and `endpoints` when not given);
    `balancer`, `health_check`, `outlier` and `circuit_breaker` are its policies, copied flat so the
    request path reads each with one attribute access; `tls` is its upstream TLS (also on each
    endpoint, where the dialer reads it).
    """

    __slots__ = ("balancer", "circuit_breaker", "endpoints", "health_check", "name",
                 "outlier", "spec", "tls")
    spec: Service
    balancer: Balancer
    health_check: HealthCheck | None
    outlier: OutlierDetection | None
    circuit_breaker: CircuitBreaker
    tls: ServiceTls | None

    def __init__(self, name: str, endpoints: tuple[Endpoint, ...], spec: Service | None = None) -> None:
        self.name = name
        self.endpoints = endpoints
        self.spec = spec if spec is not None else Service(name, endpoints)
        self.tls = self.spec.tls
        self.balancer = self.spec.balancer
        self.health_check = self.spec.health_check
        self.outlier = self.spec.outlier
        self.circuit_breaker = self.spec.circuit_breaker

    def __repr__(self) -> str:
        return f"CompiledService({self.name!r}, {len(self.endpoints)} endpoints)"


class CompiledRoute(_Frozen):
    """A route ready for the request path.

    `spec` is the stored `routes.model.Route`. The hot attributes (`methods`, `path_regex`,
    `fields`) are copied flat out of `match` so that a lookup reads them with one attribute access.
    `retries`, `timeouts` and `buffering` are the effective policies: the route's block, else its
    service's; with a migration they apply to both sides. `buffering` is None when it is off.
    """

    __slots__ = ("authorization", "buffering", "fields", "match", "max_body", "methods", "migration", "name",
                 "path_regex", "priority", "rate_limit", "request_headers", "response_headers", "retries",
                 "rewrite_path", "service", "spec", "timeouts", "upstream_host", "websocket")
    spec: Route
    name: str
    priority: int
    service: CompiledService
    match: CompiledMatch
    methods: frozenset[str] | None
    path_regex: Regex | None
    fields: FieldChecks | None
    rewrite_path: PathRewrite
    upstream_host: str | None
    request_headers: HeaderEdit
    response_headers: HeaderEdit
    # None for a route without a migration; `service` is then the only side
    migration: CompiledMigration | None
    # the route's request body cap in bytes; None: only the listener's `limits.max_body`
    max_body: int | None
    retries: RetryPolicy
    timeouts: Timeouts
    # None: no rate limit on this route
    rate_limit: RateLimit | None
    # who may call it by identity (docs/mtls.md); None: no policy
    authorization: Authorization | None
    # the route accepts WebSocket upgrades
    websocket: bool
    # request and response buffering (the route's, else the service's); None: off (streaming)
    buffering: Buffering | None

    def __init__(self, spec: Route, service: CompiledService, match: CompiledMatch,
                 rewrite_path: PathRewrite, request_headers: HeaderEdit,
                 response_headers: HeaderEdit, migration: CompiledMigration | None = None) -> None:
        self._init(spec=spec, name=spec.name, priority=spec.priority, service=service, match=match,
                   methods=match.methods, path_regex=match.path.regex, fields=match.fields,
                   rewrite_path=rewrite_path, upstream_host=spec.rewrite.host,
                   request_headers=request_headers, response_headers=response_headers,
                   migration=migration, max_body=spec.max_body,
                   retries=spec.retries if spec.retries is not None else service.spec.retries,
                   timeouts=spec.timeouts if spec.timeouts is not None else service.spec.timeouts,
                   rate_limit=spec.rate_limit, authorization=spec.authorization,
                   websocket=spec.websocket,
                   buffering=_effective(spec.buffering if spec.buffering is not None
                                        else service.spec.buffering))

    def params(self, path: str) -> dict[str, str]:
        """The `{param}` values of a template route for a path it matched."""
        return self.match.path.params(path)

    def __repr__(self) -> str:
        return f"CompiledRoute({self.name!r} -> {self.service.name!r})"


def _effective(buffering: Buffering) -> Buffering | None:
    return buffering if buffering.enabled else None


class TrieNode:
    """One path segment of a bucket's trie.

    `through` holds candidates that accept any path reaching this node (prefix, anchored regex,
    no path); `end` holds those that need the path to end here (exact, template). Both are sorted by
    rank. Nodes are filled by the compiler and frozen (lists turned into tuples) before use.
    """

    __slots__ = ("children", "end", "param", "through")

    def __init__(self) -> None:
        self.children: dict[str, TrieNode] = {}
        self.param: TrieNode | None = None
        self.through: tuple[Entry, ...] | list[Entry] = []
        self.end: tuple[Entry, ...] | list[Entry] = []

    def child(self, segment: str | None) -> TrieNode:
        if segment is None:
            if self.param is None:
                self.param = TrieNode()
            return self.param
        node = self.children.get(segment)
        if node is None:
            node = self.children[segment] = TrieNode()
        return node

    def freeze(self) -> None:
        self.through = tuple(sorted(self.through, key=_rank))
        self.end = tuple(sorted(self.end, key=_rank))
        if not self.children:
            # A leaf (most nodes: one per route) shares one empty dict: 64 bytes a route. Nodes
            # are never changed once frozen: `routes.index` edits copies.
            self.children = LEAF
        for node in self.children.values():
            node.freeze()
        if self.param is not None:
            self.param.freeze()


# the children of every frozen leaf: always empty
LEAF: dict[str, TrieNode] = {}


def _rank(entry: Entry) -> PrecedenceKey:
    return entry[0]


def _walk(node: TrieNode, segments: list[str], i: int, out: list[Entry]) -> None:
    """Collect the candidates along `segments[i:]` below `node` (recursing only into `{param}`s)."""
    n = len(segments)
    while True:
        if node.through:
            out.extend(node.through)
        if i == n:
            if node.end:
                out.extend(node.end)
            return
        segment = segments[i]
        i += 1
        param = node.param
        if param is not None and segment:
            _walk(param, segments, i, out)
        child = node.children.get(segment)
        if child is None:
            return
        node = child


class RouteTable(_Frozen):
    """The immutable compiled form of all routes of one config version.

    `match(method, host, path, query, headers)` takes the method, the host lower-case without port,
    the normalised path, the raw query string (bytes, without `?`) and the ASGI header list, and
    returns the winning `CompiledRoute` or None.
    """

    __slots__ = ("_exact", "_hostless", "_named", "_wildcard", "_wildcard_labels", "beta_cookies",
                 "beta_headers", "inbound_mtls", "registered", "revocations", "routes", "services",
                 "version")
    version: int
    routes: tuple[CompiledRoute, ...]
    services: Mapping[str, CompiledService]
    _exact: Mapping[str, TrieNode]
    _wildcard: Mapping[str, TrieNode]
    _wildcard_labels: tuple[int, ...]
    _hostless: TrieNode
    _named: dict[str, CompiledRoute]  # the routes by name
    # the beta headers (lower-case) and cookies that some migration names: stripped from
    # untrusted downstreams before matching
    beta_headers: frozenset[bytes]
    beta_cookies: frozenset[str]
    # the fleet's revoked certificates and the document's inbound listener mode (None: the
    # settings'), for the inbound listener and the mTLS dialer (routes.revocations)
    revocations: Revocations
    inbound_mtls: str | None
    # the service registry's endpoints compiled into `services` (routes.registry), so that a table
    # derived from this one (the outbound listener's) keeps them
    registered: tuple[Registration, ...]

    def __init__(self, version: int, routes: tuple[CompiledRoute, ...],
                 services: Mapping[str, CompiledService], exact: dict[str, TrieNode],
                 wildcard: dict[str, TrieNode], hostless: TrieNode, *,
                 revocations: Revocations = NO_REVOCATIONS, inbound_mtls: str | None = None,
                 registered: tuple[Registration, ...] = (),
                 named: dict[str, CompiledRoute] | None = None,
                 beta: tuple[frozenset[bytes], frozenset[str]] | None = None) -> None:
        """`named` and `beta`: the routes by name and the beta names when the caller has them
        (derived from the previous table's: `named_after`, `beta_after`)."""
        if beta is None:
            beta = _beta_names(routes)
        # The index dicts stay plain dicts (private, never handed out): a MappingProxyType would add
        # an indirection to every lookup on the hot path.
        self._init(version=version, routes=routes, services=MappingProxyType(dict(services)),
                   _exact=exact, _wildcard=wildcard, _hostless=hostless,
                   _named=named if named is not None else dict(zip(map(_NAME, routes), routes, strict=True)),
                   _wildcard_labels=tuple(sorted({s.count(".") + 1 for s in wildcard}, reverse=True)),
                   beta_headers=beta[0], beta_cookies=beta[1],
                   revocations=revocations, inbound_mtls=inbound_mtls, registered=registered)

    def renumbered(self, version: int) -> RouteTable:
        """This table as config version `version`: the same document compiled again."""
        copy = object.__new__(RouteTable)
        copy._init(**{name: getattr(self, name) for name in RouteTable.__slots__})
        object.__setattr__(copy, "version", version)
        return copy

    def _wildcard_roots(self, host: str) -> list[TrieNode]:
        """The wildcard buckets whose suffix `host` ends with (after at least one more label)."""
        roots: list[TrieNode] = []
        dots = host.count(".")
        for labels in self._wildcard_labels:
            if labels <= dots:
                # The last `labels` labels; something must be left in front of them.
                suffix = host.split(".", dots + 1 - labels)[-1]
                root = self._wildcard.get(suffix)
                if root is not None and len(host) > len(suffix) + 1:
                    roots.append(root)
        return roots

    def candidates(self, host: str, path: str) -> list[Entry]:
        """Every route the index places on this host and path, best first (not yet filtered)."""
        segments = path[1:].split("/")
        out: list[Entry] = []
        root = self._exact.get(host)
        if root is not None:
            _walk(root, segments, 0, out)
        if self._wildcard_labels:
            for root in self._wildcard_roots(host):
                _walk(root, segments, 0, out)
        _walk(self._hostless, segments, 0, out)
        if len(out) > 1:
            out.sort()
        return out

    def match(self, method: str, host: str, path: str, query: bytes,
              headers: Headers) -> CompiledRoute | None:
        facts: RequestFacts | None = None
        for _, route in self.candidates(host, path):
            methods = route.methods
            if methods is not None and method not in methods:
                continue
            regex = route.path_regex
            if regex is not None and not regex.found(path):
                continue
            fields = route.fields
            if fields is not None:
                if facts is None:
                    facts = RequestFacts(query, headers)
                if not fields.accepts(facts):
                    continue
            return route
        return None

    def match_with_params(self, method: str, host: str, path: str, query: bytes,
                          headers: Headers) -> tuple[CompiledRoute, dict[str, str]] | None:
        """`match`, plus the `{param}` values a template route captured."""
        route = self.match(method, host, path, query, headers)
        return None if route is None else (route, route.params(path))

    def index(self) -> tuple[dict[str, TrieNode], dict[str, TrieNode], TrieNode]:
        """The index's roots (exact hosts, wildcard suffixes, no host), for `routes.index` to derive
        the next table's from; never to be changed."""
        return self._exact, self._wildcard, self._hostless  # type: ignore[return-value]

    def routes_host(self, host: str) -> bool:
        """Whether some route names this host, exactly or by a `*.suffix` (absolute-form targets)."""
        if host in self._exact:
            return True
        return bool(self._wildcard_labels) and bool(self._wildcard_roots(host))

    def route(self, name: str) -> CompiledRoute | None:
        return self._named.get(name)

    def named_after(self, removed: Iterable[CompiledRoute],
                    added: Iterable[CompiledRoute]) -> dict[str, CompiledRoute]:
        """The routes by name of a table with this one's routes less `removed`, plus `added`:
        a copy of this table's and the changes, not a pass over every route."""
        named = self._named.copy()
        for route in removed:
            if named.get(route.name) is route:
                del named[route.name]
        for route in added:
            named[route.name] = route
        return named

    def beta_after(self, removed: Iterable[CompiledRoute], added: Iterable[CompiledRoute]
                   ) -> tuple[frozenset[bytes], frozenset[str]] | None:
        """The beta names of a table with this one's routes less `removed`, plus `added`, without a
        pass over every route (0.4 ms on 10,000); None when a removed route named one (another
        route may name it too: the table then looks at every route)."""
        if _beta_names(removed) != _NO_BETA:
            return None
        headers, cookies = _beta_names(added)
        return self.beta_headers | headers, self.beta_cookies | cookies

    def names(self) -> KeysView[str]:
        """The names of the routes (a set view: membership is one dict lookup)."""
        return self._named.keys()

    def __repr__(self) -> str:
        return f"RouteTable(version={self.version}, {len(self.routes)} routes)"
