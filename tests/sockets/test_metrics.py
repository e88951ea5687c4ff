"""`/metrics` and the live service view on a real `peel serve` with two workers.

Each worker counts its own requests and publishes them to `server.run_dir`; the master's admin
listener, which serves no requests itself, must answer for both: the scraped counts equal what the
clients sent, whichever worker took each connection.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.sockets.conftest import wait_for
from tests.sockets.serve_harness import PeelServe
from tests.sockets.upstreams import ScriptedUpstream

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def echo() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream().start()
    yield server
    server.stop()


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name]


def test_two_workers_are_summed_in_metrics_and_in_the_live_service_view(
        tmp_path: Path, echo: ScriptedUpstream) -> None:
    peel = PeelServe(tmp_path, workers=2, extra_settings="[metrics]\npublish_interval = 0.2")
    token = peel.upgrade_with_token()
    peel.commit({"services": [{"name": "echo", "endpoints": [echo.url]}],
                 "routes": [{"name": "main", "match": {"path_prefix": "/"}, "service": "echo"}]})
    peel.start()
    try:
        wait_for(lambda: len(peel.children()) == 2, 10, "two workers")

        def published() -> set[str | None]:
            status, body = peel.admin_get("/metrics", token)
            assert status == 200
            return {labels.get("pid") for labels, _ in samples(body.decode(), "peel_config_version")}

        # a worker publishes once it serves: until both do, the kernel may hand every connection to
        # the first, and the second's state is not there yet to be summed
        wait_for(lambda: published() == {str(pid) for pid in peel.children()}, 30,
                 "both workers to publish their state")
        sent = 0
        for _ in range(60):  # a fresh connection each: the kernel spreads them over the workers
            status, _, _ = peel.get("/hello")
            assert status == 200
            sent += 1

        def counted() -> float:
            status, body = peel.admin_get("/metrics", token)
            assert status == 200
            return sum(v for labels, v in samples(body.decode(), "peel_requests_total")
                       if labels.get("route") == "main" and labels.get("status_class") == "2xx")

        wait_for(lambda: counted() == sent, 10, f"/metrics to count {sent} requests")
        _, body = peel.admin_get("/metrics", token)
        text = body.decode()
        # the histogram agrees with the counter, and the config version of both workers is there
        count = sum(v for labels, v in samples(text, "peel_request_duration_seconds_count")
                    if labels.get("route") == "main")
        assert count == sent
        versions = samples(text, "peel_config_version")
        assert len({labels.get("pid") for labels, _ in versions}) == 2
        assert all(v == 1 for _, v in versions)
        assert samples(text, "process_resident_memory_bytes")  # the admin process's own

        status, body = peel.admin_get("/api/v1/services/echo", token)
        assert status == 200
        live = json.loads(body)["live"]
        assert echo.url in live["endpoints"]
        assert live["endpoints"][echo.url]["healthy"] is True
        assert len(live["processes"]) == 2
        # without a token: no metrics
        conn = http.client.HTTPConnection("127.0.0.1", peel.admin_port, timeout=10)
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 401
        conn.close()
    finally:
        assert peel.stop() == 0
    # the workers removed their state files on the way out
    assert not list((tmp_path / "run").glob("proc-*.json"))
