"""bench/run.py --browser: every wrk run sends a browser's field lines, which Peel's edge accepts."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from bench import run
from gateway.http.framing import HeadLimits, check_head

WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:1/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   520.00us  100.00us   2.00ms   90.00%
  Latency Distribution
     50%  500.00us
     90%  700.00us
     99%    1.20ms
  1000 requests in 1.00s, 100.00KB read
Requests/sec:   1000.00
"""


def test_wrk_sends_each_field_line_with_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, WRK_OUTPUT, "")

    monkeypatch.setattr(run.subprocess, "run", fake)
    result = run.wrk(1, "/", 50, 1, headers=run.BROWSER_HEADERS)
    assert result["rps"] == 1000.0 and result["p99"] == pytest.approx(1.2)
    argv = calls[-1]
    sent = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-H"]
    assert sent == list(run.BROWSER_HEADERS)
    run.wrk(1, "/", 50, 1)
    assert "-H" not in calls[-1]  # wrk's own request: its Host line alone


def test_the_browser_head_is_one_the_edge_accepts_whole() -> None:
    block = b"\r\n".join([b"GET / HTTP/1.1", b"Host: 127.0.0.1:8080",
                          *(line.encode("ascii") for line in run.BROWSER_HEADERS)]) + b"\r\n\r\n"
    checked = check_head(block, HeadLimits())
    assert len(checked.headers) == 1 + len(run.BROWSER_HEADERS)
    assert checked.keep_alive and not checked.upgrade_stripped
    assert 400 < len(block) < 1024


@pytest.mark.parametrize("combination", [["--browser", "--tls"], ["--browser", "--changes"]])
def test_browser_heads_are_for_the_plain_comparison(combination: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run.main(combination)
    assert exit_info.value.code == 2
    assert "--browser" in capsys.readouterr().err
