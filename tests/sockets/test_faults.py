"""The fault-injecting upstream does what each mode says, on a real connection."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.sockets.conftest import wait_for
from tests.sockets.faults import MID_BODY_SENT, Fault, FaultUpstream, Refuse, closed_port


@pytest.fixture
def up() -> Iterator[FaultUpstream]:
    upstream = FaultUpstream("alpha").start()
    yield upstream
    upstream.stop()


def connect(up: FaultUpstream, timeout: float = 5.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", up.port, timeout=timeout)


def exchange(conn: http.client.HTTPConnection, method: str = "GET", path: str = "/x",
             body: bytes | None = None, headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], bytes]:
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def raw(up: FaultUpstream, request: bytes = b"GET /raw HTTP/1.1\r\nHost: a\r\n\r\n",
        timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", up.port), timeout=timeout)
    sock.sendall(request)
    return sock


def test_ok_names_the_upstream_on_a_kept_alive_connection_and_records_requests(up: FaultUpstream) -> None:
    conn = connect(up)
    assert exchange(conn, "GET", "/a?q=1", headers={"X-Test": "1"})[::2] == (200, b"alpha")
    status, headers, body = exchange(conn, "POST", "/b", body=b"payload")
    conn.close()
    assert (status, headers["x-upstream"], body) == (200, "alpha", b"alpha")
    assert up.connections == 1
    first, second = up.received
    assert (first.method, first.path, first.header("x-test"), first.mode) == ("GET", "/a?q=1", "1", "ok")
    assert (second.method, second.body) == ("POST", b"payload")
    assert up.count("POST") == 1 and up.count(path="/a?q=1") == 1 and up.count() == 2


def test_chunked_request_bodies_are_recorded(up: FaultUpstream) -> None:
    sock = raw(up, b"PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sock.close()
    assert up.received[0].body == b"abcde"


def test_status_slow_and_retry_after(up: FaultUpstream) -> None:
    conn = connect(up)
    up.set("status", status=500)
    assert exchange(conn)[::2] == (500, b"alpha")
    up.set("retry_after", retry_after="2")
    status, headers, _ = exchange(conn)
    assert (status, headers["retry-after"]) == (503, "2")
    up.set("slow", delay=0.2)
    started = time.monotonic()
    assert exchange(conn)[0] == 200
    assert time.monotonic() - started >= 0.2
    conn.close()


def test_times_limits_a_fault_to_the_next_requests(up: FaultUpstream) -> None:
    up.set("status", status=502, times=2)
    conn = connect(up)
    assert [exchange(conn)[0] for _ in range(4)] == [502, 502, 200, 200]
    conn.close()
    assert [r.mode for r in up.received] == ["status", "status", "ok", "ok"]


def test_flap_alternates_or_follows_a_probability(up: FaultUpstream) -> None:
    conn = connect(up)
    up.set("flap_503")
    assert [exchange(conn)[0] for _ in range(6)] == [200, 503] * 3
    up.set("flap_503", every=3)
    assert [exchange(conn)[0] for _ in range(6)] == [200, 200, 503] * 2
    up.set("flap_503", probability=0.5)
    statuses = [exchange(conn)[0] for _ in range(200)]
    conn.close()
    assert set(statuses) == {200, 503} and 60 <= statuses.count(503) <= 140


def test_hang_before_headers_reads_the_request_and_never_answers(up: FaultUpstream) -> None:
    up.set("hang_before_headers")
    sock = raw(up, timeout=0.3)
    wait_for(lambda: up.count() == 1, 5, "the request to be recorded")
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.close()
    wait_for(lambda: up.open_connections == 0, 5, "the hanging connection to end with the client")


def test_hang_mid_body_sends_part_of_an_announced_body_then_stalls(up: FaultUpstream) -> None:
    up.set("hang_mid_body")
    conn = connect(up, timeout=0.3)
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-length") == "1000"
    assert len(response.read(MID_BODY_SENT)) == MID_BODY_SENT
    with pytest.raises(TimeoutError):
        response.read(1)
    conn.close()


def test_reset_sends_rst_before_any_byte(up: FaultUpstream) -> None:
    up.set("reset")
    sock = raw(up)
    with pytest.raises(ConnectionResetError):
        sock.recv(1)
    sock.close()
    assert up.count() == 1


def test_garbage_is_not_http_then_closes(up: FaultUpstream) -> None:
    up.set("garbage")
    sock = raw(up)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    sock.close()
    assert data and not data.startswith(b"HTTP/")


def test_trickle_sends_the_body_one_byte_at_a_time(up: FaultUpstream) -> None:
    up.set("trickle", delay=0.05)
    sock = raw(up)
    arrivals: list[float] = []
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    body = data.split(b"\r\n\r\n", 1)[1]
    while len(body) < len(b"alpha"):
        piece = sock.recv(4096)
        arrivals.append(time.monotonic())
        body += piece
    sock.close()
    assert body == b"alpha"
    assert arrivals[-1] - arrivals[0] >= 0.05 * 3  # five bytes, about 50 ms apart


def test_refuse_closes_the_port_and_ok_reopens_the_same_one(up: FaultUpstream) -> None:
    idle = connect(up)
    assert exchange(idle)[0] == 200
    port = up.port
    up.set("refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    # established connections go too, as when the process behind the port dies
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        exchange(idle)
    idle.close()
    up.set("ok")
    assert up.port == port
    conn = connect(up)
    assert exchange(conn)[0] == 200
    conn.close()


def test_set_is_safe_while_requests_run_in_another_thread(up: FaultUpstream) -> None:
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        conn = connect(up)
        while not stop.is_set():
            statuses.append(exchange(conn)[0])
        conn.close()

    worker = threading.Thread(target=load)
    worker.start()
    for _ in range(50):
        up.set("status", status=503)
        up.set("ok")
    wait_for(lambda: len(statuses) >= 20, 10, "requests to flow")
    stop.set()
    worker.join(10)
    assert set(statuses) <= {200, 503} and up.count() == len(statuses)


def test_unknown_modes_and_bad_parameters_are_refused(up: FaultUpstream) -> None:
    with pytest.raises(ValueError):
        up.set("explode")
    with pytest.raises(ValueError):
        Fault("flap_503", every=0)
    assert up.fault == Fault()


def test_closed_ports_refuse() -> None:
    held = Refuse()
    for port in (closed_port(), held.port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
    held.stop()
