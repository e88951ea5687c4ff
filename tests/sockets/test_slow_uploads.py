"""Slow uploads (slowhttptest's slow body, R-U-Dead-Yet) against a legacy upstream with 2 sync workers.

The upstream is what legacy monoliths run on (gunicorn sync workers, PHP-FPM, unicorn): a worker
reads a whole request before it takes the next connection. Through Peel with request buffering
(the default) the slow bodies never reach it, and a probe every 0.5 s is answered throughout the
attack; with `buffering: false` the slow bodies stream to the two workers and hold them, and the
probes go unanswered. Both cases run, so the test fails if buffering stops protecting the upstream
and if the attack stops being one.

slowhttptest is the Debian package `slowhttptest` (installed by `.ci/run`). Missing here, the test
skips with the reason; in CI (`CI` true) that is a failure.
"""

from __future__ import annotations

import contextlib
import http.client
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import in_ci
from tests.sockets.conftest import start_proxy, stop_proxy, wait_for

SLOW_CONNECTIONS = 10
PROBE_EVERY = 0.5
PROBE_TIMEOUT = 3.0
WINDOW = 6.0  # seconds of the attack during which probes are sent


class SyncWorkers:
    """An upstream with `workers` sync worker slots, each serving one connection at a time.

    A worker accepts a connection, reads the whole request (head and Content-Length body; it
    waits up to 30 s for each read, as gunicorn's worker timeout lets it), answers 200 and closes.
    While all workers read, new connections wait in the listen backlog. `paths` lists every
    request whose head a worker read, `answered` those it read whole and answered.
    """

    def __init__(self, workers: int = 2) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.paths: list[str] = []
        self.answered: list[str] = []
        self.open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.open.add(conn)
            try:
                self._serve(conn)
            except OSError:
                pass
            finally:
                with self._lock:
                    self.open.discard(conn)
                conn.close()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30.0)
        data = b""
        while b"\r\n\r\n" not in data:
            more = conn.recv(65536)
            if not more:
                return
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        with self._lock:
            self.paths.append(path)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        while len(body) < length:
            more = conn.recv(65536)
            if not more:
                return
            body += more
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        with self._lock:
            self.answered.append(path)

    def close(self) -> None:
        self._stopping = True
        self.sock.close()
        with self._lock:
            for conn in self.open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(10)


def established(port: int) -> int:
    """Established TCP connections whose local port is `port` (the server side of them)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    count += 1
    return count


def probe(port: int, results: list[bool]) -> None:
    ok = False
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
    try:
        conn.request("GET", "/probe")
        response = conn.getresponse()
        ok = response.status == 200 and response.read() == b"ok"
    except OSError:
        ok = False
    finally:
        conn.close()
    results.append(ok)


@pytest.fixture
def slowhttptest() -> str:
    path = shutil.which("slowhttptest")
    if path is None:
        reason = "the slow-upload test needs slowhttptest (Debian package slowhttptest)"
        if in_ci():
            pytest.fail(f"{reason}; .ci/run installs it", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture
def legacy() -> Iterator[SyncWorkers]:
    upstream = SyncWorkers(2)
    yield upstream
    upstream.close()


@pytest.mark.parametrize(("buffering", "available"), [(None, True), (False, False)],
                         ids=["buffering", "streaming"])
def test_slow_uploads_do_not_hold_a_sync_worker_upstream(
        slowhttptest: str, legacy: SyncWorkers, tmp_path: Path, buffering: object, available: bool) -> None:
    route: dict[str, object] = {"name": "all", "match": {"path_prefix": "/"}, "service": "legacy"}
    if buffering is not None:
        route["buffering"] = buffering
    proxy = start_proxy(tmp_path, {"services": [{"name": "legacy", "endpoints": [legacy.url]}],
                                   "routes": [route]})
    attack: subprocess.Popen[bytes] | None = None
    try:
        # Before the attack every probe is answered.
        before: list[bool] = []
        probe(proxy.port, before)
        assert before == [True]
        # 10 slow bodies: Content-Length 8192, 10 bytes every 2 s.
        with open(tmp_path / "slowhttptest.out", "wb") as out:
            attack = subprocess.Popen(
                [slowhttptest, "-B", "-c", str(SLOW_CONNECTIONS), "-r", "50", "-i", "2", "-s", "8192",
                 "-x", "10", "-l", "60", "-p", "2", "-u", f"http://127.0.0.1:{proxy.port}/upload"],
                stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: established(proxy.port) >= SLOW_CONNECTIONS, 15.0, "the slow connections")
        if not available:
            # Streaming: the slow bodies reach the upstream and take both workers.
            wait_for(lambda: legacy.paths.count("/upload") >= 2, 15.0, "the workers to take uploads")
        results: list[bool] = []
        probes: list[threading.Thread] = []
        start = time.monotonic()
        while time.monotonic() - start < WINDOW:
            thread = threading.Thread(target=probe, args=(proxy.port, results), daemon=True)
            thread.start()
            probes.append(thread)
            time.sleep(PROBE_EVERY)  # the probe cadence, not a synchronisation
        for thread in probes:
            thread.join(PROBE_TIMEOUT + 5)
        answered = sum(results)
        print(f"buffering={buffering!r}: {answered} of {len(results)} probes answered during the attack")
        assert len(results) >= 10
        if available:
            assert answered == len(results), results
            # No upstream worker ever waited for a body: Peel hands over complete requests only
            # (slowhttptest's own probe is one).
            wait_for(lambda: sorted(legacy.paths) == sorted(legacy.answered), 5.0,
                     "every request the upstream began to be answered")
        else:
            assert answered <= len(results) // 4, results
    finally:
        if attack is not None:
            attack.terminate()
            attack.wait(10)
        stop_proxy(proxy)
