"""The access log's fields (trace and span ids, attempts) and its behaviour on a full disk.

A full disk drops and counts lines; it never stalls `log()` and never stops the writer thread.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.telemetry.accesslines import LineWriter, _millis
from gateway.telemetry.accesslog import FIELDS, AccessLog
from routes.model import Endpoint

ISSUE_ORDER = ("time", "trace_id", "span_id", "request_id", "client", "method", "path", "route", "service",
               "endpoint", "side", "status", "bytes_in", "bytes_out", "duration_ms", "upstream_ms",
               "attempts", "fallback", "error", "detail", "peer")  # peer: issue 12 item 10


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.005)


class DiskFull(io.RawIOBase):
    """A file that refuses writes with ENOSPC until `space` is given; can tear a write in half."""

    def __init__(self) -> None:
        self.space = 0  # bytes it accepts before ENOSPC; -1: unlimited
        self.data = bytearray()
        self.failures = 0
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        chunk = bytes(data)  # type: ignore[call-overload]
        with self.lock:
            if self.space == 0:
                self.failures += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            n = len(chunk) if self.space < 0 else min(len(chunk), self.space)
            if self.space > 0:
                self.space -= n
            self.data += chunk[:n]
            return n


def line(log: AccessLog, i: int, **extra: object) -> None:
    log.log(b"r%d" % i, "10.0.0.1", "GET", "/orders", "orders", "orders", Endpoint("http", "h", 80), 200,
            0, 5, 0.002, 0.001, None, **extra)  # type: ignore[arg-type]


def test_fields_follow_the_issue_list_with_trace_ids_and_attempts(tmp_path: Path) -> None:
    target = tmp_path / "access.log"
    log = AccessLog(str(target))
    log.log(b"r1", "10.0.0.1", "POST", "/orders", "orders", "orders-v2", "http://n:9000", 200, 12, 34,
            0.25, 0.2, None, "from", "upstream-timeout", trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
            span_id="00f067aa0ba902b7", attempts=2)
    log.log(b"r2", None, "GET", "/", None, None, None, 404, 0, 120, 0.001, None, "no-route")
    log.close()
    first, second = (json.loads(text) for text in target.read_text().splitlines())
    assert FIELDS == ISSUE_ORDER and tuple(first) == FIELDS
    assert first["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and first["span_id"] == "00f067aa0ba902b7"
    assert first["attempts"] == 2 and first["fallback"] == "upstream-timeout" and first["side"] == "from"
    assert first["bytes_in"] == 12 and first["upstream_ms"] == 200.0
    # The old positional call still works: no tracing, no attempt made.
    assert second["trace_id"] is None and second["span_id"] is None and second["attempts"] == 0
    assert second["error"] == "no-route" and second["route"] is None


def test_time_is_the_requests_start_in_milliseconds_and_numbers_are_json(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.BytesIO()
    log = AccessLog("test", stream=stream)
    # 2026-12-05T10:20:31.75 UTC when the line is queued, 1.25 s after the request started; then
    # a request in the next second, and one on a second's first millisecond
    for now, duration in ((1796466031.75, 1.25), (1796466031.9995, 0.0), (1796466032.0004, 0.0)):
        monkeypatch.setattr(time, "time", lambda now=now: now)
        log.log(b'r"1', "10.0.0.1", "GET", "/a\u00e9\"b", "r", "s", None, 503, 7, 0, duration, None,
                "upstream-timeout", detail="line\nbreak")
    log.close()
    lines = stream.getvalue().decode("utf-8").splitlines()
    first, second, third = (json.loads(text) for text in lines)
    assert [first["time"], second["time"], third["time"]] == [
        "2026-12-05T10:20:30.500Z", "2026-12-05T10:20:31.999Z", "2026-12-05T10:20:32.000Z"]
    assert first["duration_ms"] == 1250.0 and '"duration_ms":1250.000,' in lines[0]
    assert first["upstream_ms"] is None and first["status"] == 503 and first["bytes_in"] == 7
    assert first["request_id"] == 'r"1' and first["path"] == "/a\u00e9\"b"
    assert first["detail"] == "line\nbreak" and first["endpoint"] is None


def test_a_full_disk_drops_and_counts_the_batch_and_the_thread_keeps_going(
        caplog: pytest.LogCaptureFixture) -> None:
    disk = DiskFull()
    log = AccessLog("disk", stream=disk, interval=0.005)
    with caplog.at_level(logging.ERROR, logger="peel.accesslog"):
        for i in range(3):
            line(log, i)
        wait_for(lambda: log.dropped == 3)
        started = time.monotonic()
        for i in range(3, 5):  # never waits on the failing writer
            line(log, i)
        assert time.monotonic() - started < 2.0  # ~0 unloaded; a margin for a loaded machine
        wait_for(lambda: log.dropped == 5)
        disk.space = -1  # space again
        line(log, 5, attempts=1)
        wait_for(lambda: b"r5" in disk.data)
    log.close()
    assert disk.failures >= 2 and log.dropped == 5 and log.write_drops == 5
    assert [json.loads(text)["request_id"] for text in disk.data.decode().splitlines()] == ["r5"]
    complaints = [r for r in caplog.records if "write failed" in r.getMessage()]
    assert len(complaints) == 1  # at most once a minute
    assert "No space left on device" in complaints[0].getMessage()


def test_a_write_torn_by_a_full_disk_does_not_glue_the_next_line_to_half_a_line() -> None:
    disk = DiskFull()
    disk.space = 40  # half of the first line, then ENOSPC
    log = AccessLog("disk", stream=disk, interval=0.005)
    line(log, 1)
    wait_for(lambda: log.dropped == 1)
    disk.space = -1
    line(log, 2)
    wait_for(lambda: b"r2" in disk.data)
    log.close()
    torn, whole = disk.data.decode().split("\n", 1)
    assert len(torn) == 40
    assert json.loads(whole)["request_id"] == "r2"


class CountedWrites(io.BytesIO):
    """A file that counts the writes it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        return super().write(data)


def test_lines_made_while_the_writer_takes_them_arrive_whole_once_and_in_order() -> None:
    stream = CountedWrites()
    log = AccessLog("test", stream=stream, interval=0.0005)
    for i in range(20_000):
        line(log, i)
        if i % 1000 == 0:
            time.sleep(0.002)  # the writer takes the batch between two lines at least this often
    log.close()
    ids = [json.loads(text)["request_id"] for text in stream.getvalue().decode().splitlines()]
    assert ids == [f"r{i}" for i in range(20_000)]
    assert stream.writes > 10 and log.dropped == 0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_dev_full_drops_and_counts() -> None:
    log = AccessLog("/dev/full", interval=0.005)
    for i in range(10):
        line(log, i)
    wait_for(lambda: log.dropped == 10)
    line(log, 10)
    log.close()  # the last line fails too, without raising
    assert log.dropped == 11 and log.full_drops == 0


def test_milliseconds_are_written_to_the_microsecond_as_a_format_spec_would() -> None:
    rng = random.Random(16)
    values = [0.0, 0.0000004, 0.0000005, 0.0009995, 0.001, 0.0123, 1.25, 59.9999996, 3600.0]
    values += [rng.uniform(0, 2) for _ in range(2000)] + [rng.uniform(0, 0.002) for _ in range(2000)]
    for seconds in values:
        text = _millis(seconds)
        assert re.fullmatch(r"\d+\.\d{3}", text), text
        assert abs(float(text) - seconds * 1000) <= 0.0005 + 1e-9, (seconds, text)
        # the same text as "%.3f" but where the two round a value half way between differently
        assert text == "%.3f" % (seconds * 1000) or abs(seconds * 1e6 % 1 - 0.5) < 1e-3
    assert _millis(-0.001) == "-1.000"  # a clock stepped back: still a JSON number


def test_repeated_strings_are_quoted_once_and_the_memory_of_them_is_bounded() -> None:
    writer = LineWriter(io.BytesIO(), "test", lambda text: None)
    record = (1796466031.0, None, None, b"r", 'cl"ient', "GET", "/", "ro\\ute", "s", "http://h:80", None,
              200, 0, 0, 0.001, None, 0, None, None, None, None)
    first = json.loads(writer.line(*record))
    assert first["client"] == 'cl"ient' and first["route"] == "ro\\ute"
    assert json.loads(writer.line(*record)) == first
    for i in range(10_000):
        writer.line(*record[:4], f"10.0.{i // 256}.{i % 256}", *record[5:])
    assert len(writer._quoted) <= 4096
