"""A TCP relay on loopback that a test can cut and restore: a database lost behind a network
partition (connections broken and new ones refused), then back on the same port."""

from __future__ import annotations

import contextlib
import socket
import threading


class Relay:
    """A TCP relay to `target` on a free loopback port: `cut()` closes it and every connection
    through it and refuses new ones; `restore()` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                down, _ = listener.accept()
                up = socket.create_connection(self.target, timeout=5)
            except OSError:
                return
            with self._lock:
                if self.listener is not listener:  # cut meanwhile: this one must not get through
                    down.close()
                    up.close()
                    return
                self._conns += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        with self._lock:
            if self.listener is not None:
                self.listener.close()
                self.listener = None
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns = []
