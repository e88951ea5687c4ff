"""Resilience policies in the declarative document: what parses, what is refused (with which field
and value), canonical printing and round trips, and what the compiled table carries."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.admin.openapi import SCHEMAS
from routes.compiler import compile_document
from routes.diff import diff
from routes.errors import RuleError
from routes.fields import duration, format_duration
from routes.model import Document
from routes.policies import (
    Balancer,
    CircuitBreaker,
    HashOn,
    HealthCheck,
    OutlierDetection,
    RateLimit,
    RetryPolicy,
    Timeouts,
)

FULL = """
services:
  - name: orders
    endpoints: [http://10.0.0.7:9000, {url: http://10.0.0.8:9000, weight: 3}]
    balancer: {policy: hash, hash_on: {cookie: session}, slow_start: 30s, decay: 5s}
    health_check: {path: /ready, interval: 2s, timeout: 500ms, healthy_threshold: 1,
                   unhealthy_threshold: 2, statuses: [200, 204], host: orders.internal:9000}
    outlier: {consecutive_5xx: 3, consecutive_failures: 2, base_ejection: 10s, max_ejection: 2m,
              max_ejected_percent: 34}
    circuit_breaker: {max_requests: 200, max_pending: 50}
    retries: {attempts: 3, retry_on: [connect-failure, reset, timeout, "503"], statuses: [429],
              idempotency_header: X-Idem, backoff_base: 10ms, backoff_max: 1.5s, max_body: 1024,
              budget_percent: 10.0, budget_min: 1.0}
    timeouts: {connect: 250ms, response: 5s, idle: 30s, total: 1m}
  - name: legacy
    endpoints: [http://10.0.0.5:8080]
    outlier: false
routes:
  - name: api
    match: {path_prefix: /api}
    service: orders
    retries: {attempts: 1}
    timeouts: {total: 90s}
    rate_limit: {requests: 100, per: 1m, burst: 20, header: X-Api-Key}
    websocket: true
  - name: legacy-default
    match: {path_prefix: /}
    service: legacy
"""


def service(**fields: Any) -> dict[str, Any]:
    return {"name": "orders", "endpoints": ["http://127.0.0.1:8081"], **fields}


def document(services: list[dict[str, Any]] | None = None,
             routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"services": services if services is not None else [service()], "routes": routes or []}


def route(**fields: Any) -> dict[str, Any]:
    return {"name": "api", "match": {"path_prefix": "/api"}, "service": "orders", **fields}


def refusal(data: dict[str, Any]) -> RuleError:
    with pytest.raises(RuleError) as caught:
        Document.parse(data)
    return caught.value


# ---------------------------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize(("given", "seconds"), [
    (5, 5.0), (0.5, 0.5), ("250ms", 0.25), ("1.5s", 1.5), ("2m", 120.0), ("1h", 3600.0),
    ("30s", 30.0), ("0.5ms", 0.0005), ("1e-05s", 0.00001), (" 5s ", 5.0), ("24h", 86400.0),
])
def test_durations_take_seconds_or_a_number_with_a_unit(given: object, seconds: float) -> None:
    assert duration(given, "x") == seconds


@pytest.mark.parametrize(("seconds", "text"), [
    (5.0, "5s"), (120.0, "2m"), (90.0, "90s"), (3600.0, "1h"), (5400.0, "90m"), (0.25, "250ms"),
    (1.5, "1.5s"), (0.0005, "0.0005s"), (0.0, "0s"), (0.1 + 0.2, "0.30000000000000004s"),
])
def test_durations_print_canonically(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert duration(text, "x", zero=True) == seconds


@pytest.mark.parametrize(("given", "message"), [
    ("5", "must be a duration"), ("5 s", "must be a duration"), ("5sec", "must be a duration"),
    ("-1s", "must be a duration"), ("1d", "must be a duration"), (True, "must be a duration"),
    (None, "must be a duration"), ([5], "must be a duration"), (0, "more than 0"), ("0ms", "more than 0"),
    (-2, "more than 0"), ("25h", "at most 24h"), (math.inf, "at most 24h"), (math.nan, "at most 24h"),
])
def test_bad_durations_are_refused_with_the_value(given: object, message: str) -> None:
    with pytest.raises(RuleError) as caught:
        duration(given, "services[a].timeouts.total")
    assert caught.value.field == "services[a].timeouts.total"
    assert message in caught.value.message
    assert caught.value.value is given


@settings(max_examples=300)
@given(st.floats(min_value=0, max_value=86_400, allow_nan=False))
def test_every_duration_prints_to_text_that_reads_back_exactly(seconds: float) -> None:
    assert duration(format_duration(seconds), "x", zero=True) == seconds


@given(st.integers(1, 1440), st.sampled_from(["ms", "s", "m"]))
def test_printing_a_parsed_duration_is_stable(count: int, unit: str) -> None:
    text = format_duration(duration(f"{count}{unit}", "x"))
    assert format_duration(duration(text, "x")) == text


# ---------------------------------------------------------------------------------------------
# Parsing and printing


def test_full_example_parses_to_the_policies_and_round_trips() -> None:
    doc = Document.parse(yaml.safe_load(FULL))
    orders, legacy = doc.service("orders"), doc.service("legacy")
    assert orders is not None and legacy is not None
    assert [e.weight for e in orders.endpoints] == [1, 3]
    assert orders.balancer == Balancer("hash", HashOn(cookie="session"), 30.0, 5.0)
    assert orders.health_check == HealthCheck("/ready", 2.0, 0.5, 1, 2, (200, 204), "orders.internal:9000")
    assert orders.outlier == OutlierDetection(3, 2, 10.0, 120.0, 34)
    assert orders.circuit_breaker == CircuitBreaker(200, 50)
    assert orders.retries == RetryPolicy(3, ("connect-failure", "reset", "timeout", "503"), (429,),
                                         "X-Idem", 0.01, 1.5, 1024, 10.0, 1.0)
    assert orders.timeouts == Timeouts(0.25, 5.0, 30.0, 60.0)
    assert legacy.outlier is None
    api = doc.route("api")
    assert api is not None
    assert api.retries == RetryPolicy(attempts=1)
    assert api.timeouts == Timeouts(total=90.0)
    assert api.rate_limit == RateLimit(100, 60.0, 20, "X-Api-Key")
    assert api.websocket is True
    printed = doc.to_dict()
    assert Document.parse(printed) == doc
    assert Document.parse(yaml.safe_load(yaml.safe_dump(printed))).to_dict() == printed
    # the canonical text of what was written is what was written
    assert printed["services"][1]["timeouts"] == {"connect": "250ms", "response": "5s", "idle": "30s",
                                                  "total": "1m"}
    assert printed["services"][1]["endpoints"] == ["http://10.0.0.7:9000",
                                                   {"url": "http://10.0.0.8:9000", "weight": 3}]
    assert printed["services"][0]["outlier"] is False


def test_defaults_are_left_out_on_export() -> None:
    written = service(
        endpoints=[{"url": "http://127.0.0.1:8081", "weight": 1}],
        balancer={"policy": "ewma", "slow_start": 0, "decay": "10s"},
        outlier={"consecutive_5xx": 5, "base_ejection": 30, "max_ejection": "5m"},
        circuit_breaker={"max_requests": 1024},
        retries={"attempts": 2, "retry_on": ["connect-failure", "reset"], "backoff_base": "25ms",
                 "backoff_max": 0.25, "idempotency_header": "Idempotency-Key", "budget_percent": 20},
        timeouts={})
    doc = Document.parse(document([written], [route(websocket=False)]))
    assert doc.to_dict() == {"services": [{"name": "orders", "endpoints": ["http://127.0.0.1:8081"]}],
                             "routes": [{"name": "api", "match": {"path_prefix": "/api"},
                                         "service": "orders"}]}
    # and the same document as one that wrote nothing
    assert doc == Document.parse(document([service()], [route()]))


def test_an_empty_health_check_turns_checks_on_with_the_defaults() -> None:
    doc = Document.parse(document([service(health_check={})]))
    assert doc.services[0].health_check == HealthCheck()
    assert doc.to_dict()["services"][0]["health_check"] == {}
    assert Document.parse(document()).services[0].health_check is None


def test_outlier_true_false_and_absent() -> None:
    assert Document.parse(document([service(outlier=False)])).services[0].outlier is None
    assert Document.parse(document([service(outlier=True)])).services[0].outlier == OutlierDetection()
    assert Document.parse(document()).services[0].outlier == OutlierDetection()
    assert "outlier" not in Document.parse(document([service(outlier=True)])).to_dict()["services"][0]


def test_hash_on_each_key_kind() -> None:
    for key, expected in (({"header": "X-User"}, HashOn(header="X-User")),
                          ({"cookie": "sid"}, HashOn(cookie="sid")), ({"client": True}, HashOn(client=True))):
        doc = Document.parse(document([service(balancer={"policy": "hash", "hash_on": key})]))
        assert doc.services[0].balancer.hash_on == expected
        assert doc.to_dict()["services"][0]["balancer"] == {"policy": "hash", "hash_on": key}


def test_retry_on_statuses_may_be_written_as_numbers() -> None:
    doc = Document.parse(document([service(retries={"retry_on": [502, "503"]})]))
    assert doc.services[0].retries.retry_on == ("502", "503")
    assert doc.to_dict()["services"][0]["retries"] == {"retry_on": ["502", "503"]}


def test_an_empty_idempotency_header_means_methods_only_and_is_kept() -> None:
    doc = Document.parse(document([service(retries={"idempotency_header": ""})]))
    assert doc.services[0].retries.idempotency_header == ""
    assert Document.parse(doc.to_dict()) == doc
    assert doc.to_dict()["services"][0]["retries"] == {"idempotency_header": ""}


def test_endpoint_weight_is_not_identity_but_is_printed_and_diffed() -> None:
    one = Document.parse(document([service(endpoints=["http://a:1"])]))
    three = Document.parse(document([service(endpoints=[{"url": "http://a:1", "weight": 3}])]))
    assert one.services[0].endpoints[0] == three.services[0].endpoints[0]
    assert hash(one.services[0].endpoints[0]) == hash(three.services[0].endpoints[0])
    change = diff(one, three)
    assert change.summary() == "~1 service"
    assert 'endpoints ["http://a:1:1"]' not in change.to_text()
    assert change.to_text() == ('~ service orders: endpoints ["http://a:1"] -> '
                                '[{"url": "http://a:1", "weight": 3}]')


def test_diff_names_the_policy_that_changed() -> None:
    before = Document.parse(document([service()], [route()]))
    after = Document.parse(document([service(retries={"attempts": 3}, outlier=False)],
                                    [route(timeouts={"total": "2s"}, websocket=True)]))
    text = diff(before, after).to_text().splitlines()
    assert text == ['~ service orders: outlier {} -> false; retries {} -> {"attempts": 3}',
                    '~ route api: timeouts null -> {"total": "2s"}; websocket false -> true']


# ---------------------------------------------------------------------------------------------
# Refusals: the field, and the value when there is one

REFUSED: list[tuple[str, dict[str, Any], str, str, object]] = [
    ("weight too big", document([service(endpoints=[{"url": "http://a:1", "weight": 1001}])]),
     "services[orders].endpoints[0].weight", "from 1 to 1000", 1001),
    ("weight zero", document([service(endpoints=[{"url": "http://a:1", "weight": 0}])]),
     "services[orders].endpoints[0].weight", "from 1 to 1000", 0),
    ("weight boolean", document([service(endpoints=[{"url": "http://a:1", "weight": True}])]),
     "services[orders].endpoints[0].weight", "from 1 to 1000", True),
    ("endpoint without url", document([service(endpoints=[{"weight": 2}])]),
     "services[orders].endpoints[0].url", "is required", None),
    ("endpoint bad url", document([service(endpoints=[{"url": "ftp://a:1"}])]),
     "services[orders].endpoints[0].url", "http:// or https://", "ftp://a:1"),
    ("endpoint unknown key", document([service(endpoints=[{"url": "http://a:1", "wieght": 2}])]),
     "services[orders].endpoints[0].wieght", "unknown field", None),
    ("same endpoint twice, other weight",
     document([service(endpoints=["http://a:1", {"url": "http://a:1", "weight": 2}])]),
     "services[orders].endpoints[1]", "listed twice", "http://a:1"),
    ("unknown balancer", document([service(balancer={"policy": "random"})]),
     "services[orders].balancer.policy", "must be one of ewma, round_robin, hash", "random"),
    ("hash without hash_on", document([service(balancer={"policy": "hash"})]),
     "services[orders].balancer.hash_on", "is required by policy hash", None),
    ("hash_on for ewma", document([service(balancer={"hash_on": {"client": True}})]),
     "services[orders].balancer.hash_on", "only for policy hash", {"client": True}),
    ("two hash keys", document([service(balancer={"policy": "hash",
                                                  "hash_on": {"header": "X-A", "cookie": "b"}})]),
     "services[orders].balancer.hash_on", "exactly one of header, cookie or client",
     {"header": "X-A", "cookie": "b"}),
    ("hash_on client false", document([service(balancer={"policy": "hash", "hash_on": {"client": False}})]),
     "services[orders].balancer.hash_on.client", "must be true", False),
    ("hash_on bad header", document([service(balancer={"policy": "hash", "hash_on": {"header": "X A"}})]),
     "services[orders].balancer.hash_on.header", "not a valid header name", "X A"),
    ("negative slow start", document([service(balancer={"slow_start": -1})]),
     "services[orders].balancer.slow_start", "0 or more", -1),
    ("zero interval", document([service(health_check={"interval": 0})]),
     "services[orders].health_check.interval", "more than 0", 0),
    ("bad interval text", document([service(health_check={"interval": "5 seconds"})]),
     "services[orders].health_check.interval", "must be a duration", "5 seconds"),
    ("health path with query", document([service(health_check={"path": "/h?x=1"})]),
     "services[orders].health_check.path", "plain path", "/h?x=1"),
    ("health path relative", document([service(health_check={"path": "healthz"})]),
     "services[orders].health_check.path", "must start with '/'", "healthz"),
    ("threshold zero", document([service(health_check={"healthy_threshold": 0})]),
     "services[orders].health_check.healthy_threshold", "from 1 to 1000", 0),
    ("status out of range", document([service(health_check={"statuses": [200, 600]})]),
     "services[orders].health_check.statuses[1]", "HTTP status from 100 to 599", 600),
    ("no statuses", document([service(health_check={"statuses": []})]),
     "services[orders].health_check.statuses", "at least one status", []),
    ("status twice", document([service(health_check={"statuses": [200, 200]})]),
     "services[orders].health_check.statuses[1]", "listed twice", 200),
    ("health host wildcard", document([service(health_check={"host": "*.example.com"})]),
     "services[orders].health_check.host", "host name", "*.example.com"),
    ("health host bad port", document([service(health_check={"host": "a.example:99999"})]),
     "services[orders].health_check.host", "host name", "a.example:99999"),
    ("outlier threshold zero", document([service(outlier={"consecutive_5xx": 0})]),
     "services[orders].outlier.consecutive_5xx", "from 1 to 1000", 0),
    ("outlier percent", document([service(outlier={"max_ejected_percent": 101})]),
     "services[orders].outlier.max_ejected_percent", "from 0 to 100", 101),
    ("outlier base over max", document([service(outlier={"base_ejection": "10m"})]),
     "services[orders].outlier.base_ejection", "must not exceed max_ejection", "10m"),
    ("outlier max under base", document([service(outlier={"max_ejection": "10s"})]),
     "services[orders].outlier.max_ejection", "must not exceed max_ejection", "10s"),
    ("outlier as string", document([service(outlier="off")]),
     "services[orders].outlier", "must be a mapping", "off"),
    ("breaker zero", document([service(circuit_breaker={"max_requests": 0})]),
     "services[orders].circuit_breaker.max_requests", "from 1 to 1000000", 0),
    ("attempts zero", document([service(retries={"attempts": 0})]),
     "services[orders].retries.attempts", "from 1 to 10", 0),
    ("attempts eleven", document([service(retries={"attempts": 11})]),
     "services[orders].retries.attempts", "from 1 to 10", 11),
    ("unknown retry_on", document([service(retries={"retry_on": ["reset", "500"]})]),
     "services[orders].retries.retry_on[1]", "must be one of connect-failure", "500"),
    ("retry_on twice", document([service(retries={"retry_on": ["reset", "reset"]})]),
     "services[orders].retries.retry_on[1]", "listed twice", "reset"),
    ("retry status out of range", document([service(retries={"statuses": [99]})]),
     "services[orders].retries.statuses[0]", "HTTP status from 100 to 599", 99),
    ("backoff base over max", document([service(retries={"backoff_base": "1s"})]),
     "services[orders].retries.backoff_base", "must not exceed backoff_max", "1s"),
    ("backoff max under base", document([service(retries={"backoff_max": "10ms"})]),
     "services[orders].retries.backoff_max", "must not exceed backoff_max", "10ms"),
    ("budget percent", document([service(retries={"budget_percent": 150})]),
     "services[orders].retries.budget_percent", "from 0 to 100", 150),
    ("budget min negative", document([service(retries={"budget_min": -1})]),
     "services[orders].retries.budget_min", "number from 0", -1),
    ("retry body negative", document([service(retries={"max_body": -1})]),
     "services[orders].retries.max_body", "from 0 to", -1),
    ("bad idempotency header", document([service(retries={"idempotency_header": "Idem Key"})]),
     "services[orders].retries.idempotency_header", "not a valid header name", "Idem Key"),
    ("timeout zero", document([service(timeouts={"connect": 0})]),
     "services[orders].timeouts.connect", "more than 0", 0),
    ("total under connect", document([service(timeouts={"connect": "5s", "total": "1s"})]),
     "services[orders].timeouts.total", "at least connect (5s)", "1s"),
    ("total under idle", document([service(timeouts={"idle": "2m", "total": 60})]),
     "services[orders].timeouts.total", "at least idle (2m)", 60),
    ("unknown timeout", document([service(timeouts={"read": "1s"})]),
     "services[orders].timeouts.read", "unknown field", None),
    ("route retry_on", document(routes=[route(retries={"retry_on": ["connect-failure", "oops"]})]),
     "routes[api].retries.retry_on[1]", "must be one of", "oops"),
    ("route timeouts", document(routes=[route(timeouts={"response": "10s", "total": "5s"})]),
     "routes[api].timeouts.total", "at least response (10s)", "5s"),
    ("rate without requests", document(routes=[route(rate_limit={"per": "1s"})]),
     "routes[api].rate_limit.requests", "is required", None),
    ("rate zero", document(routes=[route(rate_limit={"requests": 0})]),
     "routes[api].rate_limit.requests", "from 1 to", 0),
    ("burst zero", document(routes=[route(rate_limit={"requests": 5, "burst": 0})]),
     "routes[api].rate_limit.burst", "from 1 to", 0),
    ("rate per zero", document(routes=[route(rate_limit={"requests": 5, "per": "0s"})]),
     "routes[api].rate_limit.per", "more than 0", "0s"),
    ("rate header", document(routes=[route(rate_limit={"requests": 5, "header": ""})]),
     "routes[api].rate_limit.header", "must not be empty", ""),
    ("websocket not boolean", document(routes=[route(websocket="yes")]),
     "routes[api].websocket", "true or false", "yes"),
    ("route circuit breaker", document(routes=[route(circuit_breaker={})]),
     "routes[0].circuit_breaker", "unknown field", None),
]


@pytest.mark.parametrize(("data", "field", "message", "value"),
                         [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_refused_policies_name_the_field_and_the_value(data: dict[str, Any], field: str, message: str,
                                                       value: object) -> None:
    error = refusal(data)
    assert error.field == field
    assert message in error.message
    assert error.value == value


# ---------------------------------------------------------------------------------------------
# Round trips of generated documents

_durations = st.one_of(st.integers(1, 3600), st.sampled_from(["250ms", "1.5s", "2m", "1h", "10ms"]),
                       st.floats(0.001, 3600, allow_nan=False))
_statuses = st.lists(st.integers(100, 599), min_size=1, max_size=4, unique=True)


def _some(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A mapping with any subset of these fields."""
    return st.fixed_dictionaries({}, optional=fields)


_balancers = st.one_of(
    _some(policy=st.sampled_from(["ewma", "round_robin"]), slow_start=st.just(0) | _durations,
          decay=_durations),
    st.builds(lambda key: {"policy": "hash", "hash_on": key},
              st.sampled_from([{"header": "X-User"}, {"cookie": "sid"}, {"client": True}])))
_health = _some(path=st.sampled_from(["/", "/healthz", "/status/ready"]), interval=_durations,
                timeout=_durations, healthy_threshold=st.integers(1, 10),
                unhealthy_threshold=st.integers(1, 10), statuses=_statuses,
                host=st.sampled_from(["a.example", "b.internal:8080"]))
_outlier = st.one_of(st.booleans(), st.builds(
    lambda base, extra, fields: {"base_ejection": base, "max_ejection": base + extra, **fields},
    st.integers(1, 100), st.integers(0, 100),
    _some(consecutive_5xx=st.integers(1, 20), consecutive_failures=st.integers(1, 20),
          max_ejected_percent=st.integers(0, 100))))
_backoff = st.sampled_from([{}, {"backoff_base": 0, "backoff_max": 0}, {"backoff_base": "25ms"},
                            {"backoff_max": "2s"}, {"backoff_base": 0.5, "backoff_max": "1s"},
                            {"backoff_base": "1s", "backoff_max": "1s"}])
_retry_fields = _some(
    attempts=st.integers(1, 10),
    retry_on=st.lists(st.sampled_from(["connect-failure", "reset", "timeout", "502", "503", "504"]),
                      unique=True),
    statuses=st.lists(st.integers(100, 599), max_size=3, unique=True),
    idempotency_header=st.sampled_from(["", "Idempotency-Key", "X-Idem"]),
    max_body=st.integers(0, 1 << 20), budget_percent=st.floats(0, 100), budget_min=st.floats(0, 50))
_retries = st.builds(lambda fields, backoff: {**fields, **backoff}, _retry_fields, _backoff)
_timeouts = st.builds(lambda fields, total: {**fields, "total": total} if total else fields,
                      _some(connect=_durations, response=_durations, idle=_durations),
                      st.none() | st.just("24h"))
_rate = st.builds(lambda requests, fields: {"requests": requests, **fields}, st.integers(1, 10_000),
                  _some(per=_durations, burst=st.integers(1, 1000), header=st.just("X-Api-Key")))
_endpoints = st.lists(st.sampled_from(["http://a:1", "http://b:2", "https://c"]), min_size=1,
                      unique=True).flatmap(lambda urls: st.tuples(*[
                          st.one_of(st.just(u), st.builds(lambda w, u=u: {"url": u, "weight": w},
                                                          st.integers(1, 1000))) for u in urls]))
_services = st.builds(lambda endpoints, fields: {"name": "orders", "endpoints": list(endpoints), **fields},
                      _endpoints,
                      _some(balancer=_balancers, health_check=_health, outlier=_outlier,
                            circuit_breaker=_some(max_requests=st.integers(1, 5000),
                                                  max_pending=st.integers(1, 5000)),
                            retries=_retries, timeouts=_timeouts))
_routes = st.builds(lambda fields: route(**fields),
                    _some(retries=_retries, timeouts=_timeouts, rate_limit=_rate, websocket=st.booleans()))


@settings(max_examples=200, deadline=None)
@given(_services, _routes)
def test_generated_documents_round_trip(svc: dict[str, Any], rt: dict[str, Any]) -> None:
    doc = Document.parse(document([svc], [rt]))
    printed = doc.to_dict()
    again = Document.parse(printed)
    assert again == doc
    assert again.to_dict() == printed
    # through YAML, as `peel export` then `peel apply -f` does
    assert Document.parse(yaml.safe_load(yaml.safe_dump(printed))).to_dict() == printed
    assert not diff(doc, again)


# ---------------------------------------------------------------------------------------------
# The compiled table


def test_compiled_routes_carry_the_effective_policies() -> None:
    data = yaml.safe_load(FULL)
    data["routes"].append({"name": "plain", "match": {"path_prefix": "/orders"}, "service": "orders"})
    doc = Document.parse(data)
    table = compile_document(doc, 1)
    orders = table.services["orders"]
    assert orders.spec is doc.service("orders")
    assert [(e.url, e.weight) for e in orders.endpoints] == [("http://10.0.0.7:9000", 1),
                                                              ("http://10.0.0.8:9000", 3)]
    assert orders.balancer.hash_on == HashOn(cookie="session")
    assert orders.health_check is not None and orders.health_check.path == "/ready"
    assert orders.outlier == OutlierDetection(3, 2, 10.0, 120.0, 34)
    assert orders.circuit_breaker == CircuitBreaker(200, 50)
    assert table.services["legacy"].outlier is None
    assert table.services["legacy"].health_check is None

    api, plain, default = table.route("api"), table.route("plain"), table.route("legacy-default")
    assert api is not None and plain is not None and default is not None
    # the route's blocks replace the service's whole block
    assert api.retries == RetryPolicy(attempts=1)
    assert api.timeouts == Timeouts(total=90.0)
    assert api.rate_limit == RateLimit(100, 60.0, 20, "X-Api-Key") and api.websocket
    # without them, the service's
    assert plain.retries == orders.spec.retries and plain.retries.attempts == 3
    assert plain.timeouts == Timeouts(0.25, 5.0, 30.0, 60.0)
    assert plain.rate_limit is None and not plain.websocket
    # and a service that declares nothing gives the defaults
    assert default.retries == RetryPolicy() and default.timeouts == Timeouts()


def test_a_migrating_route_uses_its_own_policy_for_both_sides() -> None:
    data = yaml.safe_load(FULL)
    data["routes"][0]["migration"] = {"to": "legacy", "stage": "canary", "percent": 50}
    table = compile_document(Document.parse(data), 1)
    api = table.route("api")
    assert api is not None and api.migration is not None
    assert api.service.name == "orders"
    assert api.retries == RetryPolicy(attempts=1) and api.timeouts == Timeouts(total=90.0)
    # without its own block, the from-side service's
    del data["routes"][0]["retries"]
    api = compile_document(Document.parse(data), 2).route("api")
    assert api is not None and api.retries.attempts == 3


def test_openapi_defaults_are_the_model_defaults() -> None:
    """Each default the schema states, when written, parses to the same policy as leaving it out."""
    for policy in (Balancer, HealthCheck, OutlierDetection, CircuitBreaker, RetryPolicy, RateLimit):
        base = {"requests": 1} if policy is RateLimit else {}
        for name, prop in SCHEMAS[policy.__name__]["properties"].items():
            if "default" in prop:
                written = policy.parse({**base, name: prop["default"]}, "x")
                assert written == policy.parse(base, "x"), (policy, name)


def test_the_reference_example_in_docs_resilience_parses_and_round_trips() -> None:
    text = (Path(__file__).parents[2] / "docs" / "resilience.md").read_text()
    found = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert found is not None
    doc = Document.parse(yaml.safe_load(found.group(1)))
    assert Document.parse(doc.to_dict()) == doc
    write = doc.route("orders-write")
    assert write is not None and write.retries == RetryPolicy(attempts=1)
    assert compile_document(doc, 1).route("orders") is not None
