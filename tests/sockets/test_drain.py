"""Signals on real `peel serve` processes: the pre-stop delay, the drain under load, SIGHUP with workers.

A drain may refuse new connections once its listeners are closed (the client then goes elsewhere),
but a request on a connection the gateway accepted must get its answer: a reset, a connection closed
under a sent request, or a 5xx counts as a failure.
"""

from __future__ import annotations

import functools
import http.client
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sockets.conftest import wait_for
from tests.sockets.serve_harness import PeelServe
from tests.sockets.test_serve import document
from tests.sockets.upstreams import ScriptedUpstream


@pytest.fixture(scope="module")
def echo() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream().start()
    yield server
    server.stop()


def started(tmp_path: Path, echo: ScriptedUpstream, *, workers: int = 1, prestop: float = 0.0
            ) -> PeelServe:
    peel = PeelServe(tmp_path, workers=workers, extra_settings=f"prestop_delay = {prestop}")
    peel.store().upgrade()
    peel.commit(document(echo.url, 1))
    peel.start()
    if workers > 1:
        wait_for(lambda: len(peel.children()) == workers, 10, f"{workers} workers")
    return peel


class DrainLoad:
    """Keep-alive clients sending GETs until stopped or until the gateway refuses to connect.

    A refused connect ends that client (the listener is gone); every other error is a failure.
    """

    def __init__(self, port: int, clients: int = 4) -> None:
        self.port = port
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self.refused = 0
        self.closing = 0  # responses that said Connection: close
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> DrainLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.statuses.values())

    def finished(self) -> bool:
        return not any(thread.is_alive() for thread in self._threads)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                try:
                    conn.connect()
                except ConnectionRefusedError:
                    with self._lock:
                        self.refused += 1
                    return
            try:
                conn.request("GET", "/load")
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures.append(repr(exc))
                conn.close()
                conn = None
                continue
            with self._lock:
                self.statuses[response.status] += 1
                if response.will_close:
                    self.closing += 1
            if response.will_close:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


def exit_code(peel: PeelServe, timeout: float) -> int:
    assert peel.process is not None
    return peel.process.wait(timeout)


def test_readiness_turns_false_while_the_listener_still_serves_for_the_prestop_delay(
        tmp_path: Path, echo: ScriptedUpstream) -> None:
    # a 3 s delay: readiness must turn false well inside it even on a loaded machine
    peel = started(tmp_path, echo, prestop=3)
    try:
        peel.signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_for(lambda: peel.get("/readyz", port=peel.admin_port, timeout=2)[0] == 503, 1.5,
                 "/readyz to answer 503")
        # New connections are still accepted and served during the delay, and told to close.
        served = 0
        while time.monotonic() - signalled < 2.0:
            status, headers, _ = peel.get("/during-the-delay", timeout=2)
            assert status == 200
            assert headers.get("connection") == "close"
            served += 1
        assert served > 5
        assert exit_code(peel, 15) == 0
        assert time.monotonic() - signalled >= 3.0
        with pytest.raises(ConnectionRefusedError):
            peel.get("/", timeout=2)
    finally:
        peel.stop()


def drain_under_load(peel: PeelServe) -> DrainLoad:
    with DrainLoad(peel.public_port) as load:
        wait_for(lambda: load.total > 200, 10, "steady load")
        before = load.total
        peel.signal(signal.SIGTERM)
        assert exit_code(peel, 20) == 0
        wait_for(load.finished, 10, "every client to find the listener closed")
    assert load.failures == []
    assert set(load.statuses) == {200}, load.statuses
    assert load.total > before + 20  # the load went on during the pre-stop delay
    assert load.closing > 0  # and keep-alive clients were told to reconnect
    assert load.refused == 4  # each client ended on a refused connect, none on an error
    return load


def test_a_drain_under_steady_load_fails_no_accepted_request(tmp_path: Path, echo: ScriptedUpstream
                                                             ) -> None:
    peel = started(tmp_path, echo, prestop=0.5)
    try:
        drain_under_load(peel)
    finally:
        peel.stop()


def test_a_drain_with_workers_fails_no_accepted_request(tmp_path: Path, echo: ScriptedUpstream
                                                        ) -> None:
    peel = started(tmp_path, echo, workers=2, prestop=0.5)
    workers = peel.children()
    try:
        drain_under_load(peel)
        assert peel.children() == []
        log = peel.log.read_text()
        # every worker drained itself (the master forwarded SIGTERM) rather than being killed
        assert log.count("draining: listeners closed") == len(workers)
        assert "did not stop" not in log
    finally:
        peel.stop()


def test_the_admin_listener_answers_until_the_workers_are_done(tmp_path: Path,
                                                               echo: ScriptedUpstream) -> None:
    peel = started(tmp_path, echo, workers=2, prestop=0.5)
    result: dict[str, object] = {}

    def slow_request() -> None:
        result["status"] = peel.get("/slow/2", timeout=20)[0]

    thread = threading.Thread(target=slow_request)
    try:
        before = len(echo.seen)
        thread.start()
        wait_for(lambda: any(s.target == "/slow/2" for s in echo.seen[before:]), 10, "the slow request")
        peel.signal(signal.SIGTERM)
        # Past the pre-stop delay the workers' listener is closed, but a worker still serves the
        # slow request: the master's /readyz keeps answering 503 meanwhile.
        wait_for(lambda: _refused(peel), 5, "the public listener to close")
        assert thread.is_alive()
        assert peel.get("/readyz", port=peel.admin_port, timeout=2)[0] == 503
        thread.join(20)
        assert result.get("status") == 200
        assert exit_code(peel, 20) == 0
    finally:
        peel.stop()


def reloads_logged(peel: PeelServe, count: int) -> bool:
    return peel.log.read_text().count("SIGHUP: settings re-read") == count


def _refused(peel: PeelServe) -> bool:
    try:
        peel.get("/probe", timeout=2)
    except ConnectionRefusedError:
        return True
    return False


def test_sighup_with_workers_under_load_drops_nothing(tmp_path: Path, echo: ScriptedUpstream) -> None:
    peel = started(tmp_path, echo, workers=2)
    workers = sorted(peel.children())
    good = peel.config.read_text()
    try:
        with DrainLoad(peel.public_port) as load:
            wait_for(lambda: load.total > 200, 10, "steady load")
            for round_ in range(1, 4):
                peel.config.write_text(good.replace("grace_period = 10", f"grace_period = {10 + round_}"))
                peel.signal(signal.SIGHUP)
                # the master and each worker re-read the file
                wait_for(functools.partial(reloads_logged, peel, 3 * round_), 10,
                         "every process to re-read the settings")
            # a file that no longer parses is refused, once, by the master; nobody stops
            peel.config.write_text(good + "[server\n")
            peel.signal(signal.SIGHUP)
            wait_for(lambda: "SIGHUP: settings refused" in peel.log.read_text(), 10, "the refusal")
            mark = load.total
            wait_for(lambda: load.total > mark + 200, 10, "the load to go on")
        assert load.failures == []
        assert set(load.statuses) == {200}, load.statuses
        assert load.refused == 0
        assert sorted(peel.children()) == workers
        assert peel.log.read_text().count("SIGHUP: settings refused") == 1
        assert peel.get("/readyz", port=peel.admin_port)[0] == 200
        assert peel.get("/after-the-reloads")[0] == 200
    finally:
        peel.config.write_text(good)
        assert peel.stop() == 0
