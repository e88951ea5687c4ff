"""Resilience policies on a real `peel serve`, against fault-injecting upstreams on real sockets.

One gateway serves one document (below): a service and a route per behaviour, each with its own
`FaultUpstream`s, so one test's ejections, open circuits or spent tokens never leak into another.
Each test switches its upstreams' faults, sends requests with http.client and asserts what a client
sees (status, Peel's problem `code`, headers, timing) and what each upstream received.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.sockets.conftest import wait_for
from tests.sockets.faults import FaultSet, FaultUpstream
from tests.sockets.serve_harness import PeelServe

UPSTREAMS = ("retry_a", "retry_b", "post_a", "post_b", "mid_a", "mid_b", "after_a", "outlier_a",
             "outlier_b", "circuit_a", "hang_a", "trickle_a", "slow_a", "deadline_a", "limit_a",
             "ewma_a", "ewma_b", "budget_a", "budget_b")

# Retry tests pin round-robin (so half the first attempts go to the faulty endpoint), switch off
# outlier ejection (so it does not hide the faulty one) and lift the budget (retries are the point).
FAST_RETRIES = "budget_percent: 100, backoff_base: 1ms, backoff_max: 5ms"
DOCUMENT = """\
services:
  - name: retry
    endpoints: [{retry_a}, {retry_b}]
    balancer: {{policy: round_robin}}
    outlier: false
    retries: {{attempts: 3, retry_on: [connect-failure, reset, "503"], {fast}}}
  - name: post
    endpoints: [{post_a}, {post_b}]
    balancer: {{policy: round_robin}}
    outlier: false
    retries: {{attempts: 3, retry_on: [connect-failure, reset], {fast}}}
  - name: mid
    endpoints: [{mid_a}, {mid_b}]
    balancer: {{policy: round_robin}}
    outlier: false
    retries: {{attempts: 3, retry_on: [connect-failure, reset, timeout], {fast}}}
    timeouts: {{idle: 300ms}}
  - name: after
    endpoints: [{after_a}]
    outlier: false
    retries: {{attempts: 2, retry_on: ["503"], {fast}}}
  - name: outlier
    endpoints: [{outlier_a}, {outlier_b}]
    balancer: {{policy: round_robin}}
    outlier: {{consecutive_5xx: 3, base_ejection: 2s, max_ejection: 10s, max_ejected_percent: 50}}
    retries: {{attempts: 1}}
  - name: circuit
    endpoints: [{circuit_a}]
    circuit_breaker: {{max_requests: 2}}
  - name: hang
    endpoints: [{hang_a}]
    outlier: false
    retries: {{attempts: 1}}
    timeouts: {{response: 300ms}}
  - name: trickle
    endpoints: [{trickle_a}]
    timeouts: {{total: 400ms}}
  - name: slow
    endpoints: [{slow_a}]
    outlier: false
    retries: {{attempts: 1}}
  - name: deadline
    endpoints: [{deadline_a}]
  - name: limit
    endpoints: [{limit_a}]
  - name: ewma
    endpoints: [{ewma_a}, {ewma_b}]
    outlier: false
  - name: budget
    endpoints: [{budget_a}, {budget_b}]
    outlier: false
    retries: {{attempts: 3, retry_on: ["503"], budget_percent: 20, budget_min: 0, backoff_base: 1ms,
               backoff_max: 1ms}}
routes:
  - {{name: retry, match: {{path_prefix: /retry}}, service: retry}}
  - {{name: post, match: {{path_prefix: /post}}, service: post}}
  - {{name: mid, match: {{path_prefix: /mid}}, service: mid}}
  - {{name: after, match: {{path_prefix: /after}}, service: after}}
  - name: after-short
    match: {{path_prefix: /short-after}}
    service: after
    timeouts: {{total: 500ms}}
  - {{name: outlier, match: {{path_prefix: /outlier}}, service: outlier}}
  - {{name: circuit, match: {{path_prefix: /circuit}}, service: circuit}}
  - {{name: response-timeout, match: {{path_prefix: /timeout/response}}, service: hang}}
  - name: total-timeout
    match: {{path_prefix: /timeout/total}}
    service: hang
    retries: {{attempts: 3, retry_on: [timeout], {fast}}}
    timeouts: {{response: 300ms, total: 500ms}}
  - {{name: trickle, match: {{path_prefix: /trickle}}, service: trickle}}
  - {{name: slow, match: {{path_prefix: /slow}}, service: slow}}
  - {{name: deadline, match: {{path_prefix: /deadline}}, service: deadline}}
  - name: limited
    match: {{path_prefix: /limited}}
    service: limit
    rate_limit: {{requests: 3, per: 1m}}
  - name: limited-by-key
    match: {{path_prefix: /keyed}}
    service: limit
    rate_limit: {{requests: 2, per: 1m, header: X-Client}}
  - {{name: ewma, match: {{path_prefix: /ewma}}, service: ewma}}
  - {{name: budget, match: {{path_prefix: /budget}}, service: budget}}
"""

SETTINGS = """\
[proxy]
connect_timeout = 1.0
response_timeout = 5.0
idle_timeout = 5.0
"""


@dataclass
class Gateway:
    peel: PeelServe
    faults: FaultSet
    token: str

    def __getitem__(self, name: str) -> FaultUpstream:
        return self.faults[name]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float

    @property
    def code(self) -> str | None:
        """Peel's error code, when the answer is a problem document."""
        if not self.headers.get("content-type", "").startswith("application/problem+json"):
            return None
        return str(json.loads(self.body)["code"])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    faults = FaultSet(UPSTREAMS).start()
    peel = PeelServe(tmp_path_factory.mktemp("resilience"), extra_settings=SETTINGS)
    token = peel.upgrade_with_token("ops")
    peel.commit(yaml.safe_load(DOCUMENT.format(fast=FAST_RETRIES, **{n: faults[n].url for n in UPSTREAMS})))
    peel.start()
    yield Gateway(peel, faults, token)
    peel.stop()
    faults.stop()


@pytest.fixture(autouse=True)
def fresh(gateway: Gateway) -> None:
    for name in UPSTREAMS:
        gateway[name].set("ok")
        gateway[name].clear()


def call(gw: Gateway, method: str, target: str, *, body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10.0) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", gw.peel.public_port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data,
                      time.monotonic() - started)
    finally:
        conn.close()


def live_endpoint(gw: Gateway, service: str, url: str) -> dict[str, Any]:
    """The endpoint's entry in the admin view's `live` state of the service (summed over processes)."""
    status, raw = gw.peel.admin_get(f"/api/v1/services/{service}", gw.token)
    body = json.loads(raw)
    assert status == 200, body
    entry: dict[str, Any] = body["live"]["endpoints"][url]
    return entry


# -- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["reset", "refuse", "status-503"])
def test_a_get_moves_to_the_healthy_endpoint(gateway: Gateway, fault: str) -> None:
    bad, good = gateway["retry_a"], gateway["retry_b"]
    if fault == "status-503":
        bad.set("status", status=503)
    else:
        bad.set(fault)
    answers = [call(gateway, "GET", f"/retry/{i}") for i in range(10)]
    assert [(a.status, a.body) for a in answers] == [(200, b"retry_b")] * 10
    assert good.count() == 10
    if fault != "refuse":
        # round-robin sent (at least) about half the first attempts to the faulty endpoint
        assert bad.count() >= 3


def test_a_post_is_not_retried_and_fails_with_502(gateway: Gateway) -> None:
    bad, good = gateway["post_a"], gateway["post_b"]
    bad.set("reset")
    answers = {f"/post/{i}": call(gateway, "POST", f"/post/{i}", body=b"order") for i in range(6)}
    failed = {r.path for r in bad.received}
    assert failed, "round-robin should have sent some POSTs to the resetting endpoint"
    for path, answer in answers.items():
        if path in failed:
            assert (answer.status, answer.code) == (502, "upstream-reset"), (path, answer)
            assert bad.count(path=path) == 1 and good.count(path=path) == 0
        else:
            assert (answer.status, answer.body) == (200, b"post_b")


def test_a_post_with_an_idempotency_key_is_retried(gateway: Gateway) -> None:
    bad, good = gateway["post_a"], gateway["post_b"]
    bad.set("reset")
    answers = [call(gateway, "POST", f"/post/k{i}", body=b"order", headers={"Idempotency-Key": f"k{i}"})
               for i in range(6)]
    assert [(a.status, a.body) for a in answers] == [(200, b"post_b")] * 6
    assert bad.count("POST") >= 2
    assert all(good.count(path=f"/post/k{i}") == 1 for i in range(6))


def test_no_retry_once_response_bytes_went_downstream(gateway: Gateway) -> None:
    bad, good = gateway["mid_a"], gateway["mid_b"]
    bad.set("hang_mid_body")
    cut = []
    for i in range(4):
        conn = http.client.HTTPConnection("127.0.0.1", gateway.peel.public_port, timeout=10)
        conn.request("GET", f"/mid/{i}")
        response = conn.getresponse()
        try:
            body = response.read()
        except (http.client.IncompleteRead, ConnectionError):
            cut.append(f"/mid/{i}")
        else:
            assert (response.status, body) == (200, b"mid_b")
        conn.close()
    assert cut and cut == [r.path for r in bad.received]
    assert all(bad.count(path=p) == 1 and good.count(path=p) == 0 for p in cut)


def test_retry_after_is_honoured(gateway: Gateway) -> None:
    up = gateway["after_a"]
    up.set("retry_after", retry_after="1", times=1)
    answer = call(gateway, "GET", "/after/1")
    assert (answer.status, answer.body) == (200, b"after_a")
    assert up.count() == 2 and answer.elapsed >= 0.9


def test_retry_after_beyond_the_deadline_is_not_waited_for(gateway: Gateway) -> None:
    up = gateway["after_a"]
    up.set("retry_after", retry_after="5", times=1)
    answer = call(gateway, "GET", "/short-after/1")
    # the upstream's own answer comes back at once rather than a retry after the deadline
    assert answer.status == 503 and answer.headers.get("retry-after") == "5"
    assert up.count() == 1 and answer.elapsed < 3.0  # waiting would take the 5 s


def test_the_retry_budget_bounds_retries_in_an_outage(gateway: Gateway) -> None:
    for name in ("budget_a", "budget_b"):
        gateway[name].set("status", status=503)
    answers = [call(gateway, "GET", f"/budget/{i}") for i in range(50)]
    assert {a.status for a in answers} == {503}
    sent = gateway["budget_a"].count() + gateway["budget_b"].count()
    # three attempts each would be 150; the budget allows retries for about 20 % of requests
    assert 55 <= sent <= 62, sent



# -- outlier ejection and circuit breaking -----------------------------------------------------


def test_an_endpoint_answering_5xx_is_ejected_for_the_base_time(gateway: Gateway) -> None:
    bad, good = gateway["outlier_a"], gateway["outlier_b"]
    bad.set("status", status=500)
    for i in range(20):
        call(gateway, "GET", f"/outlier/{i}")
        if bad.count() == 3:
            break
    ejected_at = time.monotonic()
    assert bad.count() == 3
    # the admin view may lag the data plane by a publishing interval
    wait_for(lambda: live_endpoint(gateway, "outlier", bad.url)["ejected"] is True, 2, "ejected in the view")
    assert live_endpoint(gateway, "outlier", good.url)["ejected"] is False
    answers = [call(gateway, "GET", f"/outlier/after-{i}") for i in range(20)]
    assert [(a.status, a.body) for a in answers] == [(200, b"outlier_b")] * 20
    assert bad.count() == 3
    # back after the base ejection time (2 s), when it answers again
    bad.set("ok")
    wait_for(lambda: call(gateway, "GET", "/outlier/probe").body == b"outlier_a", 10, "readmission")
    assert time.monotonic() - ejected_at >= 1.8
    wait_for(lambda: live_endpoint(gateway, "outlier", bad.url)["ejected"] is False, 2,
             "readmitted in the view")


def test_the_circuit_opens_beyond_max_requests(gateway: Gateway) -> None:
    up = gateway["circuit_a"]
    up.set("slow", delay=1.5)
    slow: list[Answer] = []
    threads = [threading.Thread(target=lambda i=i: slow.append(call(gateway, "GET", f"/circuit/{i}")))
               for i in range(2)]
    for thread in threads:
        thread.start()
    wait_for(lambda: up.count() == 2, 5, "two requests in flight")
    refused = [call(gateway, "GET", f"/circuit/extra-{i}") for i in range(3)]
    for answer in refused:
        assert (answer.status, answer.code) == (503, "circuit-open"), answer
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.elapsed < 1.2  # at once: queueing behind the slow pair would take 1.5 s
    for thread in threads:
        thread.join(10)
    assert [a.status for a in slow] == [200, 200] and up.count() == 2
    assert call(gateway, "GET", "/circuit/after").status == 200
    # the refusals are in /metrics too
    _, text = gateway.peel.admin_get("/metrics", gateway.token)
    assert 'peel_circuit_open_total{service="circuit"} 3.0' in text.decode().splitlines()


# -- timeouts and deadlines ---------------------------------------------------------------------


def test_response_timeout(gateway: Gateway) -> None:
    gateway["hang_a"].set("hang_before_headers")
    answer = call(gateway, "GET", "/timeout/response/1")
    assert (answer.status, answer.code) == (504, "upstream-timeout")
    assert 0.25 <= answer.elapsed < 3.0  # margin for a loaded machine


def test_total_timeout_caps_all_attempts(gateway: Gateway) -> None:
    up = gateway["hang_a"]
    up.set("hang_before_headers")
    answer = call(gateway, "GET", "/timeout/total/1")
    # three attempts of 300 ms would take 900 ms: the total of 500 ms ends the second one
    assert (answer.status, answer.code) == (504, "deadline-exceeded")
    # count == 2 is the precise check (three attempts without the cap); the upper bound only
    # keeps the order of magnitude, with a margin for a loaded machine
    assert 0.45 <= answer.elapsed < 2.0
    assert up.count() == 2


def test_total_timeout_cuts_a_trickling_body(gateway: Gateway) -> None:
    gateway["trickle_a"].set("trickle", delay=0.2)
    conn = http.client.HTTPConnection("127.0.0.1", gateway.peel.public_port, timeout=10)
    started = time.monotonic()
    conn.request("GET", "/trickle/1")
    response = conn.getresponse()
    assert response.status == 200
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        response.read()
    conn.close()
    # the read above was cut (a whole body reads without error); the whole body would take
    # 9 x 200 ms, which this bound need not separate from the cut under load
    assert time.monotonic() - started < 3.0


def test_an_incoming_deadline_caps_the_wait(gateway: Gateway) -> None:
    gateway["slow_a"].set("slow", delay=5.0)
    answer = call(gateway, "GET", "/slow/1", headers={"Peel-Timeout-Ms": "50"})
    assert (answer.status, answer.code) == (504, "deadline-exceeded")
    assert answer.elapsed < 2.5  # far below the 5 s the upstream takes


def test_a_grpc_timeout_caps_the_wait_too(gateway: Gateway) -> None:
    gateway["slow_a"].set("slow", delay=5.0)
    answer = call(gateway, "GET", "/slow/2", headers={"grpc-timeout": "50m"})
    assert (answer.status, answer.code) == (504, "deadline-exceeded")
    assert answer.elapsed < 2.5  # far below the 5 s the upstream takes


def test_an_expired_deadline_is_not_forwarded(gateway: Gateway) -> None:
    up = gateway["deadline_a"]
    answer = call(gateway, "GET", "/deadline/expired", headers={"Peel-Timeout-Ms": "0"})
    assert (answer.status, answer.code) == (504, "deadline-exceeded")
    assert up.count() == 0


def test_the_remaining_deadline_is_propagated(gateway: Gateway) -> None:
    up = gateway["deadline_a"]
    assert call(gateway, "GET", "/deadline/ok", headers={"Peel-Timeout-Ms": "5000"}).status == 200
    sent = up.received[0].header("Peel-Timeout-Ms")
    assert sent is not None and 4000 < int(sent) < 5000


def test_a_malformed_deadline_is_refused(gateway: Gateway) -> None:
    answer = call(gateway, "GET", "/deadline/bad", headers={"Peel-Timeout-Ms": "soon"})
    assert (answer.status, answer.code) == (400, "bad-deadline")
    assert gateway["deadline_a"].count() == 0


# -- rate limits -------------------------------------------------------------------------------


def test_a_burst_then_429_with_rate_limit_headers(gateway: Gateway) -> None:
    answers = [call(gateway, "GET", f"/limited/{i}") for i in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 429]
    limited = answers[-1]
    assert limited.code == "rate-limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["ratelimit-policy"] and limited.headers["ratelimit"]
    assert "q=3" in limited.headers["ratelimit-policy"] and "w=60" in limited.headers["ratelimit-policy"]
    assert gateway["limit_a"].count() == 3


def test_a_rate_limit_keyed_by_header_gives_each_key_its_bucket(gateway: Gateway) -> None:
    first = [call(gateway, "GET", "/keyed/a", headers={"X-Client": "a"}).status for _ in range(3)]
    assert first == [200, 200, 429]
    assert call(gateway, "GET", "/keyed/b", headers={"X-Client": "b"}).status == 200


# -- balancing ---------------------------------------------------------------------------------


def test_ewma_moves_traffic_away_from_a_slow_endpoint(gateway: Gateway) -> None:
    slow, fast = gateway["ewma_a"], gateway["ewma_b"]
    slow.set("slow", delay=0.2)
    conn = http.client.HTTPConnection("127.0.0.1", gateway.peel.public_port, timeout=10)
    for i in range(100):
        conn.request("GET", f"/ewma/{i}")
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    conn.close()
    assert fast.count() >= 85, (slow.count(), fast.count())

