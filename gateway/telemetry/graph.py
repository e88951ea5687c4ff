"""The dependency graph: who calls which service, as every gateway sees it on every request.

    edges = EdgeCounts(local="spiffe://peel.internal/svc/orders")   # one per serving process
    edges.record("inbound", source, "payments", status, error, duration)   # at the end of a request
    flusher = GraphFlusher(store, edges, instance=instance_id())     # adds the deltas to the store
    summary = summarise(rows, now=, window=, declared=)              # the admin's `GET /api/v1/graph`

An edge is (listener, source, destination): the listener that observed it (`public`, `inbound`,
`outbound`), the caller (`external` on the public listener; the peer's identity, else its address,
on the inbound listener; this gateway's own identity on the outbound listener, whose callers are
the apps of its VM) and the service that answered. Each keeps requests, errors (a 5xx, or no
answer at all: an upstream failure) and a latency histogram on `gateway.telemetry.metrics.BUCKETS`.

Bounded: at most `max_edges` edges per process between flushes; past that, requests count under
source `other` (the destination kept for as many `other` rows again, then `other` too), so a scan
of addresses cannot grow the table. Recording is a dict lookup and a few additions on the event loop's
thread; `take()` swaps the dict in one step, like the traffic counts (`facade.counts`).

A call between two sidecars is seen twice, by the caller's outbound listener and by the callee's
inbound listener; `summarise` keeps the caller's view of such a pair (it also sees the calls that
never reached the peer) and says which listeners saw the edge.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from facade.flusher import Flusher
from gateway.telemetry.metrics import BUCKETS
from routes.errors import StoreError

log: Final = logging.getLogger("peel.graph")

MAX_EDGES: Final = 1000
MAX_SOURCE: Final = 255  # longer names (a SPIFFE ID may have 2048 bytes) count as `other`
OTHER: Final = "other"
EXTERNAL: Final = "external"
LISTENERS: Final = ("outbound", "inbound", "public")  # the order a pair's observations are preferred in
# (listener, source, destination) -> [requests, errors, bucket 0 .. bucket n-1, +Inf]
Key = tuple[str, str, str]
Deltas = Mapping[Key, Sequence[int]]


class EdgeCounts:
    """One serving process's edges since the last `take()` (see the module docstring).

    `local` names this gateway's own identity: the source of requests on its outbound listener.
    """

    __slots__ = ("_edges", "buckets", "local", "max_edges", "overflow")

    def __init__(self, *, local: str | None = None, max_edges: int = MAX_EDGES,
                 buckets: tuple[float, ...] = BUCKETS) -> None:
        self.local = local or "local"
        self.max_edges = max_edges
        self.buckets = buckets
        self.overflow = 0  # requests counted under `other` because the table was full
        self._edges: dict[Key, list[int]] = {}

    def source(self, listener: str, peer_source: str | None) -> str:
        """The caller as the graph names it, for a request on `listener`."""
        if listener == "outbound":
            return self.local
        if listener == "inbound":
            return peer_source or OTHER
        return EXTERNAL

    def record(self, listener: str, source: str, destination: str, status: int, failed: bool,
               duration: float) -> None:
        """One request from `source` answered by `destination` (`failed`: no answer came)."""
        key = (listener, source if len(source) <= MAX_SOURCE else OTHER, destination)
        edges = self._edges
        row = edges.get(key)
        if row is None:
            if len(edges) >= self.max_edges:
                # Full: the caller becomes `other`; its destination is kept while the `other` rows
                # fit in as many again (destinations come from the config, callers from anyone).
                self.overflow += 1
                key = (listener, OTHER, destination)
                row = edges.get(key)
                if row is None and len(edges) >= 2 * self.max_edges:
                    key = (listener, OTHER, OTHER)
                    row = edges.get(key)
            if row is None:
                row = edges[key] = [0] * (len(self.buckets) + 3)
        row[0] += 1
        if failed or status >= 500:
            row[1] += 1
        row[2 + bisect_left(self.buckets, duration)] += 1

    def take(self) -> dict[Key, list[int]]:
        """The edges since the last take, which start again from nothing."""
        taken, self._edges = self._edges, {}
        return taken

    def put_back(self, deltas: Mapping[Key, Sequence[int]]) -> None:
        """Return deltas that could not be written (the next flush carries them; the cap holds)."""
        for key, values in deltas.items():
            row = self._edges.get(key)
            if row is None:
                if len(self._edges) >= self.max_edges:
                    key = (key[0], OTHER, OTHER)
                row = self._edges.setdefault(key, [0] * len(values))
            for i, value in enumerate(values):
                row[i] += value


class GraphStore(Protocol):
    """What flushing needs from the store (`routes.store.Store` is one)."""

    def add_edges(self, instance: str, minute: int, deltas: Deltas) -> None: ...

    def prune_edges(self, before: int) -> int: ...


# edges are kept this long in the store (the longest window `GET /api/v1/graph` reads)
RETENTION: Final = 24 * 3600.0
MAX_WINDOW: Final = RETENTION


def minute(now: float) -> int:
    """The store's time bucket of `now` (Unix seconds): the start of its minute."""
    return int(now // 60) * 60


class GraphFlusher(Flusher[dict[Key, list[int]]]):
    """Adds the edges of `edges` to the store every `interval` seconds, off the request path
    (`Flusher`: a failed write puts the deltas back, so they are late, never lost while the process
    lives). Every `prune_every`-th flush also deletes rows older than `RETENTION` (any process may:
    the delete is idempotent).
    """

    what = "dependency graph edges"

    def __init__(self, store: GraphStore, edges: EdgeCounts, *, instance: str, interval: float = 5.0,
                 clock: Callable[[], float] | None = None, prune_every: int = 120) -> None:
        super().__init__(instance=instance, interval=interval)
        self.store = store
        self.edges = edges
        self.clock = clock or time.time
        self.prune_every = prune_every
        self.flushes = 0

    def take(self) -> dict[Key, list[int]] | None:
        return self.edges.take()

    def put_back(self, deltas: dict[Key, list[int]]) -> None:
        self.edges.put_back(deltas)

    def write(self, deltas: dict[Key, list[int]]) -> None:
        self.store.add_edges(self.instance, minute(self.clock()), deltas)

    async def flush(self) -> bool:
        if not await super().flush():
            return False
        self.flushes += 1
        if self.flushes % self.prune_every == 1:
            try:
                await asyncio.to_thread(self.store.prune_edges, minute(self.clock() - RETENTION))
            except StoreError as exc:  # the next prune takes them; the edges were written
                log.warning("old dependency graph edges not pruned: %s", exc)
        return True


def quantile(q: float, histogram: Sequence[int], buckets: Sequence[float] = BUCKETS) -> float | None:
    """The `q` quantile (0-1) of a histogram on `buckets` (the last count is +Inf), linearly
    interpolated within its bucket as Prometheus' `histogram_quantile` does; None when empty. A
    quantile in the +Inf bucket is the highest finite bound."""
    total = sum(histogram)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, count in enumerate(histogram):
        if count and seen + count >= rank:
            if i >= len(buckets):
                return buckets[-1]
            low = buckets[i - 1] if i > 0 else 0.0
            return low + (buckets[i] - low) * max(rank - seen, 0.0) / count
        seen += count
    return buckets[-1]


class Edge:
    """One edge of the summarised graph (summed over gateways and the window)."""

    __slots__ = ("destination", "errors", "histogram", "listeners", "requests", "source")

    def __init__(self, source: str, destination: str, width: int) -> None:
        self.source = source
        self.destination = destination
        self.requests = 0
        self.errors = 0
        self.histogram = [0] * width
        self.listeners: list[str] = []


def merge(rows: Iterable[tuple[str, str, str, int, int, Sequence[int]]],
          width: int = len(BUCKETS) + 1) -> list[Edge]:
    """Rows (listener, source, destination, requests, errors, histogram) of every gateway summed
    per (source, destination); a pair that an outbound listener saw keeps only the outbound view
    (the callee's inbound listener saw the same calls), else the inbound, else the public one."""
    per: dict[tuple[str, str, str], Edge] = {}
    for listener, source, destination, requests, errors, histogram in rows:
        edge = per.get((listener, source, destination))
        if edge is None:
            edge = per[(listener, source, destination)] = Edge(source, destination, width)
        edge.requests += requests
        edge.errors += errors
        for i, count in enumerate(histogram[:width]):
            edge.histogram[i] += count
    out: dict[tuple[str, str], Edge] = {}
    for listener in LISTENERS:
        for (kind, source, destination), edge in per.items():
            if kind != listener:
                continue
            kept = out.get((source, destination))
            if kept is None:
                edge.listeners = [listener]
                out[(source, destination)] = edge
            else:
                kept.listeners.append(listener)
    return sorted(out.values(), key=lambda e: (e.source, e.destination))


def is_identity(source: str) -> bool:
    return source.startswith("spiffe://")


def node_name(source: str) -> str:
    """A caller's node: the service of a Peel workload identity (`spiffe://td/svc/orders` is
    `orders`, the same node as the service it calls by that name), else the source as it is."""
    head, sep, service = source.rpartition("/svc/")
    if sep and is_identity(head) and "/" not in head[len("spiffe://"):] and service and "/" not in service:
        return service
    return source


def summarise(edges: Sequence[Edge], *, window: float,
              declared: Callable[[str, str], bool]) -> dict[str, Any]:
    """The graph's JSON: nodes and edges with rate (req/s over `window`), error rate, p99 (ms) and
    `expected`: whether an authorization policy's `allow_from` declares the caller (`declared`);
    None for callers that no policy can name (`external`, `other`)."""
    nodes: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for edge in edges:
        source, destination = edge.source, edge.destination
        expected: bool | None
        if source in (EXTERNAL, OTHER) or destination == OTHER:
            expected = None
        else:
            # an address (plaintext on the inbound listener) is never declared
            expected = is_identity(source) and declared(source, destination)
        p99 = quantile(0.99, edge.histogram)
        caller = node_name(source)
        out.append({"source": caller, "identity": source if is_identity(source) else None,
                    "destination": destination, "requests": edge.requests,
                    "errors": edge.errors, "rate": round(edge.requests / window, 4) if window else 0.0,
                    "error_rate": round(edge.errors / edge.requests, 4) if edge.requests else 0.0,
                    "p99_ms": None if p99 is None or math.isnan(p99) else round(p99 * 1000, 2),
                    "expected": expected, "observed_by": edge.listeners})
        for name, kind in ((caller, "caller"), (destination, "service")):
            node = nodes.setdefault(name, {"id": name, "kinds": []})
            if kind not in node["kinds"]:
                node["kinds"].append(kind)
    for node in nodes.values():
        node["kinds"].sort()
    unexpected = sum(1 for e in out if e["expected"] is False)
    return {"window": window, "nodes": sorted(nodes.values(), key=lambda n: n["id"]), "edges": out,
            "unexpected": unexpected}
