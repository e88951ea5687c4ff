"""Metrics: what the hot-path recorders count, and the Prometheus text rendered over process snapshots.

The text is parsed back with prometheus-client's own parser, as a Prometheus server would read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway.telemetry.metrics import BUCKETS, CONTENT_TYPE, Metrics, render, status_class


def scrape(processes: Sequence[Mapping[str, Any]], *, admin_process: bool = False) -> dict[str, list[Sample]]:
    """Metric family name -> its samples, from the rendered text."""
    text = render(processes, admin_process=admin_process).decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def process(metrics: Metrics, pid: int = 1, **extra: Any) -> dict[str, Any]:
    return {"pid": pid, "metrics": metrics.snapshot(), **extra}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


@pytest.mark.parametrize(("status", "expected"), [
    (101, "1xx"), (200, "2xx"), (204, "2xx"), (304, "3xx"), (404, "4xx"), (499, "4xx"), (502, "5xx"),
    (599, "5xx"), (0, "none"), (99, "none"), (600, "none"),
])
def test_status_classes(status: int, expected: str) -> None:
    assert status_class(status) == expected


def test_requests_are_counted_by_route_service_side_and_status_class() -> None:
    m = Metrics()
    m.request("orders", "orders-v2", "to", 200, 0.003)
    m.request("orders", "orders-v2", "to", 201, 0.004)
    m.request("orders", "legacy", "from", 503, 0.2)
    m.request(None, None, None, 404, 0.0001)  # unmatched: route "" — never the raw path
    m.request("", "", "", 404, 0.0001)  # the same label set
    m.request("orders", "orders-v2", "to", 0, 1.5)  # the downstream went away before an answer
    m.request("orders", "orders-v2", "to", 600, 1.5)  # not an HTTP status: "none" too
    samples = scrape([process(m)])["peel_requests"]
    assert value(samples, "peel_requests_total", route="orders", service="orders-v2", side="to",
                 status_class="2xx") == 2
    assert value(samples, "peel_requests_total", route="orders", service="legacy", side="from",
                 status_class="5xx") == 1
    assert value(samples, "peel_requests_total", route="", service="", side="", status_class="4xx") == 2
    assert value(samples, "peel_requests_total", route="orders", status_class="none") == 2


def test_duration_histogram_buckets_are_cumulative_inclusive_and_sum_up() -> None:
    m = Metrics()
    for duration in (0.0004, 0.005, 0.0051, 0.3, 42.0):  # 0.005 is on a bound: le is inclusive
        m.request("r", "s", None, 200, duration)
    samples = scrape([process(m)])["peel_request_duration_seconds"]
    buckets = [(s.labels["le"], s.value) for s in samples if s.name.endswith("_bucket")]
    assert [le for le, _ in buckets] == [repr(b) for b in BUCKETS] + ["+Inf"]
    counts = dict(buckets)
    assert counts["0.0005"] == 1 and counts["0.005"] == 2 and counts["0.01"] == 3
    assert counts["0.25"] == 3 and counts["0.5"] == 4 and counts["10.0"] == 4 and counts["+Inf"] == 5
    values = [v for _, v in buckets]
    assert values == sorted(values)  # monotone
    assert value(samples, "peel_request_duration_seconds_count") == 5
    assert value(samples, "peel_request_duration_seconds_sum") == pytest.approx(42.3105)


def test_attempts_retries_fallbacks_and_rate_limits_have_their_labels() -> None:
    m = Metrics()
    m.attempt("orders", "http://10.0.0.7:9000", "ok")
    m.attempt("orders", "http://10.0.0.7:9000", "ok")
    m.attempt("orders", "http://10.0.0.8:9000", "failure")
    m.retry("orders")
    m.fallback("orders")
    m.fallback("orders")
    m.rate_limited("login")
    m.circuit_open("orders")
    families = scrape([process(m)])
    attempts = families["peel_upstream_attempts"]
    assert value(attempts, "peel_upstream_attempts_total", endpoint="http://10.0.0.7:9000", outcome="ok") == 2
    assert value(attempts, "peel_upstream_attempts_total", endpoint="http://10.0.0.8:9000",
                 outcome="failure", service="orders") == 1
    assert value(families["peel_retries"], "peel_retries_total", route="orders") == 1
    assert value(families["peel_fallbacks"], "peel_fallbacks_total", route="orders") == 2
    assert value(families["peel_rate_limited"], "peel_rate_limited_total", route="login") == 1
    assert value(families["peel_circuit_open"], "peel_circuit_open_total", service="orders") == 1


def test_label_sets_are_capped_and_the_overflow_counted() -> None:
    m = Metrics(max_series=3)
    for i in range(5):
        m.request(f"route-{i}", "s", None, 200, 0.01)
    m.retry("route-0")  # a new label set in another family: refused too
    m.request("route-0", "s", None, 200, 0.01)  # an existing one still counts
    families = scrape([process(m)])
    routes = {s.labels["route"] for s in families["peel_requests"]}
    assert routes == {"route-0", "route-1", "route-2"}
    assert value(families["peel_requests"], "peel_requests_total", route="route-0") == 2
    assert value(families["peel_metrics_overflow"], "peel_metrics_overflow_total") == 3
    assert families["peel_retries"] == []


def test_config_reloads_keep_the_served_version_when_one_is_refused() -> None:
    m = Metrics()
    m.config_loaded(7, True, when=1000.0)
    m.config_loaded(8, False, when=1010.0)
    families = scrape([process(m, pid=42)])
    assert value(families["peel_config_version"], "peel_config_version", pid="42") == 7
    assert value(families["peel_config_last_reload_success"], "peel_config_last_reload_success") == 0
    assert value(families["peel_config_last_reload_timestamp_seconds"],
                 "peel_config_last_reload_timestamp_seconds") == 1010.0
    assert value(families["peel_config_reloads"], "peel_config_reloads_total") == 1
    assert value(families["peel_config_reload_failures"], "peel_config_reload_failures_total") == 1


def test_processes_are_summed_and_per_process_facts_keep_their_pid() -> None:
    a, b = Metrics(), Metrics()
    a.request("r", "s", None, 200, 0.01)
    b.request("r", "s", None, 200, 0.02)
    b.request("r", "s", None, 500, 0.02)
    a.in_flight, b.in_flight = 2, 3
    a.config_loaded(5, True)
    b.config_loaded(6, True)
    upstreams = [{"service": "s", "endpoints": [{"url": "http://e:1", "in_flight": 1, "healthy": True,
                                                  "ejected": False}]}]
    first = process(a, 10, upstreams=upstreams, process={"resident_memory_bytes": 1000, "cpu_seconds": 1.5})
    first["metrics"].update(ejections={"s": 2}, circuit_open={"s": 1}, access_log_dropped=4)
    second = process(b, 11, upstreams=upstreams, process={"resident_memory_bytes": 3000, "cpu_seconds": 0.5})
    second["metrics"].update(ejections={"s": 1}, access_log_dropped=1)
    families = scrape([first, second])
    assert value(families["peel_requests"], "peel_requests_total", status_class="2xx") == 2
    assert value(families["peel_request_duration_seconds"], "peel_request_duration_seconds_count",
                 status_class="2xx") == 2
    assert value(families["peel_in_flight_requests"], "peel_in_flight_requests") == 5
    assert value(families["peel_serving_processes"], "peel_serving_processes") == 2
    assert value(families["peel_ejections"], "peel_ejections_total", service="s") == 3
    assert value(families["peel_circuit_open"], "peel_circuit_open_total", service="s") == 1
    assert value(families["peel_access_log_dropped"], "peel_access_log_dropped_total") == 5
    assert value(families["peel_upstream_in_flight_requests"], "peel_upstream_in_flight_requests",
                 endpoint="http://e:1") == 2
    assert value(families["peel_endpoint_healthy"], "peel_endpoint_healthy", endpoint="http://e:1") == 2
    versions = {s.labels["pid"]: s.value for s in families["peel_config_version"]}
    assert versions == {"10": 5, "11": 6}
    memory = {s.labels["pid"]: s.value for s in families["peel_worker_resident_memory_bytes"]}
    assert memory == {"10": 1000, "11": 3000}
    assert value(families["peel_worker_cpu_seconds"], "peel_worker_cpu_seconds_total", pid="10") == 1.5


def test_a_process_with_other_buckets_is_left_out_of_the_histogram() -> None:
    a, b = Metrics(), Metrics(buckets=(0.1, 1.0))
    a.request("r", "s", None, 200, 0.01)
    b.request("r", "s", None, 200, 0.01)
    samples = scrape([process(a, 1), process(b, 2)])["peel_request_duration_seconds"]
    assert value(samples, "peel_request_duration_seconds_count") == 1


def test_the_admin_process_metrics_and_content_type() -> None:
    families = scrape([], admin_process=True)
    assert "python_info" in families
    assert value(families["process_resident_memory_bytes"], "process_resident_memory_bytes") > 0
    assert value(families["peel_serving_processes"], "peel_serving_processes") == 0
    assert CONTENT_TYPE == CONTENT_TYPE_PLAIN_0_0_4


def test_a_snapshot_is_a_copy() -> None:
    m = Metrics()
    m.request("r", "s", None, 200, 0.01)
    snap = m.snapshot()
    m.request("r", "s", None, 200, 0.01)
    m.retry("r")
    assert snap["requests"][0][4] == 1 and snap["retries"] == {}


def test_span_export_counts_of_the_processes_are_summed() -> None:
    first, second = process(Metrics(), 1), process(Metrics(), 2)
    first["metrics"]["spans"] = {"ended": 10, "dropped": 4, "exported": 6, "failed": 0}
    second["metrics"]["spans"] = {"ended": 3, "dropped": 0, "exported": 1, "failed": 2}
    families = scrape([first, second, process(Metrics(), 3)])  # the third has tracing off
    assert value(families["peel_trace_spans_ended"], "peel_trace_spans_ended_total") == 13
    assert value(families["peel_trace_spans_dropped"], "peel_trace_spans_dropped_total") == 4
    assert value(families["peel_trace_spans_exported"], "peel_trace_spans_exported_total") == 7
    assert value(families["peel_trace_spans_failed"], "peel_trace_spans_failed_total") == 2
