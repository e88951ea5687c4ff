"""systemd's notify protocol (sd_notify), without a library: one datagram to $NOTIFY_SOCKET.

`peel serve` says READY=1 once its listeners accept and a route table is loaded, STOPPING=1 when a
drain begins and RELOADING=1 around SIGHUP, so a `Type=notify` unit orders dependants correctly.
Outside systemd (no NOTIFY_SOCKET) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*states: str) -> bool:
    """Send `states` (like "READY=1") to systemd; True when a notify socket was there."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    payload = "\n".join(states).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(payload)
        except OSError:
            return False
    return True


def monotonic_usec() -> str:
    """The MONOTONIC_USEC= field that systemd wants with RELOADING=1."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
