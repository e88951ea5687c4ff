"""How a draining listener stops without failing what it accepted (used by `gateway.server.serve`).

The order matters: responses start saying `Connection: close`; after the pre-stop delay the
listening socket closes, but only once what the kernel already queued has been taken over; then
idle connections close and busy ones are given the grace period.

A listening socket that systemd passed (socket activation, `deploy/vm/peel.socket`) is different:
systemd keeps it open after this process exits and the next process accepts on it, so the draining
process only stops accepting. Its queue, and every connection that arrives meanwhile, waits there
for the next process: handshakes complete in the kernel at once, none is dropped or refused.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import socket
import struct
import sys
from typing import Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

log = logging.getLogger("peel.serve")

# The sockets held by the process that started this one (systemd), by inode: a socket's inode is the
# same in every process holding it, so the worker processes, which inherit the environment and the
# socket, know it too. Not a PEEL_ name: those are settings.
HELD_ENV = "LISTEN_HELD_INODES"


def _inode(sock: socket.socket) -> str | None:
    try:
        return str(os.fstat(sock.fileno()).st_ino)
    except OSError:
        return None


def hold(sock: socket.socket) -> None:
    """Mark `sock` as held by systemd (passed by LISTEN_FDS): its drain leaves the socket as it is."""
    inode = _inode(sock)
    held = [i for i in os.environ.get(HELD_ENV, "").split(",") if i]
    if inode is not None and inode not in held:
        os.environ[HELD_ENV] = ",".join([*held, inode])


def held(sock: socket.socket) -> bool:
    """Whether systemd holds `sock` (marked by `hold`, in this process or the one that started it)."""
    inode = _inode(sock)
    return inode is not None and inode in os.environ.get(HELD_ENV, "").split(",")


def close_after_response(server: uvicorn.Server) -> None:
    """Every response from now on says `Connection: close`, so keep-alive clients reconnect (to a
    gateway still in the load balancer) instead of finding their connection closed under them."""
    close = (b"connection", b"close")
    if close in server.config.encoded_headers:
        return
    server.config.encoded_headers = [*server.config.encoded_headers, close]
    # uvicorn rebuilds the default headers from encoded_headers every second; until then, these
    server.server_state.default_headers = [*server.server_state.default_headers, close]
    for connection in list(server.server_state.connections):
        cycle: Any = getattr(connection, "cycle", None)
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False


async def stop_accepting(server: uvicorn.Server, spare: socket.socket) -> None:
    """Close the listening socket, first taking over what the kernel already accepted.

    Connections still in the kernel's accept queue when the last descriptor of a listening socket
    closes are reset, though their clients saw the connect succeed. uvicorn's server closes its
    descriptor first (no more accepts from the loop); the spare one keeps the queue alive while it
    is emptied here into ordinary connections, then closes.

    A socket systemd holds (`held`) outlives this process with its queue: this process closes its
    descriptors and accepts nothing more; no filter, so new handshakes keep completing and wait in
    the queue for the next process (a filter there made every connect wait 1-3 s, the kernel's SYN
    retransmissions, until the next process removed it).
    """
    if held(spare):
        for listening in server.servers:
            listening.close()
        spare.close()
        log.info("draining: stopped accepting; systemd keeps the listening socket for the next process")
        return
    drop_new_handshakes(spare)
    for listening in server.servers:
        listening.close()
    loop = asyncio.get_running_loop()
    config = server.config
    protocol: Any = config.http_protocol_class
    factory = functools.partial(protocol, config=config,
                                server_state=server.server_state, app_state=server.lifespan.state)
    try:
        while True:
            try:
                conn, _ = spare.accept()
            except (BlockingIOError, InterruptedError):
                break
            conn.setblocking(False)
            await loop.connect_accepted_socket(factory, conn)
    except OSError as exc:
        log.warning("draining: could not take over queued connections: %s", exc)
    finally:
        spare.close()


def drop_new_handshakes(sock: socket.socket) -> None:
    """Attach a socket filter that drops every packet to a listening socket (Linux).

    Without it a handshake completing between the last accept and the close would be queued, then
    reset. Dropped, the client's SYN is sent again later and meets a closed port: refused.
    """
    if sys.platform != "linux":
        return
    so_attach_filter = 26
    drop_all = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))  # BPF: ret #0
    program = struct.pack("HL", 1, ctypes.addressof(drop_all))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, so_attach_filter, program)
    except OSError as exc:
        log.debug("no socket filter on the closing listener: %s", exc)


def settle(server: uvicorn.Server) -> bool:
    """One look at a draining server's connections; True while some still need time.

    Idle keep-alive connections are closed, WebSockets closed with 1012. A request being served
    finishes (its response says `Connection: close`). A connection accepted before the listener
    closed whose request has not arrived yet is left to send it; the header timeout closes one that
    never does.
    """
    busy = False
    for connection in list(server.server_state.connections):
        cycle: Any = getattr(connection, "cycle", None)
        if isinstance(connection, WebSocketsSansIOProtocol):
            # A WebSocket may live for hours: close it now with 1012 (service restart), which
            # Peel passes upstream, so the client reconnects elsewhere instead of holding the
            # drain for the whole grace period. One still in its handshake is left to finish.
            if connection.handshake_complete and not connection.close_sent:
                connection.shutdown()
            busy = True
        elif cycle is None:
            busy = True
        elif cycle.response_complete:
            connection.shutdown()
        else:
            cycle.keep_alive = False
            busy = True
    return busy
