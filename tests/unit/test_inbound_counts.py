"""The inbound listener's counts by source (issue 12 item 8): bounded, rendered, and read back by
`peel mtls readiness` over a window."""

from __future__ import annotations

from gateway.admin.mtls import readiness
from gateway.telemetry import metrics as metrics_module
from gateway.telemetry.metrics import Metrics, render

BILLING = "spiffe://peel.internal/svc/billing"


def test_sources_are_counted_by_mtls_and_capped() -> None:
    metrics = Metrics()
    metrics.inbound(True, BILLING)
    metrics.inbound(True, BILLING)
    metrics.inbound(False, "10.0.0.7")
    for n in range(metrics_module.MAX_SOURCES + 5):
        metrics.inbound(False, f"10.1.{n // 256}.{n % 256}")
    rows = {(mtls, source): count for mtls, source, count, _ in metrics.snapshot()["inbound"]}
    assert rows[("true", BILLING)] == 2 and rows[("false", "10.0.0.7")] == 1
    assert len(rows) == metrics_module.MAX_SOURCES + 1  # the rest went to "other"
    assert rows[("false", "other")] == 2 + (metrics_module.MAX_SOURCES + 5) - metrics_module.MAX_SOURCES
    text = render([{"pid": 1, "metrics": metrics.snapshot()}], admin_process=False).decode()
    assert f'peel_inbound_requests_total{{listener="inbound",mtls="true",source="{BILLING}"}} 2.0' in text


def test_readiness_lists_plaintext_sources_seen_in_the_window_over_processes() -> None:
    now = 10_000.0
    first = {"metrics": {"inbound": [["false", "10.0.0.7", 3, now - 60], ["true", BILLING, 5, now - 1],
                                     ["false", "10.0.0.9", 1, now - 7200]]}}
    second = {"metrics": {"inbound": [["false", "10.0.0.7", 2, now - 30]]}}
    answer = readiness([first, second], now, 3600)
    assert answer["ready"] is False
    assert answer["plaintext"] == [{"source": "10.0.0.7", "requests": 5, "last_seen": now - 30}]
    assert [r["source"] for r in answer["mtls"]] == [BILLING]
    assert readiness([first], now, 30)["ready"] is True  # the last plaintext request was 60 s ago
