"""Request metrics: recorded on the hot path in plain Python, rendered by prometheus-client.

    metrics = Metrics()                                   # one per serving process
    metrics.request(route, service, side, status, duration_s)
    metrics.attempt(service, endpoint_url, outcome); metrics.retry(route); metrics.fallback(route)
    metrics.rate_limited(route); metrics.circuit_open(service); metrics.in_flight += 1 / -= 1
    metrics.config_loaded(version, ok)
    render(process_snapshots) -> bytes                    # Prometheus text format 0.0.4

Why not OpenTelemetry metrics: its SDK pays per recording for attribute-set hashing, a lock and the
view machinery, several microseconds each, against a whole data-plane budget of ~60 µs per request.
prometheus-client's own metric objects also take a lock per `inc()`. Peel's event loop is one
thread per process, so a recording here is a dict lookup on a tuple and a few additions, with no
lock; prometheus-client only renders (and is imported only where it renders: the admin process,
not the workers), from a custom collector over the snapshots that every serving
process publishes (`gateway/telemetry/procstats.py`), summed. Label values come from the config (route and
service names, endpoint URLs) and the status *class*, never from a raw path, and the number of label
sets a process keeps is capped (`overflow` counts what was refused).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

if TYPE_CHECKING:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# Seconds; from a cache hit on loopback (0.5 ms) to a slow legacy page (10 s).
BUCKETS: Final[tuple[float, ...]] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                              1.0, 2.5, 5.0, 10.0)
MAX_SERIES: Final = 10_000
# prometheus-client's CONTENT_TYPE_PLAIN_0_0_4
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# Index status // 100; "none": no response was sent (the downstream went away first).
_CLASSES: Final = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
_ROUTE_COUNTERS: Final = ("retries", "fallbacks", "rate_limited", "authz_dry_run", "authz_denied")
# distinct sources counted per process on the inbound listener; more are "other"
MAX_SOURCES: Final = 1000


def status_class(status: int) -> str:
    """`"2xx"` for 204; `"none"` for anything that is not a sent HTTP status."""
    return _CLASSES[status // 100] if 100 <= status < 600 else "none"


class Metrics:
    """One serving process's counters. Hot-path methods take no lock: one event-loop thread writes.

    `in_flight` is a plain attribute the proxy increments and decrements around a request.
    `snapshot()` copies everything into plain JSON-able data (called on the event loop, so the
    copy never sees a dict changing under it).
    """

    def __init__(self, *, max_series: int = MAX_SERIES, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self.max_series = max_series
        self.series = 0
        self.overflow = 0  # observations refused because `max_series` label sets exist
        self.in_flight = 0
        # (route, service, side, status // 100) -> [count, sum, bucket 0 .. bucket n-1, +Inf]
        self._requests: dict[tuple[str | None, str | None, str | None, int], list[float]] = {}
        self._attempts: dict[tuple[str | None, str, str], int] = {}
        self._retries: dict[str, int] = {}
        self._fallbacks: dict[str, int] = {}
        self._rate_limited: dict[str, int] = {}
        self._circuit_open: dict[str, int] = {}
        # inbound listener: (mtls "true"/"false", source) -> [requests, unix time of the last one]
        self._inbound: dict[tuple[str, str], list[float]] = {}
        self._authz_dry_run: dict[str, int] = {}
        self._inbound_refused: dict[str, int] = {}
        # outbound listener (docs/east-west.md): refusals by Peel code, CONNECT tunnels by destination
        self._outbound_refused: dict[str, int] = {}
        self._outbound_tunnels: dict[str, int] = {}
        self._authz_denied: dict[str, int] = {}
        self.config_version = -1
        self.config_loaded_at: float | None = None  # unix time of the last table swapped in
        self.last_reload_at: float | None = None  # unix time of the last attempt, good or bad
        self.last_reload_ok = True
        self.reloads = 0
        self.reload_failures = 0

    # -- hot path ----------------------------------------------------------------------------------

    def request(self, route: str | None, service: str | None, side: str | None, status: int,
                duration: float) -> None:
        """One downstream request answered (or abandoned) after `duration` seconds."""
        # The key holds the raw values (None, status // 100): normalising them here would triple
        # the cost of the call; `snapshot()` does it once per publication instead.
        key = (route, service, side, status // 100)
        row = self._requests.get(key)
        if row is None:
            if not self._room():
                return
            row = self._requests[key] = [0.0] * (len(self.buckets) + 3)
        row[0] += 1
        row[1] += duration
        row[2 + bisect_left(self.buckets, duration)] += 1

    def attempt(self, service: str | None, endpoint: str, outcome: str) -> None:
        """One upstream attempt to `endpoint` (its URL): "ok", "5xx" or "failure"."""
        key = (service, endpoint, outcome)
        counts = self._attempts
        n = counts.get(key)
        if n is not None:
            counts[key] = n + 1
        elif self._room():
            counts[key] = 1

    def retry(self, route: str) -> None:
        """One retry (an attempt after the first) on `route`."""
        self._count(self._retries, route)

    def fallback(self, route: str) -> None:
        """A migrated route answered from `from` because `to` failed."""
        self._count(self._fallbacks, route)

    def rate_limited(self, route: str) -> None:
        """A request refused with 429 by the route's rate limit."""
        self._count(self._rate_limited, route)

    def circuit_open(self, service: str) -> None:
        """A request refused because `service`'s circuit breaker is open (its `admit()` said no).

        Ejections are not pushed: they happen inside the endpoint state, and `ProcessState` reads
        them from `Upstreams` when it publishes.
        """
        self._count(self._circuit_open, service)

    def inbound(self, mtls: bool, source: str) -> None:
        """One request on the inbound listener, from `source` (the caller's identity, else its
        address). Sources past `MAX_SOURCES` are counted as "other" (bounded cardinality)."""
        key = ("true" if mtls else "false", source)
        row = self._inbound.get(key)
        if row is None:
            if len(self._inbound) >= MAX_SOURCES or not self._room():
                key = (key[0], "other")
                row = self._inbound.setdefault(key, [0.0, 0.0])
            else:
                row = self._inbound[key] = [0.0, 0.0]
        row[0] += 1
        row[1] = time.time()

    def inbound_refused(self, reason: str) -> None:
        """A connection the inbound listener refused: "plaintext" (strict mode) or "handshake"."""
        self._count(self._inbound_refused, reason)

    def outbound_refused(self, code: str) -> None:
        """A request the outbound listener refused (`unknown-destination`, `connect-refused`, ...)."""
        self._count(self._outbound_refused, code)

    def outbound_tunnel(self, destination: str) -> None:
        """A `CONNECT` tunnel the outbound listener opened to `destination` (host:port)."""
        self._count(self._outbound_tunnels, destination)

    def authz_dry_run(self, route: str) -> None:
        """A request that the route's authorization policy in `dry_run` mode would have refused."""
        self._count(self._authz_dry_run, route)

    def authz_denied(self, route: str) -> None:
        """A request refused 403 `forbidden-identity` on `route`."""
        self._count(self._authz_denied, route)

    def _count(self, counts: dict[str, int], key: str) -> None:
        n = counts.get(key)
        if n is not None:
            counts[key] = n + 1
        elif self._room():
            counts[key] = 1

    def _room(self) -> bool:
        if self.series < self.max_series:
            self.series += 1
            return True
        self.overflow += 1
        return False

    # -- config ------------------------------------------------------------------------------------

    def config_loaded(self, version: int, ok: bool, when: float | None = None) -> None:
        """A route-table reload: `version` swapped in (ok) or refused (the previous one still serves).

        Safe from the watcher's thread: each field is one assignment of an immutable value.
        """
        when = time.time() if when is None else when
        if ok:
            self.config_version = version
            self.config_loaded_at = when
            self.reloads += 1
        else:
            self.reload_failures += 1
        self.last_reload_at = when
        self.last_reload_ok = ok

    # -- publishing --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything, copied into JSON-able data (the shape `render` reads under "metrics")."""
        return {
            "buckets": list(self.buckets),
            "requests": _requests_rows(list(self._requests.items())),
            "attempts": [[service or "", endpoint, outcome, n]
                         for (service, endpoint, outcome), n in list(self._attempts.items())],
            "retries": dict(self._retries),
            "fallbacks": dict(self._fallbacks),
            "rate_limited": dict(self._rate_limited),
            "circuit_open": dict(self._circuit_open),
            "inbound": [[mtls, source, row[0], row[1]]
                        for (mtls, source), row in list(self._inbound.items())],
            "authz_dry_run": dict(self._authz_dry_run),
            "inbound_refused": dict(self._inbound_refused),
            "outbound_refused": dict(self._outbound_refused),
            "outbound_tunnels": dict(self._outbound_tunnels),
            "authz_denied": dict(self._authz_denied),
            "in_flight": self.in_flight,
            "overflow": self.overflow,
            "config": {"version": self.config_version, "loaded_at": self.config_loaded_at,
                       "last_reload_at": self.last_reload_at, "last_reload_ok": self.last_reload_ok,
                       "reloads": self.reloads, "reload_failures": self.reload_failures},
        }


def _requests_rows(items: list[tuple[tuple[str | None, str | None, str | None, int], list[float]]]
                   ) -> list[list[Any]]:
    """[route, service, side, status class, count, sum, buckets...]; None as "", 0 and 6+ as "none"."""
    rows: dict[tuple[str, str, str, str], list[Any]] = {}
    for (route, service, side, hundreds), row in items:
        key = (route or "", service or "", side or "", _CLASSES[hundreds] if 0 < hundreds < 6 else "none")
        found = rows.get(key)
        if found is None:
            rows[key] = [*key, *row]
        else:
            for i, v in enumerate(row, 4):
                found[i] += v
    return list(rows.values())


# -- rendering (the admin side) --------------------------------------------------------------------


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


class _Sum:
    """Label tuple -> summed value, for one metric family across processes."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], float] = {}

    def add(self, key: tuple[str, ...], value: Any) -> None:
        self.values[key] = self.values.get(key, 0.0) + _num(value)


class PeelCollector:
    """A prometheus-client collector over the published snapshots of a gateway's serving processes.

    Counters and histograms are summed over the processes; per-process facts (config version,
    memory, CPU) keep a `pid` label. A process whose histogram buckets differ from the first one's
    (a Peel upgrade mid-rollout) is left out of the histogram, not mixed in wrongly.
    """

    def __init__(self, processes: Sequence[Mapping[str, Any]],
                 leader: tuple[str, bool] | None = None) -> None:
        self.processes = processes
        self.leader = leader

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        requests: dict[tuple[str, ...], list[float]] = {}
        buckets: list[float] | None = None
        attempts = _Sum()
        per_route = {name: _Sum() for name in _ROUTE_COUNTERS}
        ejections, circuit_open, inbound, inbound_refused = _Sum(), _Sum(), _Sum(), _Sum()
        outbound_refused, tunnels = _Sum(), _Sum()
        upstream_in_flight, healthy, ejected = _Sum(), _Sum(), _Sum()
        totals, spans = _Sum(), _Sum()
        proc = {name: GaugeMetricFamily(f"peel_worker_{name}", doc, labels=["pid"])
                for name, doc in _PROCESS_GAUGES}
        cpu = CounterMetricFamily("peel_worker_cpu_seconds", "CPU time of each serving process",
                                  labels=["pid"])
        config = {name: GaugeMetricFamily(f"peel_config_{name}", doc, labels=["pid"])
                  for name, doc in _CONFIG_GAUGES}
        for snap in self.processes:
            pid = str(snap.get("pid", ""))
            m: Mapping[str, Any] = snap.get("metrics") or {}
            mine = [float(b) for b in m.get("buckets", ())]
            if buckets is None:
                buckets = mine
            for row in m.get("requests", ()) if mine == buckets else ():
                key, values = tuple(str(v) for v in row[:4]), row[4:]
                acc = requests.setdefault(key, [0.0] * len(values))
                if len(acc) == len(values):
                    for i, v in enumerate(values):
                        acc[i] += _num(v)
            for row in m.get("attempts", ()):
                attempts.add(tuple(str(v) for v in row[:3]), row[3])
            for name in _ROUTE_COUNTERS:
                for route, n in (m.get(name) or {}).items():
                    per_route[name].add((route,), n)
            for row in m.get("inbound", ()):
                inbound.add(("inbound", str(row[0]), str(row[1])), row[2])
            for reason, n in (m.get("inbound_refused") or {}).items():
                inbound_refused.add(("inbound", str(reason)), n)
            for code, n in (m.get("outbound_refused") or {}).items():
                outbound_refused.add(("outbound", str(code)), n)
            for destination, n in (m.get("outbound_tunnels") or {}).items():
                tunnels.add(("outbound", str(destination)), n)
            for service, n in (m.get("ejections") or {}).items():
                ejections.add((service,), n)
            for service, n in (m.get("circuit_open") or {}).items():
                circuit_open.add((service,), n)
            for name in ("in_flight", "overflow", "access_log_dropped", "beta_stripped"):
                totals.add((name,), m.get(name, 0))
            for name, n in (m.get("spans") or {}).items():
                spans.add((str(name),), n)
            totals.add(("processes",), 1)
            for service in snap.get("upstreams", ()):
                name = str(service.get("service", ""))
                for endpoint in service.get("endpoints", ()):
                    key = (name, str(endpoint.get("url", "")))
                    upstream_in_flight.add(key, endpoint.get("in_flight", 0))
                    healthy.add(key, 1 if endpoint.get("healthy") else 0)
                    ejected.add(key, 1 if endpoint.get("ejected") else 0)
            stats: Mapping[str, Any] = snap.get("process") or {}
            for name, _doc in _PROCESS_GAUGES:
                if stats.get(name) is not None:
                    proc[name].add_metric([pid], _num(stats[name]))
            if stats.get("cpu_seconds") is not None:
                cpu.add_metric([pid], _num(stats["cpu_seconds"]))
            cfg: Mapping[str, Any] = m.get("config") or {}
            _config_samples(config, pid, cfg)
            totals.add(("reloads",), cfg.get("reloads", 0))
            totals.add(("reload_failures",), cfg.get("reload_failures", 0))
        yield from _histogram(requests, buckets or [])
        yield _counter("peel_upstream_attempts", "Upstream attempts by outcome (ok, 5xx, failure)",
                       ["service", "endpoint", "outcome"], attempts)
        yield _counter("peel_retries", "Retries (attempts after the first)", ["route"], per_route["retries"])
        yield _counter("peel_fallbacks", "Migrated requests answered by `from` after `to` failed",
                       ["route"], per_route["fallbacks"])
        yield _counter("peel_rate_limited", "Requests refused by a route's rate limit",
                       ["route"], per_route["rate_limited"])
        yield _counter("peel_authz_dry_run_denials", "Requests a route's authorization policy in "
                       "dry_run mode would have refused", ["route"], per_route["authz_dry_run"])
        yield _counter("peel_authz_denials", "Requests refused 403 forbidden-identity", ["route"],
                       per_route["authz_denied"])
        yield _counter("peel_inbound_requests", "Requests on the inbound listener, plaintext or mTLS, by "
                       "source (the caller's identity, else its address)", ["listener", "mtls", "source"],
                       inbound)
        yield _counter("peel_inbound_refused", "Connections the inbound listener refused: plaintext in "
                       "strict mode, a failed TLS handshake (no, an untrusted or an expired client "
                       "certificate), a revoked certificate (revoked) or an open connection closed "
                       "by a revocation (revoked_open)", ["listener", "reason"], inbound_refused)
        yield _counter("peel_outbound_refused", "Requests the outbound listener refused: a destination "
                       "that is no registered service or route host, a CONNECT off the allow-list",
                       ["listener", "code"], outbound_refused)
        yield _counter("peel_outbound_tunnels", "CONNECT tunnels the outbound listener opened",
                       ["listener", "destination"], tunnels)
        yield _counter("peel_ejections", "Outlier ejections of endpoints", ["service"], ejections)
        yield _counter("peel_circuit_open", "Requests refused by a service's circuit breaker",
                       ["service"], circuit_open)
        yield _gauge("peel_upstream_in_flight_requests", "Requests in flight to each endpoint",
                     ["service", "endpoint"], upstream_in_flight)
        yield _gauge("peel_endpoint_healthy", "Serving processes that see the endpoint healthy "
                     "(active checks)", ["service", "endpoint"], healthy)
        yield _gauge("peel_endpoint_ejected", "Serving processes that have the endpoint ejected",
                     ["service", "endpoint"], ejected)
        value = totals.values.get
        yield GaugeMetricFamily("peel_in_flight_requests", "Downstream requests being served",
                                value=value(("in_flight",), 0.0))
        yield GaugeMetricFamily("peel_serving_processes", "Serving processes whose state is merged here",
                                value=value(("processes",), 0.0))
        yield CounterMetricFamily("peel_access_log_dropped", "Access-log lines dropped (queue full or "
                                  "write failed)", value=value(("access_log_dropped",), 0.0))
        yield CounterMetricFamily("peel_beta_stripped", "Beta values stripped before routing (untrusted, "
                                  "ambiguous or spelt otherwise)", value=value(("beta_stripped",), 0.0))
        for name, doc in (("ended", "Sampled spans handed to the exporter's queue"),
                          ("dropped", "Sampled spans dropped because the export queue was full"),
                          ("exported", "Spans the collector accepted"),
                          ("failed", "Spans the collector did not accept (errors, timeouts)")):
            yield CounterMetricFamily(f"peel_trace_spans_{name}", doc,
                                      value=spans.values.get((name,), 0.0))
        yield CounterMetricFamily("peel_metrics_overflow", "Observations not recorded: the label-set "
                                  "cap was reached", value=value(("overflow",), 0.0))
        yield CounterMetricFamily("peel_config_reloads", "Route tables swapped in",
                                  value=value(("reloads",), 0.0))
        yield CounterMetricFamily("peel_config_reload_failures", "Config versions that could not be "
                                  "loaded (the previous table kept serving)",
                                  value=value(("reload_failures",), 0.0))
        yield from config.values()
        yield from proc.values()
        yield cpu
        yield _certificate_expiry(self.processes)
        if self.leader is not None:
            family = GaugeMetricFamily("peel_leader", "1 when this gateway leads the fleet (runs its "
                                       "periodic control work), else 0", labels=["instance"])
            family.add_metric([self.leader[0]], 1.0 if self.leader[1] else 0.0)
            yield family


_PROCESS_GAUGES: Final = (
    ("resident_memory_bytes", "Resident memory of each serving process"),
    ("open_fds", "Open file descriptors of each serving process"),
    ("start_time_seconds", "Start time of each serving process (unix seconds)"),
)
_CONFIG_GAUGES: Final = (
    ("version", "Config version each serving process serves (-1: none yet)"),
    ("last_reload_timestamp_seconds", "When each serving process last tried to load a config version"),
    ("last_reload_success", "1 when the last load succeeded, 0 when the version was refused"),
)


def _certificate_expiry(processes: Sequence[Mapping[str, Any]]) -> GaugeMetricFamily:
    """`peel_certificate_expiry_seconds`: seconds until each certificate expires (negative: expired).

    `{identity="spiffe://..."}` for this gateway's identity, `{listener, name}` for an edge TLS
    certificate. Processes may report one certificate at different moments (one renewed it, the
    others have not looked yet): the latest expiry is the certificate on disk, which is shown.
    """
    from prometheus_client.core import GaugeMetricFamily

    latest: dict[tuple[tuple[str, str], ...], float] = {}
    for snap in processes:
        m: Mapping[str, Any] = snap.get("metrics") or {}
        for cert in m.get("certificates") or ():
            if not isinstance(cert, Mapping):
                continue
            keys = ("identity",) if "identity" in cert else ("listener", "name")
            labels = tuple((k, str(cert.get(k, ""))) for k in keys)
            latest[labels] = max(latest.get(labels, -math.inf), _num(cert.get("not_after", 0)))
    family = GaugeMetricFamily("peel_certificate_expiry_seconds", "Seconds until the certificate "
                               "expires: this gateway's identity (identity) and the edge listeners' "
                               "(listener, name); alert well before 0")
    now = time.time()
    for labels, not_after in sorted(latest.items()):
        family.add_sample("peel_certificate_expiry_seconds", dict(labels), not_after - now)
    return family


def _config_samples(config: dict[str, GaugeMetricFamily], pid: str, cfg: Mapping[str, Any]) -> None:
    config["version"].add_metric([pid], _num(cfg.get("version", -1)))
    if cfg.get("last_reload_at") is not None:
        config["last_reload_timestamp_seconds"].add_metric([pid], _num(cfg["last_reload_at"]))
    config["last_reload_success"].add_metric([pid], 1.0 if cfg.get("last_reload_ok", True) else 0.0)


def _histogram(requests: Mapping[tuple[str, ...], list[float]], buckets: Sequence[float]) -> Iterable[Metric]:
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    labels = ["route", "service", "side", "status_class"]
    total = CounterMetricFamily("peel_requests", "Downstream requests", labels=labels)
    duration = HistogramMetricFamily("peel_request_duration_seconds",
                                     "Time from the request head to the end of the response",
                                     labels=labels)
    bounds = [repr(float(b)) for b in buckets] + ["+Inf"]  # "0.0005", "1.0": as prometheus-client writes
    for key, row in sorted(requests.items()):
        count, total_seconds, counts = row[0], row[1], row[2:]
        total.add_metric(list(key), count)
        cumulative, running = [], 0.0
        for bound, n in zip(bounds, counts, strict=False):
            running += n
            cumulative.append((bound, running))
        duration.add_metric(list(key), cumulative, total_seconds)
    return (total, duration)


def _counter(name: str, doc: str, labels: list[str], values: _Sum) -> CounterMetricFamily:
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.values.items()):
        family.add_metric(list(key), value)
    return family


def _gauge(name: str, doc: str, labels: list[str], values: _Sum) -> GaugeMetricFamily:
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.values.items()):
        family.add_metric(list(key), value)
    return family


def render(processes: Sequence[Mapping[str, Any]], *, admin_process: bool = True,
           leader: tuple[str, bool] | None = None) -> bytes:
    """The Prometheus text exposition of `processes` (each a published process snapshot).

    `admin_process` adds prometheus-client's process_* and python_info metrics of the calling
    process (the one serving the admin listener); `leader` (instance, leading) adds `peel_leader`.
    A fresh registry per call: nothing is global.
    """
    from prometheus_client import PlatformCollector, ProcessCollector
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import Collector, CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    # A collector is anything with collect(); Collector is the ABC only for type checkers.
    registry.register(cast(Collector, PeelCollector(processes, leader)))
    if admin_process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return generate_latest(registry)
