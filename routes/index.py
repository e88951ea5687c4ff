"""The route table's index: built whole from a table's routes, or derived from the previous table's.

The index (`routes.table`) is a trie of path segments per host bucket, each node holding the
candidates that end or pass there as `(precedence key, route)` entries sorted by key. The key is
the rank: it orders candidates across buckets, and it is the route's own, so a change to one route
leaves every other entry as it is.

`build_index` builds it whole. `IndexEditor.derive` builds the index of a table that differs from
`previous` by a few routes: it copies the nodes on the paths of the routes that left or arrived (and
the host dicts, shallowly), and shares every other node with `previous`. A one-route change to a
10,000-route table touches a handful of nodes instead of building 10,000. Nodes are never changed
once a table holds them, so the tables can share them.
"""

from __future__ import annotations

from collections.abc import Iterable

from routes.matcher import KIND_RANK
from routes.table import CompiledRoute, Entry, PrecedenceKey, RouteTable, TrieNode

# (exact hosts, wildcard suffixes, routes without hosts): the roots a RouteTable is made with
Index = tuple[dict[str, TrieNode], dict[str, TrieNode], TrieNode]


def precedence_key(route: CompiledRoute, host_pattern: str) -> PrecedenceKey:
    """The sort key of `route` when it matched through `host_pattern` ("" for a route without
    hosts), smaller first (the order is in `routes.compiler`'s docstring)."""
    if not host_pattern:
        host_class, suffix = 2, 0
    elif host_pattern.startswith("*."):
        host_class, suffix = 1, len(host_pattern)
    else:
        host_class, suffix = 0, 0
    path = route.match.path
    return (-route.priority, host_class, -suffix, -path.literals, KIND_RANK[path.kind],
            -len(path.pattern), -route.match.predicate_count, route.name)


def _places(route: CompiledRoute) -> Iterable[str]:
    return route.match.hosts or ("",)


def build_index(routes: Iterable[CompiledRoute]) -> Index:
    """The index of `routes`, built whole."""
    exact: dict[str, TrieNode] = {}
    wildcard: dict[str, TrieNode] = {}
    hostless = TrieNode()
    for route in routes:
        for host in _places(route):
            if not host:
                root = hostless
            elif host.startswith("*."):
                root = wildcard.setdefault(host[2:], TrieNode())
            else:
                root = exact.setdefault(host, TrieNode())
            node = root
            for segment in route.match.path.segments:
                node = node.child(segment)
            bucket = node.end if route.match.path.at_end else node.through
            assert isinstance(bucket, list)
            bucket.append((precedence_key(route, host), route))
    for root in (hostless, *exact.values(), *wildcard.values()):
        root.freeze()
    return exact, wildcard, hostless


class IndexEditor:
    """Copy-on-write edits of a table's index (module docstring)."""

    __slots__ = ("_made", "exact", "hostless", "wildcard")

    def __init__(self, exact: dict[str, TrieNode], wildcard: dict[str, TrieNode],
                 hostless: TrieNode) -> None:
        self.exact = exact.copy()  # (dict.copy: one block, see RouteIndex.changed)
        self.wildcard = wildcard.copy()
        self.hostless = hostless
        self._made: set[int] = set()  # nodes this editor made: changed in place, not copied again

    @classmethod
    def derive(cls, previous: RouteTable, removed: Iterable[CompiledRoute],
               added: Iterable[CompiledRoute]) -> Index | None:
        """The index of `previous`'s routes less `removed`, plus `added`; None when a removed
        route is not where the previous index should hold it (the caller then builds whole)."""
        exact, wildcard, hostless = previous.index()
        editor = cls(exact, wildcard, hostless)
        for route in removed:
            for host in _places(route):
                if not editor._remove(host, route):
                    return None
        for route in added:
            for host in _places(route):
                editor._add(host, route)
        return editor.exact, editor.wildcard, editor.hostless

    def _own(self, node: TrieNode) -> TrieNode:
        if id(node) in self._made:
            return node
        copy = TrieNode()
        copy.children = node.children.copy()
        copy.param = node.param
        copy.through = node.through
        copy.end = node.end
        self._made.add(id(copy))
        return copy

    def _new(self) -> TrieNode:
        node = TrieNode()
        node.through = node.end = ()
        self._made.add(id(node))
        return node

    def _path(self, host: str, route: CompiledRoute, create: bool) -> list[TrieNode] | None:
        """The nodes from the host's root to where `route` hangs, each one this editor's own (the
        root stored in the host dict); None when `create` is false and the path is not there."""
        if not host:
            self.hostless = root = self._own(self.hostless)
        else:
            roots, name = (self.wildcard, host[2:]) if host.startswith("*.") else (self.exact, host)
            found = roots.get(name)
            if found is None:
                if not create:
                    return None
                found = self._new()
            roots[name] = root = self._own(found)
        path = [root]
        node = root
        for segment in route.match.path.segments:
            child = node.param if segment is None else node.children.get(segment)
            if child is None:
                if not create:
                    return None
                child = self._new()
            else:
                child = self._own(child)
            if segment is None:
                node.param = child
            else:
                node.children[segment] = child
            path.append(child)
            node = child
        return path

    def _add(self, host: str, route: CompiledRoute) -> None:
        path = self._path(host, route, create=True)
        assert path is not None
        node = path[-1]
        entry: Entry = (precedence_key(route, host), route)
        if route.match.path.at_end:
            node.end = tuple(sorted((*node.end, entry), key=_key))
        else:
            node.through = tuple(sorted((*node.through, entry), key=_key))

    def _remove(self, host: str, route: CompiledRoute) -> bool:
        path = self._path(host, route, create=False)
        if path is None:
            return False
        node = path[-1]
        bucket = node.end if route.match.path.at_end else node.through
        kept = tuple(entry for entry in bucket if entry[1] is not route)
        if len(kept) == len(bucket):
            return False
        if route.match.path.at_end:
            node.end = kept
        else:
            node.through = kept
        # Drop the nodes left empty, from the leaf up; a host whose root is left empty is no
        # longer routed (`RouteTable.routes_host`).
        segments = route.match.path.segments
        for depth in range(len(path) - 1, 0, -1):
            if not _bare(path[depth]):
                return True
            parent, segment = path[depth - 1], segments[depth - 1]
            if segment is None:
                parent.param = None
            else:
                del parent.children[segment]
        root = path[0]
        if host and _bare(root):
            if host.startswith("*."):
                del self.wildcard[host[2:]]
            else:
                del self.exact[host]
        return True


def _bare(node: TrieNode) -> bool:
    """Whether `node` holds no entry and leads nowhere."""
    return not (node.through or node.end or node.children or node.param is not None)


def _key(entry: Entry) -> PrecedenceKey:
    return entry[0]
