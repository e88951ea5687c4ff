"""The inventory: what a monolith serves, read from access logs, as path templates.

    inventory = Inventory()                   # max_values=10: the cardinality cap, as Beyla's
    for line in lines:
        inventory.add_line(line)              # nginx/Apache combined or common, or Peel's JSON line
    rows = inventory.rows(legacy={"legacy"})  # one per (method, template), the most requests first

Before peeling a route off a monolith an operator needs its map: which paths it answers, how often,
how they fail and how slowly, and, once Peel is in front, how much of each is still answered by the
monolith. Access logs hold all of it but one line per request, with ids in the paths
(`/orders/42`, `/orders/43`...). This module folds them into templates (`/orders/{int}`).

**Templates.** A path is cut on `/` (the query dropped). A segment that has the shape of a value
becomes a placeholder: digits `{int}`, a UUID `{uuid}`, 16 or more hex digits `{hex}`, an ISO date
`{date}`, a long token of letters and digits with a digit in it `{token}`. Other segments stay
literal, until more than `max_values` different literals follow the same prefix: then that
position becomes `{param}` for every path under the prefix (the literals seen so far are merged into
it, and the ones after go there). That is the cap OpenTelemetry's `http.route` asks for and the one
Grafana Beyla applies (10 by default): an inventory of a log with a million distinct paths stays a
few hundred templates, and the memory it takes is bounded by the templates, not by the log's size
(past `max_nodes` positions, a new literal counts as `{param}`: one more position at most per
prefix; past 16 methods on a template, a method that is not a standard one counts as `OTHER`).

**Lines.** Peel's access log (a JSON object a line: `method`, `path`, `status`, `duration_ms`,
`service`, `side`); nginx's and Apache's combined and common formats (`"GET /path HTTP/1.1" 200
512 ...`), with the request time when a log format appends it: `rt=0.012` or `request_time=0.012`
(seconds, nginx's `$request_time`), or a bare last field, seconds when it has a decimal point
(nginx `$request_time`), microseconds when it is a whole number (Apache `%D`). A line that is none of
these is counted as unreadable, never guessed at.

**On legacy.** From Peel's own log each line names the service that answered and, on a migrated
route, the side: a request is on legacy when the `from` side answered it or when its service is one
of `legacy` (the caller's list: the monolith's service names) or the `from` service of any migration
in the log. Without either there is no telling which service is the monolith, and the monolith's own
logs name no service at all: those rows say nothing about it (None).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from facade.histogram import quantile_bucket

MAX_VALUES = 10
MAX_NODES = 100_000
MAX_DEPTH = 32  # segments; deeper paths end in `{rest}`
EXAMPLES = 3
SERVICES_KEPT = 16  # distinct (service, side) pairs counted per template; more count as "other"
MAX_METHODS = 16  # per template; a scanner's made-up methods past them count as OTHER
OTHER = "OTHER"
_STANDARD = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})

PARAM, REST = "{param}", "{rest}"
_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"[0-9]+"), "{int}"),
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), "{uuid}"),
    (re.compile(r"[0-9a-fA-F]{16,}"), "{hex}"),
    (re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"), "{date}"),
    (re.compile(r"(?=[A-Za-z_-]*[0-9])[A-Za-z0-9_-]{20,}"), "{token}"),
)
_PLACEHOLDERS = frozenset(name for _, name in _SHAPES) | {PARAM, REST}

# nginx and Apache: `host ident user [time] "request" status bytes`, then (combined) `"referer"
# "user agent"`, then whatever a log format appends
_COMMON = re.compile(r'\S+ \S+ \S+ \[[^\]]*\] "((?:[^"\\]|\\.)*)" (\d{3}) (?:\d+|-)'
                     r'(?: "(?:[^"\\]|\\.)*" "(?:[^"\\]|\\.)*")?(.*)$')
_TIMED = re.compile(r'(?:^|\s)(?:rt|request_time)=([0-9]+(?:\.[0-9]+)?)(?:\s|$)')
_LAST = re.compile(r'(?:^|\s)([0-9]+(?:\.[0-9]+)?)\s*$')
_METHOD = re.compile(r"[A-Z][A-Z_-]{0,19}")
# durations kept to about 5 % (a bucket is a 20th of e): merged by adding counts
_BUCKETS_PER_E = 20


class Entry(NamedTuple):
    """One request as a log line gives it."""

    method: str
    path: str
    status: int
    duration_ms: float | None = None
    service: str | None = None
    side: str | None = None


def parse_line(line: str) -> Entry | None:
    """The request a log line records, or None for a line that is not an access-log line."""
    line = line.strip()
    if not line:
        return None
    if line.startswith("{"):
        return _peel_line(line)
    found = _COMMON.match(line)
    if found is None:
        return None
    parts = found.group(1).split(" ")
    if len(parts) != 3 or not _METHOD.fullmatch(parts[0]) or not parts[2].startswith("HTTP/"):
        return None  # `"-"`, a TLS handshake sent in clear, a scanner's junk: no request line
    path = _path(parts[1])
    if path is None:
        return None
    return Entry(parts[0], path, int(found.group(2)), _duration(found.group(3)))


def _peel_line(line: str) -> Entry | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    method, target, status = data.get("method"), data.get("path"), data.get("status")
    if not isinstance(method, str) or not isinstance(target, str) or type(status) is not int:
        return None
    path = _path(target)
    if path is None:
        return None
    duration = data.get("duration_ms")
    service, side = data.get("service"), data.get("side")
    return Entry(method, path, status,
                 float(duration) if isinstance(duration, int | float) and duration >= 0 else None,
                 service if isinstance(service, str) else None, side if isinstance(side, str) else None)


def _path(target: str) -> str | None:
    """The path of a request target: origin form as it is, absolute form's path; no query."""
    if "://" in target and not target.startswith("/"):
        rest = target.split("://", 1)[1]
        target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    if not target.startswith("/"):
        return None  # `*` (OPTIONS) or authority form (CONNECT): no path to map
    return target.split("?", 1)[0].split("#", 1)[0]


def _duration(tail: str) -> float | None:
    """Milliseconds from what a log format appended to the combined format, if it says."""
    timed = _TIMED.search(tail)
    if timed is not None:
        return float(timed.group(1)) * 1000.0
    last = _LAST.search(tail)
    if last is None:
        return None
    value = last.group(1)
    return float(value) * 1000.0 if "." in value else int(value) / 1000.0


def shape(segment: str) -> str | None:
    """The placeholder for a segment shaped like a value, else None (a literal)."""
    for pattern, name in _SHAPES:
        if pattern.fullmatch(segment):
            return name
    return None


@dataclass(slots=True)
class Stats:
    """What the requests of one template and method came to; merged by adding."""

    requests: int = 0
    statuses: list[int] = field(default_factory=lambda: [0] * 6)  # by status // 100 (0: none sent)
    durations: Counter[int] = field(default_factory=Counter)  # a bucket's requests
    timed: int = 0
    fastest: float = math.inf  # ms: the quantiles are clamped to what was seen
    slowest: float = 0.0
    examples: list[str] = field(default_factory=list)
    services: Counter[tuple[str | None, str | None]] = field(default_factory=Counter)

    def add(self, entry: Entry) -> None:
        self.requests += 1
        self.statuses[entry.status // 100 if 0 <= entry.status < 600 else 0] += 1
        if entry.duration_ms is not None:
            self.timed += 1
            self.durations[_bucket(entry.duration_ms)] += 1
            self.fastest = min(self.fastest, entry.duration_ms)
            self.slowest = max(self.slowest, entry.duration_ms)
        if len(self.examples) < EXAMPLES and entry.path not in self.examples:
            self.examples.append(entry.path)
        if entry.service is not None:
            self._count_service((entry.service, entry.side), 1)

    def _count_service(self, key: tuple[str | None, str | None], n: int) -> None:
        if key in self.services or len(self.services) < SERVICES_KEPT:
            self.services[key] += n
        else:
            self.services[("other", None)] += n

    def merge(self, other: Stats) -> None:
        self.requests += other.requests
        self.statuses = [a + b for a, b in zip(self.statuses, other.statuses, strict=True)]
        self.durations.update(other.durations)
        self.timed += other.timed
        self.fastest = min(self.fastest, other.fastest)
        self.slowest = max(self.slowest, other.slowest)
        for example in other.examples:
            if len(self.examples) < EXAMPLES and example not in self.examples:
                self.examples.append(example)
        for key, n in other.services.items():
            self._count_service(key, n)

    def quantile(self, q: float) -> float | None:
        """The duration (ms) below which `q` of the timed requests fell; None when none was timed."""
        found = quantile_bucket(self.durations, q)
        if found is None:
            return None
        return min(max(_value(found), self.fastest), self.slowest)


def _bucket(ms: float) -> int:
    return round(math.log(max(ms, 0.001)) * _BUCKETS_PER_E)


def _value(bucket: int) -> float:
    return math.exp(bucket / _BUCKETS_PER_E)


class _Node:
    __slots__ = ("children", "collapsed", "ends")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.collapsed = False  # more than max_values literals came after this prefix
        self.ends: dict[str, Stats] = {}  # by method: the requests whose path ends here


@dataclass(frozen=True, slots=True)
class Row:
    """One template and method, for the report."""

    method: str
    template: str
    requests: int
    share: float  # of all the requests read
    statuses: tuple[int, ...]  # by status // 100: none sent, 1xx .. 5xx
    p50_ms: float | None
    p99_ms: float | None
    examples: tuple[str, ...]
    services: tuple[tuple[str | None, str | None, int], ...]  # (service, side, requests), most first
    on_legacy: float | None  # the share answered by legacy; None when the lines name no service

    @property
    def errors(self) -> float:
        """The share of 5xx answers (and of requests that got no answer at all)."""
        return (self.statuses[5] + self.statuses[0]) / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "template": self.template, "requests": self.requests,
                "share": self.share,
                "statuses": {name: n for name, n in zip(("none", "1xx", "2xx", "3xx", "4xx", "5xx"),
                                                        self.statuses, strict=True)},
                "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "examples": list(self.examples),
                "services": [{"service": s, "side": side, "requests": n} for s, side, n in self.services],
                "on_legacy": self.on_legacy}


class Inventory:
    """Templates with their requests, from log lines (see the module docstring)."""

    def __init__(self, *, max_values: int = MAX_VALUES, max_nodes: int = MAX_NODES) -> None:
        if max_values < 1:
            raise ValueError("max_values must be at least 1")
        self.max_values = max_values
        self.max_nodes = max_nodes
        self.root = _Node()
        self.nodes = 1
        self.lines = 0
        self.unreadable = 0
        self.first_unreadable: str | None = None

    def add_line(self, line: str) -> None:
        """Count one log line (a blank line is skipped, an unreadable one counted)."""
        if not line.strip():
            return
        self.lines += 1
        entry = parse_line(line)
        if entry is None:
            self.unreadable += 1
            if self.first_unreadable is None:
                self.first_unreadable = line.rstrip("\n")[:200]
            return
        self.add(entry)

    def add_lines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.add_line(line)

    def add(self, entry: Entry) -> None:
        node = self.root
        segments = entry.path.split("/")[1:]
        if len(segments) > MAX_DEPTH:
            segments = [*segments[:MAX_DEPTH], REST]
        for segment in segments:
            node = self._child(node, segment)
        method = entry.method
        if method not in node.ends and len(node.ends) >= MAX_METHODS and method not in _STANDARD:
            method = OTHER
        stats = node.ends.get(method)
        if stats is None:
            stats = node.ends[method] = Stats()
        stats.add(entry)

    def _child(self, node: _Node, segment: str) -> _Node:
        key = shape(segment) or segment
        if key == segment and segment not in _PLACEHOLDERS:  # a literal
            if node.collapsed or (segment not in node.children and self.nodes >= self.max_nodes):
                key = PARAM
            elif segment not in node.children and _literals(node) >= self.max_values:
                self._collapse(node)
                key = PARAM
        child = node.children.get(key)
        if child is None:
            child = node.children[key] = _Node()
            self.nodes += 1
        return child

    def _collapse(self, node: _Node) -> None:
        """Merge the literal children of `node` into its `{param}` child, for good."""
        node.collapsed = True
        merged = node.children.get(PARAM)
        if merged is None:
            merged = node.children[PARAM] = _Node()
            self.nodes += 1
        for key in [k for k in node.children if k not in _PLACEHOLDERS]:
            self._merge(merged, node.children.pop(key))
            self.nodes -= 1
        for child in node.children.values():
            self._settle(child)

    def _merge(self, into: _Node, other: _Node) -> None:
        into.collapsed = into.collapsed or other.collapsed
        for method, stats in other.ends.items():
            mine = into.ends.get(method)
            if mine is None:
                into.ends[method] = stats
            else:
                mine.merge(stats)
        for key, child in other.children.items():
            mine_child = into.children.get(key)
            if mine_child is None:
                into.children[key] = child
            else:
                self._merge(mine_child, child)
                self.nodes -= 1

    def _settle(self, node: _Node) -> None:
        """After a merge: a node now over the cap, or collapsed with literals again, collapses."""
        if _literals(node) > self.max_values or (node.collapsed and _literals(node)):
            self._collapse(node)  # (which settles the children)
            return
        for child in node.children.values():
            self._settle(child)

    @property
    def requests(self) -> int:
        return sum(stats.requests for _, _, stats in self._walk(self.root, ""))

    def rows(self, legacy: Iterable[str] = ()) -> list[Row]:
        """Every template and method, the most requests first (then by template)."""
        found = list(self._walk(self.root, ""))
        total = sum(stats.requests for _, _, stats in found) or 1
        legacy_services = set(legacy) | {service for _, _, stats in found
                                         for (service, side) in stats.services if side == "from"}
        rows = []
        for template, method, stats in found:
            services = tuple(sorted(((s, side, n) for (s, side), n in stats.services.items()),
                                    key=lambda t: (-t[2], t[0] or "", t[1] or "")))
            named = sum(n for _, _, n in services)
            on_legacy = None
            if named and legacy_services:
                on_legacy = sum(n for s, side, n in services
                                if side == "from" or (side is None and s in legacy_services)) / named
            rows.append(Row(method, template, stats.requests, stats.requests / total,
                            tuple(stats.statuses), stats.quantile(0.5), stats.quantile(0.99),
                            tuple(stats.examples), services, on_legacy))
        rows.sort(key=lambda r: (-r.requests, r.template, r.method))
        return rows

    def _walk(self, node: _Node, prefix: str) -> Iterable[tuple[str, str, Stats]]:
        for method, stats in node.ends.items():
            yield prefix or "/", method, stats
        for key, child in node.children.items():
            yield from self._walk(child, f"{prefix}/{key}")


def _literals(node: _Node) -> int:
    return sum(1 for key in node.children if key not in _PLACEHOLDERS)


__all__ = ["MAX_VALUES", "Entry", "Inventory", "Row", "Stats", "parse_line", "shape"]
