"""The access log's writer thread: lines are JSON, flushed on close, dropped (and counted) when full."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.telemetry.accesslog import FIELDS, AccessLog
from routes.model import Endpoint


def test_lines_are_json_with_every_field_and_flushed_on_close(tmp_path: Path) -> None:
    target = tmp_path / "access.log"
    log = AccessLog(str(target))
    log.log(b"r1", "10.0.0.1", "GET", '/a"b', "route", "svc", Endpoint("http", "h", 80), 200,
            3, 5, 0.0123, 0.004, None)
    log.log(b"r2", None, "POST", "/x", None, None, None, 502, 0, 120, 0.5, None,
            "upstream-connect-failed")
    log.close()
    first, second = (json.loads(line) for line in target.read_text().splitlines())
    assert tuple(first) == FIELDS
    assert first["path"] == '/a"b' and first["endpoint"] == "http://h:80"
    assert first["duration_ms"] == 12.3 and first["upstream_ms"] == 4.0
    assert second["client"] is None and second["upstream_ms"] is None
    assert second["error"] == "upstream-connect-failed" and second["status"] == 502
    assert first["time"].endswith("Z") and "T" in first["time"]


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    target = tmp_path / "access.log"
    log = AccessLog(str(target), max_queue=10, interval=3600)  # the writer never wakes on its own
    for i in range(25):
        log.log(b"r%d" % i, None, "GET", "/", None, None, None, 200, 0, 0, 0.001, None, None)
    assert log.dropped == 15
    log.close()
    assert len(target.read_text().splitlines()) == 10


def test_off_writes_nothing(tmp_path: Path) -> None:
    log = AccessLog("off")
    log.log(b"r", None, "GET", "/", None, None, None, 200, 0, 0, 0.001, None, None)
    log.close()
    assert log.dropped == 0 and not log.enabled
