"""Public error answers name no insides (issue 11, item 16): endpoint URLs, TLS texts, route names and
exception classes stay in the access log's `detail`; the client gets a generic text and its request id."""

from __future__ import annotations

import io
import json
from typing import Any

from gateway.core.settings import ProxySettings
from gateway.dataplane.proxy import ProxyApp
from gateway.telemetry.accesslog import AccessLog
from gateway.upstream.pool import UpstreamPool
from routes.compiler import compile_document
from routes.holder import TableHolder
from routes.model import Document
from tests.dataplane.conftest import Plane, PlaneFactory
from tests.fakes.upstream import FakeDialer, echo

HIDDEN = "http://orders-internal-7:8080"
DOC: dict[str, Any] = {
    "services": [{"name": "orders", "endpoints": [HIDDEN], "outlier": False,
                  "retries": {"attempts": 1}},
                 {"name": "legacy", "endpoints": ["http://legacy:80"]}],
    "routes": [{"name": "secret-orders-route", "match": {"path_prefix": "/orders"}, "service": "orders",
                "rate_limit": {"requests": 1, "per": "1h"}}],
}


def _plane(log: AccessLog) -> Plane:
    holder = TableHolder()
    holder.swap(compile_document(Document.parse(DOC), 1))
    dialer = FakeDialer()
    dialer.add("http://legacy:80", echo())  # the orders endpoint is on no fake host: refused
    settings = ProxySettings(connect_timeout=1.0, response_timeout=5.0, idle_timeout=5.0)
    pool = UpstreamPool(settings, dialer=dialer)
    return Plane(ProxyApp(holder, pool, settings, log), pool, dialer)


def test_an_upstream_failure_answers_a_generic_detail_and_logs_the_specifics(plane: PlaneFactory) -> None:
    stream = io.BytesIO()
    log = AccessLog("memory", stream=stream, interval=0.01)
    p = _plane(log)

    async def go() -> None:
        r = await p.request("GET", "/orders/1")
        assert (r.status, r.json()["code"]) == (502, "upstream-connect-failed")
        text = r.body.decode()
        assert "orders-internal-7" not in text and "secret-orders-route" not in text
        assert r.json()["detail"] == "the upstream service could not be reached"
        assert r.json()["request_id"]
        limited = await p.request("GET", "/orders/2")
        assert limited.status == 429 and "secret-orders-route" not in limited.body.decode()

    p.run(go)
    log.close()
    lines = [json.loads(line) for line in stream.getvalue().decode().splitlines()]
    failed = next(line for line in lines if line["status"] == 502)
    assert failed["error"] == "upstream-connect-failed"
    assert "orders-internal-7" in failed["detail"]
    assert next(line for line in lines if line["status"] == 429)["detail"] is None
