"""`Document` → `RouteTable`: compile every route once, rank them, and build the index.

Precedence (docs/ARCHITECTURE.md), as the sort key `precedence_key` computes it for one route on
one of its hosts, smaller first:

1. higher `priority`;
2. host: an exact host beats a `*.suffix` (the longer suffix first), which beats no hosts;
3. path: more literal segments first (non-empty segments of an exact path, a prefix, a template's
   non-parameter segments, and the whole segments an anchored regex starts with, such as `orders`
   in `^/orders/\\d+$`); on a tie exact > template > prefix > regex > no path, then the longer
   pattern;
4. more predicates first (a method list counts once, each header, query or cookie predicate once);
5. the route name, alphabetically.

A route with several hosts gets one entry per host, each ranked with that host, so a request is
judged by the most specific host of the route that it matches.
"""

from __future__ import annotations

from routes.errors import RuleError
from routes.matcher import KIND_RANK, CompiledMatch
from routes.migration import CompiledMigration
from routes.model import Document
from routes.rewrite import compile_header_rules, compile_path_rewrite
from routes.table import CompiledRoute, CompiledService, Entry, RouteTable, TrieNode

PrecedenceKey = tuple[int, int, int, int, int, int, int, str]


def precedence_key(route: CompiledRoute, host_pattern: str) -> PrecedenceKey:
    """The sort key of `route` when it matched through `host_pattern` ("" for a route without hosts)."""
    if not host_pattern:
        host_class, suffix = 2, 0
    elif host_pattern.startswith("*."):
        host_class, suffix = 1, len(host_pattern)
    else:
        host_class, suffix = 0, 0
    path = route.match.path
    return (-route.priority, host_class, -suffix, -path.literals, KIND_RANK[path.kind],
            -len(path.pattern), -route.match.predicate_count, route.name)


def compile_document(document: Document, version: int) -> RouteTable:
    """Compile a validated document. Raises `RuleError` for a route the table cannot hold."""
    services = {s.name: CompiledService(s.name, s.endpoints, s) for s in document.services}
    routes: list[CompiledRoute] = []
    for spec in document.routes:
        service = services.get(spec.service)
        if service is None:
            raise RuleError(f"routes[{spec.name}].service", "names no service", spec.service)
        migration = None
        if spec.migration is not None:
            to = services.get(spec.migration.to)
            if to is None:
                raise RuleError(f"routes[{spec.name}].migration.to", "names no service",
                                spec.migration.to)
            migration = CompiledMigration(spec.migration, spec.name, service, to)
        routes.append(CompiledRoute(spec, service, CompiledMatch(spec.match),
                                    compile_path_rewrite(spec.match, spec.rewrite),
                                    compile_header_rules(spec.rewrite.request_headers),
                                    compile_header_rules(spec.rewrite.response_headers), migration))

    placed = [(precedence_key(route, host), host, route)
              for route in routes for host in (route.match.hosts or ("",))]
    placed.sort(key=lambda item: item[0])

    exact: dict[str, TrieNode] = {}
    wildcard: dict[str, TrieNode] = {}
    hostless = TrieNode()
    for rank, (_, host, route) in enumerate(placed):
        if not host:
            root = hostless
        elif host.startswith("*."):
            root = wildcard.setdefault(host[2:], TrieNode())
        else:
            root = exact.setdefault(host, TrieNode())
        node = root
        for segment in route.match.path.segments:
            node = node.child(segment)
        entry: Entry = (rank, route)
        bucket = node.end if route.match.path.at_end else node.through
        assert isinstance(bucket, list)
        bucket.append(entry)
    for root in (hostless, *exact.values(), *wildcard.values()):
        root.freeze()
    return RouteTable(version, tuple(routes), services, exact, wildcard, hostless)
