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

A route read from a store written before Peel ran regexes on RE2 may hold a pattern RE2 refuses
(`Route.refused_regex`). Nothing runs that pattern: `unservable_match` stands in a pattern RE2 runs
that accepts every request the stored one could (a superset), the route keeps its place in the
precedence order, and its service is an empty stand-in, so the route's requests get 503 instead of
silently reaching another route (the monolith's catch-all, say) while the rest of the table serves.
Each such route is logged with its field and the fix.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from operator import attrgetter
from typing import NamedTuple, cast

from routes.errors import RuleError
from routes.index import Index, IndexEditor, build_index
from routes.index import precedence_key as precedence_key
from routes.matcher import CompiledMatch, regex_literal_segments
from routes.migration import CompiledMigration
from routes.model import KEEP, NO_REWRITE, Document, FieldMatch, Match, Route, edit_by_name
from routes.regex import Regex, RegexError
from routes.registry import Registration, compiled_services
from routes.revocations import Revocations
from routes.rewrite import compile_header_rules, compile_path_rewrite
from routes.steps import Steps, missing, run
from routes.table import CompiledRoute, CompiledService, RouteTable

log = logging.getLogger("peel.routes")

_SPEC = attrgetter("spec")
# Routes compiled between two steps of `compile_steps` (a few milliseconds here)
COMPILED_PER_STEP = 100


def compile_document(document: Document, version: int,
                     registered: Sequence[Registration] = (), *,
                     previous: RouteTable | None = None) -> RouteTable:
    """Compile a validated document (`compile_steps`, all at once)."""
    return run(compile_steps(document, version, registered, previous=previous))


def compile_steps(document: Document, version: int, registered: Sequence[Registration] = (), *,
                  previous: RouteTable | None = None) -> Steps[RouteTable]:
    """Compile a validated document, with the service registry's endpoints (`routes.registry`).
    Raises `RuleError` for a route the table cannot hold.

    With `previous` (a table compiled before), a service whose spec and endpoints are unchanged, and
    a route whose spec is the same object (`ParseMemo` and `DocumentCodec` keep unchanged routes
    the same objects) with unchanged services, are taken from it as they are: compiled objects are
    immutable, so the tables share them, and a one-route change to a large table compiles one
    route. When few routes changed the index is derived from the previous one too
    (`routes.index.IndexEditor`: the trie nodes on the changed routes' paths are copied, every
    other node is shared); else it is built whole. It yields between its parts (`routes.steps`),
    each a few milliseconds on a 10,000-route table, and every `COMPILED_PER_STEP` routes compiled.
    """
    services = compiled_services(document.services, registered)
    stale: set[str] = set()
    reuse: dict[int, CompiledRoute] = {}
    if previous is not None:
        for name, fresh in services.items():
            old = previous.services.get(name)
            if old is not None and old.spec is fresh.spec and old.endpoints == fresh.endpoints:
                services[name] = old
            else:
                stale.add(name)
        stale.update(previous.services.keys() - services.keys())
        # (map, zip and set operations: a 10,000-route table is walked in C, not in bytecode)
        reuse = dict(zip(map(id, map(_SPEC, previous.routes)), previous.routes, strict=True))
        yield
    # Unchanged routes whose services are unchanged: the previous table's, as they are.
    found: list[CompiledRoute | None] = list(map(reuse.get, map(id, document.routes)))
    if stale:
        found = [None if r is None or r.service.name in stale or (
            r.migration is not None and r.migration.to_service.name in stale) else r for r in found]
    yield
    added: list[CompiledRoute] = []
    for i in missing(found):
        found[i] = compiled = _compile(document.routes[i], services)
        added.append(compiled)
        if len(added) % COMPILED_PER_STEP == 0:
            yield
    routes = cast("list[CompiledRoute]", found)
    removed: list[CompiledRoute] | None = None
    if previous is not None and _derives(added, routes):
        before = dict(zip(map(id, previous.routes), previous.routes, strict=True))
        yield
        removed = [before[gone] for gone in before.keys() - set(map(id, routes))]
        yield
    index, derived = _index(routes, previous, removed, added)
    yield
    return _table(document, version, routes, services, tuple(registered), index, derived)


def _derives(added: list[CompiledRoute], routes: list[CompiledRoute]) -> bool:
    """Few enough routes changed for the index to be derived from the previous table's."""
    return len(added) <= max(16, len(routes) // 8)


class _Derived(NamedTuple):
    """What a table derived from the previous one takes from it besides the index."""

    named: dict[str, CompiledRoute]  # the routes by name (`RouteTable.named_after`)
    beta: tuple[frozenset[bytes], frozenset[str]] | None  # `RouteTable.beta_after`


def _index(routes: list[CompiledRoute], previous: RouteTable | None,
           removed: list[CompiledRoute] | None,
           added: list[CompiledRoute]) -> tuple[Index, _Derived | None]:
    """The index of `routes`, and their dict by name and beta names: derived from `previous` less
    `removed` plus `added` (`removed` None: the index built whole, the rest left to the table)."""
    index: Index | None = None
    derived = None
    if previous is not None and removed is not None:
        index = IndexEditor.derive(previous, removed, added)
        derived = _Derived(previous.named_after(removed, added), previous.beta_after(removed, added))
    return (index if index is not None else build_index(routes)), derived


def _table(document: Document, version: int, routes: list[CompiledRoute],
           services: dict[str, CompiledService], registered: tuple[Registration, ...], index: Index,
           derived: _Derived | None) -> RouteTable:
    """The table of `routes` with this index."""
    exact, wildcard, hostless = index
    return RouteTable(version, tuple(routes), services, exact, wildcard, hostless,
                      revocations=Revocations(document.revocations),
                      inbound_mtls=document.mesh.inbound_mtls if document.mesh is not None else None,
                      registered=registered, named=derived.named if derived is not None else None,
                      beta=derived.beta if derived is not None else None)


def compile_delta_steps(previous: RouteTable, document: Document, version: int) -> Steps[RouteTable]:
    """The table of `document` from `previous`, the table of its delta's base, compiling only the
    routes the delta names (the services must be the base's: a delta of routes alone).

    What `compile_steps` gives with `previous`, without its passes over every route: the routes are
    `previous`'s with the changed ones replaced in place (by bisection on the names, the order of
    both), the index is derived from `previous`'s.
    """
    delta = document.delta
    assert delta is not None and not delta.services
    services = dict(previous.services)
    routes = list(previous.routes)
    removed: list[CompiledRoute] = []
    added: list[CompiledRoute] = []

    def compiled(name: str, old: CompiledRoute | None) -> CompiledRoute | None:
        spec = document.route(name)
        if old is not None:
            if old.spec is spec:
                return KEEP  # type: ignore[no-any-return]
            removed.append(old)
        if spec is None:
            return None
        added.append(new := _compile(spec, services))
        return new

    edit_by_name(previous.routes, delta.routes, routes, compiled)
    if len(routes) != len(document.routes):
        raise AssertionError("a delta that does not match its base's table")  # pragma: no cover
    yield
    index, derived = _index(routes, previous, removed if _derives(added, routes) else None, added)
    yield
    return _table(document, version, routes, services, previous.registered, index, derived)


def _compile(spec: Route, services: dict[str, CompiledService]) -> CompiledRoute:
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
    if spec.refused_regex:
        return _unservable(spec)
    return CompiledRoute(spec, service, CompiledMatch(spec.match),
                         compile_path_rewrite(spec.match, spec.rewrite),
                         compile_header_rules(spec.rewrite.request_headers),
                         compile_header_rules(spec.rewrite.response_headers), migration)


def _runs(pattern: str) -> bool:
    try:
        Regex(pattern)
    except RegexError:
        return False
    return True


def unservable_match(match: Match) -> Match:
    """`match` with each pattern RE2 refuses replaced by one RE2 runs that accepts a superset.

    A path regex becomes the whole literal segments every match of it starts with
    (`^/orders/(?=\\d)` gives `^/orders/`; nothing known gives `^/`); a header, query or cookie
    regex becomes `present`, since a regex never matches an absent name. The rest is kept.
    """
    path_regex = match.path_regex
    if path_regex is not None and not _runs(path_regex):
        segments = regex_literal_segments(path_regex)
        path_regex = "^/" + "".join(re.escape(s) + "/" for s in segments)

    def fields(items: tuple[FieldMatch, ...]) -> tuple[FieldMatch, ...]:
        return tuple(FieldMatch(p.name, present=True) if p.regex is not None and not _runs(p.regex)
                     else p for p in items)

    return replace(match, path_regex=path_regex, headers=fields(match.headers),
                   query=fields(match.query), cookies=fields(match.cookies))


def _unservable(spec: Route) -> CompiledRoute:
    """The compiled form of a route whose stored regex RE2 refuses: matched, never forwarded."""
    for refusal in spec.refused_regex:
        log.warning("%s", refusal.warning())
    match = CompiledMatch(unservable_match(spec.match))
    if spec.match.path_regex is not None:
        # Rank it as the stored route was ranked (the stand-in has the same literal segments).
        match.path.pattern = spec.match.path_regex
    # An empty stand-in service, outside the table's services: no endpoint, so the data plane
    # answers 503 (no-endpoint) without dialing anything, and no health check or pool follows it.
    nowhere = CompiledService(f"unservable route {spec.name}", ())
    return CompiledRoute(spec, nowhere, match, compile_path_rewrite(spec.match, NO_REWRITE),
                         compile_header_rules(spec.rewrite.request_headers),
                         compile_header_rules(spec.rewrite.response_headers), None)


class IncrementalCompiler:
    """`compile_document` that passes the table it compiled last as `previous` (see there). Safe
    from several threads: the last table is a plain reference, read and replaced whole, and reuse
    goes by identity of immutable objects, so a table compiled for another purpose (the admin API's
    check of a change) is as good a `previous` as the live one."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        # the table compiled last and the document it was compiled from: one reference, so that
        # threads replacing it never leave a table paired with another document
        self._last: tuple[RouteTable, Document] | None = None

    @property
    def last(self) -> RouteTable | None:
        return self._last[0] if self._last is not None else None

    def __call__(self, document: Document, version: int,
                 registered: Sequence[Registration] = ()) -> RouteTable:
        return run(self.steps(document, version, registered))

    def steps(self, document: Document, version: int,
              registered: Sequence[Registration] = ()) -> Steps[RouteTable]:
        last = self._last
        delta = document.delta
        if last is not None and last[1] is document and last[0].registered == tuple(registered):
            # compiled already (in a single process: the admin API's check of this very change)
            table = last[0] if last[0].version == version else last[0].renumbered(version)
        elif last is not None and delta is not None and delta.base is last[1] and not delta.services \
                and last[0].registered == tuple(registered):
            # an edit of the document compiled last (the admin API's check of a change)
            table = yield from compile_delta_steps(last[0], document, version)
        else:
            table = yield from compile_steps(document, version, registered,
                                             previous=last[0] if last is not None else None)
        self._last = (table, document)
        return table


# The process's one: the watcher and the admin API's check of a change both compile with it, so in
# a single process the check's table and the live one share their compiled routes.
compile_incrementally = IncrementalCompiler()
