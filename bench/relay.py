"""The floor (`make bench BENCH_ARGS="--floor"`): what forwarding costs Python on uvloop, and nothing else.

    python bench/relay.py PORT ORIGIN_PORT

A byte relay on 127.0.0.1:PORT: each accepted connection gets its own connection to the origin, and
the bytes of each side are written to the other as they arrive. No parsing, no routing, no pool, no
telemetry: it is correct only for what the bench sends (keep-alive GETs to one origin), and it is
not a proxy anyone should run. Measured beside Peel and nginx in the same rounds, it says how much of
Peel's CPU a request is its own work (parsing, the route table, policies, the upstream pool, logs,
metrics, traces) and how much is the runtime and the kernel that any Python forwarder pays.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, downstream: asyncio.Transport) -> None:
        self.downstream = downstream

    def data_received(self, data: bytes) -> None:
        self.downstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.downstream.close()


class Downstream(asyncio.Protocol):
    origin = 0  # the origin's port, set at start

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: a Transport, not a subclass
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []
        self.dialing = asyncio.get_running_loop().create_task(self.dial())

    async def dial(self) -> None:
        loop = asyncio.get_running_loop()
        upstream, _ = await loop.create_connection(lambda: Upstream(self.transport), "127.0.0.1",
                                                  self.origin)
        self.upstream = upstream
        for data in self.early:
            upstream.write(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()
        else:
            self.dialing.cancel()


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Downstream, "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


def main() -> None:
    port, Downstream.origin = int(sys.argv[1]), int(sys.argv[2])
    uvloop.run(serve(port))


if __name__ == "__main__":
    main()
