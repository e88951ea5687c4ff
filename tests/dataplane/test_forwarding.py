"""The data plane in process: routing, rewrites, headers, retries, timeouts, breaker, migrations,
rate limits, against scripted in-memory upstreams (see tests/dataplane/conftest.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.dataplane.conftest import PlaneFactory
from tests.fakes.upstream import (
    FakeLink,
    FakeRequest,
    closes_reused,
    echo,
    garbage,
    hang,
    ok,
    reset,
    scripted,
    status,
)

ORDERS_A, ORDERS_B = "http://orders-a:80", "http://orders-b:80"
LEGACY = "http://legacy:80"
NEW = "http://new:80"
# Retries pinned to round-robin over two endpoints without outlier ejection (it would hide the
# faulty one), with a budget that never runs out and a backoff too short to matter.
RETRIES = {"attempts": 3, "retry_on": ["connect-failure", "reset", "503"], "budget_percent": 100,
           "backoff_base": "1ms", "backoff_max": "2ms"}


def document(**route: Any) -> dict[str, Any]:
    """One `orders` service on two endpoints, `legacy` and `new`; `route` adds fields to /orders."""
    orders = {"name": "orders", "match": {"path_prefix": "/orders"}, "service": "orders", **route}
    return {
        "services": [
            {"name": "orders", "endpoints": [ORDERS_A, ORDERS_B], "outlier": False,
             "balancer": {"policy": "round_robin"}, "retries": RETRIES},
            {"name": "legacy", "endpoints": [LEGACY], "outlier": False},
            {"name": "new", "endpoints": [NEW], "outlier": False},
        ],
        "routes": [
            orders,
            {"name": "api", "match": {"path_prefix": "/api"}, "service": "legacy",
             "rewrite": {"path_prefix": "/v2"}},
        ],
    }


def both(handler: Any) -> dict[str, Any]:
    return {ORDERS_A: handler, ORDERS_B: handler, LEGACY: echo(), NEW: ok(b"new")}


# -- routing and rewriting ---------------------------------------------------------------------------

def test_a_request_goes_to_the_service_its_route_names(plane: PlaneFactory) -> None:
    p = plane(document(), both(echo()))

    async def go() -> None:
        r = await p.request("GET", "/orders/7", query=b"x=1")
        assert (r.status, r.body) == (200, b"GET /orders/7?x=1")
        assert p[ORDERS_A].count() + p[ORDERS_B].count() == 1
        assert p[LEGACY].count() == 0
        missing = await p.request("GET", "/nowhere")
        assert (missing.status, missing.json()["code"]) == (404, "no-route")
    p.run(go)


def test_a_rewrite_replaces_the_matched_prefix(plane: PlaneFactory) -> None:
    p = plane(document(), both(echo()))

    async def go() -> None:
        r = await p.request("GET", "/api/users/1")
        assert (r.status, r.body) == (200, b"GET /v2/users/1")
        assert p[LEGACY].requests[0].header("host") == "gw.test"  # the client's Host is kept
    p.run(go)


# -- headers -------------------------------------------------------------------------------------------

def test_the_request_id_is_made_forwarded_and_answered(plane: PlaneFactory) -> None:
    p = plane(document(), both(ok(headers=[("X-Request-Id", "the-upstreams-own")])))

    async def go() -> None:
        r = await p.request("GET", "/orders/1")
        made = r.header("x-request-id")
        sent = p.first(ORDERS_A, ORDERS_B)
        assert made and sent.header("x-request-id") == made  # Peel's replaces the upstream's
        kept = await p.request("GET", "/orders/2", headers={"X-Request-Id": "abc-123"})
        assert kept.header("x-request-id") == "abc-123"
    p.run(go)


def test_hop_by_hop_headers_are_stripped_both_ways(plane: PlaneFactory) -> None:
    upstream_headers = [("Connection", "X-Secret-Hop"), ("X-Secret-Hop", "1"), ("Keep-Alive", "timeout=5"),
                        ("X-Kept", "yes")]
    p = plane(document(), both(ok(headers=upstream_headers)))

    async def go() -> None:
        r = await p.request("GET", "/orders/1", headers={
            "Connection": "X-Client-Hop", "X-Client-Hop": "1", "Keep-Alive": "300",
            "Proxy-Authorization": "Basic eA==", "TE": "trailers", "X-End-To-End": "kept"})
        assert r.status == 200
        seen = p.first(ORDERS_A, ORDERS_B)
        assert {"x-client-hop", "keep-alive", "proxy-authorization", "te"}.isdisjoint(seen.names())
        assert seen.header("x-end-to-end") == "kept"
        assert r.header("x-secret-hop") is None and r.header("keep-alive") is None
        assert r.header("x-kept") == "yes"
    p.run(go)


# -- retries -------------------------------------------------------------------------------------------

def test_a_get_that_meets_a_reset_is_retried_on_the_other_endpoint(plane: PlaneFactory) -> None:
    p = plane(document(), {**both(ok(b"b")), ORDERS_A: reset})

    async def go() -> None:
        for _ in range(4):  # round-robin: half the first attempts meet the reset
            r = await p.request("GET", "/orders/1")
            assert (r.status, r.body) == (200, b"b")
        assert p[ORDERS_A].count() == 2 and p[ORDERS_B].count() == 4
    p.run(go)


def test_a_post_that_meets_a_reset_is_not_retried(plane: PlaneFactory) -> None:
    p = plane(document(), {ORDERS_A: reset, ORDERS_B: reset, LEGACY: echo(), NEW: ok()})

    async def go() -> None:
        r = await p.request("POST", "/orders", body=b'{"n": 1}')
        assert (r.status, r.json()["code"]) == (502, "upstream-reset")
        assert p[ORDERS_A].count("POST") + p[ORDERS_B].count("POST") == 1
        assert (p[ORDERS_A].requests + p[ORDERS_B].requests)[0].body == b'{"n": 1}'
    p.run(go)


def test_a_retryable_status_is_retried_and_the_last_answer_kept(plane: PlaneFactory) -> None:
    p = plane(document(), both(status(503, b"busy")))

    async def go() -> None:
        r = await p.request("GET", "/orders/1")
        assert (r.status, r.body) == (503, b"busy")  # the upstream's own answer, after 3 attempts
        assert p[ORDERS_A].count() + p[ORDERS_B].count() == 3
    p.run(go)


# -- the keep-alive race ---------------------------------------------------------------------------

def test_a_stale_keepalive_connection_is_resent_for_an_idempotent_request(plane: PlaneFactory) -> None:
    doc = document(retries={"attempts": 1})  # no retries: only the keep-alive resend is left
    p = plane(doc, both(closes_reused))

    async def go() -> None:
        first = await p.request("GET", "/orders/1")
        assert (first.status, first.body) == (200, b"fresh")
        upstream = p[ORDERS_A] if p[ORDERS_A].count() else p[ORDERS_B]
        # round-robin: the next request on the same endpoint reuses the idle connection
        await p.request("GET", "/orders/2")
        again = await p.request("GET", "/orders/3")
        assert (again.status, again.body) == (200, b"fresh")
        # sent on the reused connection (closed unanswered), then once more on a new one
        assert [r.connection for r in upstream.requests] == [1, 1, 2]
    p.run(go)


def test_a_stale_keepalive_connection_is_not_resent_for_a_post(plane: PlaneFactory) -> None:
    doc = document(retries={"attempts": 1})
    p = plane(doc, both(closes_reused))

    async def go() -> None:
        assert (await p.request("GET", "/orders/1")).status == 200
        upstream = p[ORDERS_A] if p[ORDERS_A].count() else p[ORDERS_B]
        await p.request("GET", "/orders/2")
        r = await p.request("POST", "/orders/3", body=b"pay once")
        # The upstream may have read it (RFC 9112 9.3.1): a POST is never sent twice.
        assert (r.status, r.json()["code"]) == (502, "upstream-reset")
        assert upstream.count("POST") == 1
    p.run(go)


# -- timeouts, failures ----------------------------------------------------------------------------

def test_no_response_head_within_the_response_timeout_is_504(plane: PlaneFactory) -> None:
    p = plane(document(timeouts={"response": "100ms"}), both(hang))

    async def go() -> None:
        r = await p.request("GET", "/orders/1")
        assert (r.status, r.json()["code"]) == (504, "upstream-timeout")
        assert p[ORDERS_A].count() + p[ORDERS_B].count() == 1  # timeout is not in retry_on
    p.run(go)


def test_a_refused_connection_is_retried_then_502(plane: PlaneFactory) -> None:
    p = plane(document(), both(ok(b"up")))

    async def go() -> None:
        p[ORDERS_A].refuse = True
        for _ in range(2):
            assert (await p.request("GET", "/orders/1")).body == b"up"
        assert p[ORDERS_A].connections == 0 and p[ORDERS_B].count() == 2
    p.run(go)

    nowhere = plane(document(), {LEGACY: echo()})  # no orders endpoint answers at all

    async def refused() -> None:
        r = await nowhere.request("GET", "/orders/1")
        assert (r.status, r.json()["code"]) == (502, "upstream-connect-failed")
        assert nowhere.dialer.dials.count(ORDERS_A) + nowhere.dialer.dials.count(ORDERS_B) == 3
    nowhere.run(refused)


def test_garbage_from_the_upstream_is_a_502(plane: PlaneFactory) -> None:
    p = plane(document(retries={"attempts": 1}), both(garbage))

    async def go() -> None:
        r = await p.request("GET", "/orders/1")
        assert (r.status, r.json()["code"]) == (502, "upstream-protocol-error")
    p.run(go)


def test_a_body_cut_after_the_head_is_never_passed_as_complete(plane: PlaneFactory) -> None:
    async def cut(request: FakeRequest, link: FakeLink) -> None:
        link.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 70000)
        await link.pause(0.01)
        link.reset()

    p = plane(document(), both(cut))

    async def go() -> None:
        r = await p.request("GET", "/orders/1")
        assert r.status == 200
        assert not r.complete and r.aborted  # the downstream connection is reset
    p.run(go)


def test_an_open_circuit_answers_503_with_retry_after(plane: PlaneFactory) -> None:
    doc = document()
    doc["services"][0]["circuit_breaker"] = {"max_requests": 1}
    p = plane(doc, both(scripted(hang, ok(b"later"))))

    async def go() -> None:
        first = asyncio.create_task(p.request("GET", "/orders/1"))
        while p[ORDERS_A].count() + p[ORDERS_B].count() == 0:
            await asyncio.sleep(0.001)
        r = await p.request("GET", "/orders/2")
        assert (r.status, r.json()["code"], r.header("retry-after")) == (503, "circuit-open", "1")
        first.cancel()
    p.run(go)


# -- migrations ------------------------------------------------------------------------------------

def migrated(stage: str, **spec: Any) -> dict[str, Any]:
    doc = document()
    doc["routes"].append({"name": "shop", "match": {"path_prefix": "/shop"}, "service": "legacy",
                          "migration": {"to": "new", "stage": stage, **spec}})
    return doc


def test_a_canary_sends_its_share_to_the_new_side_sticky_by_user(plane: PlaneFactory) -> None:
    p = plane(migrated("canary", percent=50, cohort={"header": "X-User-Id"}), both(ok()))

    async def go() -> None:
        sides = {}
        for n in range(40):
            user = f"u{n}"
            r = await p.request("GET", "/shop", headers={"X-User-Id": user})
            sides[user] = r.body
            again = await p.request("GET", "/shop", headers={"X-User-Id": user})
            assert again.body == r.body  # sticky
        new = sum(1 for body in sides.values() if body == b"new")
        assert 5 < new < 35  # 50 % of 40 users, far from all or none
        assert p[NEW].count() == 2 * new and p[LEGACY].count() == 2 * (40 - new)
    p.run(go)


def test_a_failing_new_side_falls_back_to_from(plane: PlaneFactory) -> None:
    p = plane(migrated("migrated", fallback={"max_body": 1024}),
              {**both(ok()), NEW: status(503, b"down")})

    async def go() -> None:
        r = await p.request("PUT", "/shop/cart", body=b"item=1")
        assert (r.status, r.body) == (200, b"PUT /shop/cart")  # legacy's echo
        assert p[NEW].count("PUT") == 1 and p[LEGACY].requests[0].body == b"item=1"
        # A POST is not replayed on `from` (it may have had its effect on `to`).
        post = await p.request("POST", "/shop/cart", body=b"item=2")
        assert (post.status, post.body) == (503, b"down")
        assert p[LEGACY].count("POST") == 0
    p.run(go)


# -- rate limits, deadlines -------------------------------------------------------------------------

def test_past_its_rate_a_client_gets_429(plane: PlaneFactory) -> None:
    p = plane(document(rate_limit={"requests": 2, "per": "1m"}), both(ok()))

    async def go() -> None:
        answers = [await p.request("GET", "/orders/1") for _ in range(3)]
        assert [a.status for a in answers] == [200, 200, 429]
        assert answers[2].json()["code"] == "rate-limited"
        assert p[ORDERS_A].count() + p[ORDERS_B].count() == 2
        other = await p.request("GET", "/orders/1", client="10.9.9.9")  # its own bucket
        assert other.status == 200
    p.run(go)


def test_the_remaining_deadline_is_sent_upstream(plane: PlaneFactory) -> None:
    p = plane(document(), both(ok()))

    async def go() -> None:
        r = await p.request("GET", "/orders/1", headers={"Peel-Timeout-Ms": "5000"})
        assert r.status == 200
        sent = p.first(ORDERS_A, ORDERS_B)
        left = int(sent.header("peel-timeout-ms") or "0")
        assert 4000 < left < 5000
        assert sent.header("grpc-timeout") == f"{left}m"
    p.run(go)


def test_a_deadline_under_a_millisecond_is_expired_never_forwarded_as_zero(plane: PlaneFactory) -> None:
    p = plane(document(), both(ok()))

    async def go() -> None:
        # 500 microseconds: still ahead on arrival, but not one whole millisecond to pass on
        r = await p.request("GET", "/orders/1", headers={"grpc-timeout": "500u"})
        assert (r.status, r.json()["code"]) == (504, "deadline-exceeded")
        assert p[ORDERS_A].count() + p[ORDERS_B].count() == 0
    p.run(go)


def test_a_service_of_sidecars_with_nothing_registered_answers_503_no_endpoint(
        plane: PlaneFactory) -> None:
    p = plane({"services": [{"name": "payments", "endpoints": [],
                             "identity": "spiffe://peel.internal/svc/payments"}],
               "routes": [{"name": "pay", "match": {"path_prefix": "/pay"}, "service": "payments"}]},
              {})

    async def test() -> None:
        r = await p.request("GET", "/pay/1")
        assert r.status == 503 and r.json()["code"] == "no-endpoint"

    p.run(test)
