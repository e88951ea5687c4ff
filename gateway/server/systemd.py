"""systemd's notify protocol (sd_notify), without a library: one datagram to $NOTIFY_SOCKET.

`peel serve` says READY=1 once its listeners accept and a route table is loaded, STOPPING=1 when a
drain begins and RELOADING=1 around SIGHUP, so a `Type=notify` unit orders dependants correctly,
and WATCHDOG=1 every half `WatchdogSec=` from its event loop. Outside systemd (no NOTIFY_SOCKET)
every call does nothing. The sockets a socket unit passes (`deploy/vm/peel.socket`) are read here
too (`listen_fds`); `gateway.server.serve.bind` takes them instead of binding.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping, MutableMapping


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


# -- socket activation (sd_listen_fds(3)) -----------------------------------------------------------

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: the passed descriptors are 3, 4, ...


def listen_fds(environ: Mapping[str, str], pid: int) -> list[tuple[str, int]]:
    """The descriptors systemd passed to process `pid` as (name, fd), in order.

    Set by a socket unit (`peel.socket`): LISTEN_PID names the process they are for (a child that
    inherited the environment must not take them), LISTEN_FDS counts them from fd 3 and
    LISTEN_FDNAMES holds each unit's `FileDescriptorName=`, colon-separated. Without names (or with
    a count that disagrees) each is named "unknown", as libsystemd does. Nothing passed: [].
    """
    if environ.get("LISTEN_PID", "").strip() != str(pid):
        return []
    try:
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if count <= 0:
        return []
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    if len(names) != count or not all(names):
        names = ["unknown"] * count
    return [(name, LISTEN_FDS_START + i) for i, name in enumerate(names)]


def forget_listen_fds(environ: MutableMapping[str, str]) -> None:
    """Drop the LISTEN_* variables once taken, so no process started later reads them again."""
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(key, None)


# -- watchdog (sd_watchdog_enabled(3)) --------------------------------------------------------------


def watchdog_period(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, as systemd advises; None when the
    unit has no `WatchdogSec=` (unset, 0, unparsable, or WATCHDOG_PID naming another process)."""
    watched = environ.get("WATCHDOG_PID", "").strip()
    if watched and watched != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


async def watchdog(period: float) -> None:
    """Ping systemd every `period` seconds until cancelled. Run on the serving event loop: a loop
    that stops turning stops the pings, and systemd restarts the process (`WatchdogSec=`)."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(period)
