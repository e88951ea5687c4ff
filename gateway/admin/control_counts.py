"""The counts a sidecar reports to its control plane (`POST /api/v1/control/counts`), as JSON.

A sidecar (`server.source = "control"`) has no database, so what its flushers would add to the
store (traffic counts, dependency-graph edges, guard samples, shadow counts and examples) goes to
the control plane instead (`gateway.server.report_control`), which checks it here and adds it to
its store under the caller's identity. One body carries any of the kinds:

    {"instance": "vm-3:812",
     "traffic": [[route, config_version, to, from, fallback, retired_misses], ...],
     "edges":   [[listener, source, destination, minute, requests, errors, [bucket, ...]], ...],
     "samples": [[route, side, second, requests, errors, {bucket: count}], ...],
     "shadow":  [[route, config_version, minute, {pairs, mismatched, baseline_pairs,
                  baseline_mismatched, dropped, skipped, failed, fields: {name: [n, n]}}], ...],
     "examples": {route: [example, ...]}}

Everything is bounded (`MAX_ROWS` rows per kind, names as long as their columns, counts below
2^31); the first thing out of bounds refuses the whole body with the field's path (`edges[3][1]`),
so a refusal writes nothing. The rows are stored under the instance `<caller's SPIFFE ID> <instance>`
(at most 128 characters): every row says which sidecar observed it, and one sidecar cannot write
another's. The edges its outbound listener saw must have the caller as their source.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from facade.noise import DEFAULT_MAX_FIELDS, ShadowCounts
from facade.shadow_counts import KEEP_EXAMPLES, ShadowTotals
from facade.window import MAX_BUCKET
from gateway.telemetry.graph import LISTENERS, MAX_SOURCE, OTHER
from gateway.telemetry.metrics import BUCKETS
from routes.errors import RuleError
from routes.guard_records import GuardDeltas
from routes.migration_records import CountDeltas

COUNTS_PATH = "/api/v1/control/counts"
MAX_ROWS = 5000  # per kind and body; the sink keeps at most as many (gateway.server.report_control)
MAX_BODY = 8 * 1024 * 1024
MAX_EXAMPLE_ROUTES = 100
MAX_EXAMPLE = 16 * 1024  # bytes of one example as JSON
MAX_COUNT = 2**31 - 1
MAX_INSTANCE = 128
NAME = 63  # a route's or a service's name (the columns' length)
SIDE = 8
KINDS = ("traffic", "edges", "samples", "shadow", "examples")
EdgeDeltas = Mapping[tuple[str, str, str, int], list[int]]
ShadowDeltas = Mapping[tuple[str, int, int], ShadowTotals]
Examples = Mapping[str, list[dict[str, Any]]]


# -- the sidecar's side ----------------------------------------------------------------------------

def encode_traffic(deltas: CountDeltas) -> list[list[Any]]:
    return [[route, version, *values] for (route, version), values in deltas.items()]


def encode_edges(deltas: EdgeDeltas) -> list[list[Any]]:
    return [[listener, source, destination, minute, values[0], values[1], list(values[2:])]
            for (listener, source, destination, minute), values in deltas.items()]


def encode_samples(deltas: GuardDeltas) -> list[list[Any]]:
    return [[route, side, second, requests, errors, {str(k): v for k, v in hist.items()}]
            for (route, side, second), (requests, errors, hist) in deltas.items()]


def encode_shadow(deltas: ShadowDeltas) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for (route, version, bucket), totals in deltas.items():
        c = totals.counts
        rows.append([route, version, bucket, {
            "pairs": c.pairs, "mismatched": c.mismatched, "baseline_pairs": c.baseline_pairs,
            "baseline_mismatched": c.baseline_mismatched, "dropped": totals.dropped,
            "skipped": totals.skipped, "failed": totals.failed, "fields": c.fields}])
    return rows


# -- the control plane's side ----------------------------------------------------------------------

class Report:
    """One checked body: the deltas as the store's methods take them."""

    def __init__(self) -> None:
        self.instance = ""
        self.traffic: dict[tuple[str, int], tuple[int, int, int, int]] = {}
        self.edges: dict[int, dict[tuple[str, str, str], list[int]]] = {}  # by minute
        self.samples: dict[tuple[str, str, int], tuple[int, int, dict[int, int]]] = {}
        self.shadow: dict[tuple[str, int, int], ShadowTotals] = {}
        self.examples: dict[str, list[dict[str, Any]]] = {}

    def rows(self) -> int:
        return (len(self.traffic) + sum(len(e) for e in self.edges.values()) + len(self.samples)
                + len(self.shadow) + sum(len(e) for e in self.examples.values()))


def _name(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise RuleError(field, f"must be a string of 1 to {limit} characters", str(value)[:80])
    return value


def _count(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
        raise RuleError(field, f"must be an integer from 0 to {MAX_COUNT}", str(value)[:80])
    return value


def _row(value: Any, field: str, length: int) -> list[Any]:
    if not isinstance(value, list) or len(value) != length:
        raise RuleError(field, f"must be a list of {length} items", str(value)[:80])
    return value


def _rows(body: Mapping[str, Any], kind: str) -> list[Any]:
    rows = body.get(kind, [])
    if not isinstance(rows, list):
        raise RuleError(kind, "must be a list", str(rows)[:80])
    if len(rows) > MAX_ROWS:
        raise RuleError(kind, f"must hold at most {MAX_ROWS} rows", str(len(rows)))
    return rows


def decode(body: Mapping[str, Any], identity: str) -> Report:
    """The checked report of `identity` (the caller's SPIFFE ID); `RuleError` naming the field."""
    unknown = sorted(set(body) - {"instance", *KINDS})
    if unknown:
        raise RuleError(unknown[0], f"is not a field of a counts report (instance, {', '.join(KINDS)})")
    report = Report()
    sender = _name(body.get("instance"), "instance", MAX_INSTANCE)
    report.instance = f"{identity} {sender}"[:MAX_INSTANCE]
    for i, value in enumerate(_rows(body, "traffic")):
        f = f"traffic[{i}]"
        route, version, *counts = _row(value, f, 6)
        key = (_name(route, f"{f}[0]", NAME), _count(version, f"{f}[1]"))
        to, from_, fallback, misses = (_count(n, f"{f}[{j + 2}]") for j, n in enumerate(counts))
        if key in report.traffic:
            raise RuleError(f, "repeats a route and config version")
        report.traffic[key] = (to, from_, fallback, misses)
    width = len(BUCKETS) + 1
    for i, value in enumerate(_rows(body, "edges")):
        f = f"edges[{i}]"
        listener, source, destination, minute, requests, errors, histogram = _row(value, f, 7)
        if listener not in LISTENERS:
            raise RuleError(f"{f}[0]", f"must be one of {', '.join(LISTENERS)}", str(listener)[:80])
        _name(source, f"{f}[1]", MAX_SOURCE)
        if listener == "outbound" and source not in (identity, OTHER):
            raise RuleError(f"{f}[1]", f"an outbound edge's source is the caller, {identity}", source)
        _name(destination, f"{f}[2]", NAME)
        if _count(minute, f"{f}[3]") % 60:
            raise RuleError(f"{f}[3]", "must be the start of a minute (Unix seconds)", str(minute))
        if not isinstance(histogram, list) or len(histogram) != width:
            raise RuleError(f"{f}[6]", f"must be a list of {width} counts", str(histogram)[:80])
        values = [_count(requests, f"{f}[4]"), _count(errors, f"{f}[5]"),
                  *(_count(n, f"{f}[6][{j}]") for j, n in enumerate(histogram))]
        edges = report.edges.setdefault(minute, {})
        if (listener, source, destination) in edges:
            raise RuleError(f, "repeats an edge and minute")
        edges[(listener, source, destination)] = values
    for i, value in enumerate(_rows(body, "samples")):
        f = f"samples[{i}]"
        route, side, second, requests, errors, hist = _row(value, f, 6)
        key3 = (_name(route, f"{f}[0]", NAME), _name(side, f"{f}[1]", SIDE), _count(second, f"{f}[2]"))
        if not isinstance(hist, dict) or len(hist) > MAX_BUCKET + 1:
            raise RuleError(f"{f}[5]", f"must be an object of at most {MAX_BUCKET + 1} buckets",
                            str(hist)[:80])
        buckets: dict[int, int] = {}
        for k, n in hist.items():
            if not k.isdigit() or int(k) > MAX_BUCKET:
                raise RuleError(f"{f}[5]", f"buckets are 0 to {MAX_BUCKET}", k[:80])
            buckets[int(k)] = _count(n, f"{f}[5][{k}]")
        if key3 in report.samples:
            raise RuleError(f, "repeats a route, side and second")
        report.samples[key3] = (_count(requests, f"{f}[3]"), _count(errors, f"{f}[4]"), buckets)
    for i, value in enumerate(_rows(body, "shadow")):
        f = f"shadow[{i}]"
        route, version, bucket, totals = _row(value, f, 4)
        key4 = (_name(route, f"{f}[0]", NAME), _count(version, f"{f}[1]"), _count(bucket, f"{f}[2]"))
        report.shadow[key4] = _totals(totals, f"{f}[3]")
    examples = body.get("examples", {})
    if not isinstance(examples, dict) or len(examples) > MAX_EXAMPLE_ROUTES:
        raise RuleError("examples", f"must be an object of at most {MAX_EXAMPLE_ROUTES} routes",
                        str(examples)[:80])
    for route, items in examples.items():
        f = f"examples[{route[:NAME]}]"
        _name(route, f, NAME)
        if not isinstance(items, list) or len(items) > KEEP_EXAMPLES:
            raise RuleError(f, f"must be a list of at most {KEEP_EXAMPLES} examples", str(items)[:80])
        for j, item in enumerate(items):
            if not isinstance(item, dict) or len(json.dumps(item)) > MAX_EXAMPLE:
                raise RuleError(f"{f}[{j}]", f"must be an object of at most {MAX_EXAMPLE} bytes as JSON")
        report.examples[route] = items
    return report


def _totals(value: Any, field: str) -> ShadowTotals:
    names = ("pairs", "mismatched", "baseline_pairs", "baseline_mismatched", "dropped", "skipped", "failed")
    if not isinstance(value, dict) or set(value) != {*names, "fields"}:
        raise RuleError(field, f"must be an object of {', '.join(names)} and fields", str(value)[:80])
    n = {name: _count(value[name], f"{field}.{name}") for name in names}
    fields = value["fields"]
    if not isinstance(fields, dict) or len(fields) > DEFAULT_MAX_FIELDS + 1:
        raise RuleError(f"{field}.fields", f"must be an object of at most {DEFAULT_MAX_FIELDS + 1} fields",
                        str(fields)[:80])
    checked: dict[str, list[int]] = {}
    for name, pair in fields.items():
        f = f"{field}.fields[{name[:80]}]"
        _name(name, f, 1024)
        pair = _row(pair, f, 2)
        checked[name] = [_count(pair[0], f"{f}[0]"), _count(pair[1], f"{f}[1]")]
    counts = ShadowCounts(n["pairs"], n["mismatched"], n["baseline_pairs"], n["baseline_mismatched"], checked)
    return ShadowTotals(counts, n["dropped"], n["skipped"], n["failed"])
