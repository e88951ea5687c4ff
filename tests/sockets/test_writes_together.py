"""Many answers completed in one loop iteration leave together, each on its own connection, in order.

`gateway.core.writes` holds the whole responses (and whole upstream requests) that follow an
iteration's first and writes them at the iteration's end. Fifty connections sending at once make
the proxy complete several requests per iteration, so most answers take that path: each must
reach its own client, pipelined answers in their order, over several rounds of keep-alive.
"""

from __future__ import annotations

import asyncio
import json

from tests.sockets.conftest import Proxy

CONNECTIONS = 50
ROUNDS = 4
PIPELINED = 2


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return status, await reader.readexactly(length)


async def exchange(port: int) -> list[str]:
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CONNECTIONS)]
    wrong: list[str] = []
    try:
        for round_ in range(ROUNDS):
            for number, (_, writer) in enumerate(connections):  # all at once, then read
                writer.write(b"".join(b"GET /e/c%d/r%d/p%d HTTP/1.1\r\nHost: t\r\n\r\n"
                                      % (number, round_, pipelined) for pipelined in range(PIPELINED)))

            async def answers(number: int, reader: asyncio.StreamReader, round_: int = round_) -> None:
                for pipelined in range(PIPELINED):
                    status, body = await read_response(reader)
                    want = f"/c{number}/r{round_}/p{pipelined}"
                    got = json.loads(body)["target"] if status == 200 else f"status {status}"
                    if got != want:
                        wrong.append(f"connection {number}: {got} instead of {want}")

            await asyncio.wait_for(asyncio.gather(*(answers(number, reader) for number, (reader, _)
                                                    in enumerate(connections))), 30)
    finally:
        for _, writer in connections:
            writer.close()
    return wrong


def test_answers_completed_together_reach_their_own_connections_in_order(proxy: Proxy) -> None:
    assert asyncio.run(exchange(proxy.port)) == []
