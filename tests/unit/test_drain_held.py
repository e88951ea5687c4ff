"""gateway.edge.drain.hold/held: a listening socket systemd passed is known by its inode, in this
process and in the processes it starts (the workers inherit the environment and the socket)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from gateway.edge import drain


@pytest.fixture(autouse=True)
def no_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(drain.HELD_ENV, raising=False)


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_a_held_socket_is_known_through_any_descriptor_and_others_are_not() -> None:
    passed, other = listening(), listening()
    try:
        assert not drain.held(passed)
        drain.hold(passed)
        drain.hold(passed)  # once is enough
        spare = passed.dup()
        assert drain.held(passed) and drain.held(spare)
        assert not drain.held(other)
        assert len(os.environ[drain.HELD_ENV].split(",")) == 1
        drain.hold(other)
        assert drain.held(other)
        spare.close()
    finally:
        passed.close()
        other.close()


def test_a_child_that_inherits_the_socket_knows_it_is_held() -> None:
    passed = listening()
    try:
        drain.hold(passed)
        passed.set_inheritable(True)
        code = ("import socket, sys; from gateway.edge import drain; "
                "sys.exit(0 if drain.held(socket.socket(fileno=int(sys.argv[1]))) else 3)")
        done = subprocess.run([sys.executable, "-c", code, str(passed.fileno())],
                              pass_fds=(passed.fileno(),), timeout=60)
        assert done.returncode == 0
    finally:
        passed.close()


def test_a_closed_socket_is_not_held() -> None:
    sock = listening()
    drain.hold(sock)
    sock.close()
    assert not drain.held(sock)
