"""A sidecar following a real control plane (`peel serve` with a CA) without database credentials:
`peel join --advertise` registers it; the `ControlFollower` loads the table over the admin API as
itself, registers by heartbeat, gets a committed change within seconds, keeps serving while the
control plane is down, and a restarted follower serves from its snapshot."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from gateway.server.follow_control import ControlFollower
from routes.holder import TableHolder
from tests.sockets.serve_harness import PeelServe
from tests.sockets.test_join import peel

ORDERS = "spiffe://peel.internal/svc/orders"
DOC = {"services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                    {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]}],
       "routes": [{"name": "all", "match": {"path_prefix": "/"}, "service": "legacy"}]}


async def until(condition: object, timeout: float, what: str) -> float:
    """Seconds until `condition()` held (polled on the loop); fails after `timeout`."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def test_a_sidecar_follows_the_control_plane_through_its_admin_api(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    peel("ca", "init", "--dir", str(ca_dir), "--trust-domain", "peel.internal")
    (tmp_path / "cp").mkdir()
    control = PeelServe(tmp_path / "cp", extra_settings=f'[identity]\nca_dir = "{ca_dir}"\n')
    control.upgrade_with_token()
    control.commit(DOC)
    control.start()
    node = tmp_path / "node"
    node.mkdir()
    state = node / "identity"
    (node / "peel.toml").write_text(f'[identity]\nstate_dir = "{state}"\n')
    url = f"http://127.0.0.1:{control.admin_port}"  # plain http is allowed to a loopback address
    try:
        token = peel("join-token", "create", "--service", "orders", "--config", str(control.config)).stdout
        done = peel("join", "--token", token.strip(), "--control", url, "--advertise",
                    "https://127.0.0.1:15443", "--config", str(node / "peel.toml"))
        assert "registered https://127.0.0.1:15443 for orders" in done.stdout
        store = control.store()
        assert [(r.service, r.url, r.identity) for r in store.registrations()] == [
            ("orders", "https://127.0.0.1:15443", ORDERS)]

        holder = TableHolder()
        snapshot = node / "snapshot.json"
        follower = ControlFollower(holder, state_dir=state, snapshot=snapshot,
                                   advertise="https://127.0.0.2:15443", ttl=30, wait=10, retry=0.2)

        async def main() -> None:
            assert await follower.refresh_async()
            assert holder.table is not None and holder.table.version == 1
            assert [e.url for e in holder.table.services["orders"].endpoints] == [
                "http://10.0.0.7:9000", "https://127.0.0.1:15443"]
            tasks = [asyncio.create_task(follower.run()), asyncio.create_task(follower.heartbeat())]
            # the heartbeat registers the second address; the registry's move reaches the table
            await until(lambda: "https://127.0.0.2:15443" in
                        [e.url for e in holder.table.services["orders"].endpoints], 10, "the heartbeat")
            # a change on the control plane reaches the sidecar within a few seconds
            start = time.monotonic()
            await asyncio.to_thread(control.commit, {**DOC, "routes": []})
            await until(lambda: holder.table.version == 2, 10, "version 2 on the sidecar")
            took = time.monotonic() - start
            assert took < 5, took  # about 0.3 s when the machine is idle
            # written after the swap, in a thread
            await until(lambda: json.loads(snapshot.read_text())["version"] == 2, 10, "the snapshot")
            # stopping the follower ends its long poll at once (the loop's exit waits on its thread)
            await asyncio.sleep(0.5)  # the next long poll is in flight by now
            cancelled.append(time.monotonic())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        cancelled: list[float] = []
        asyncio.run(main())
        assert time.monotonic() - cancelled[0] < 3, "the loop's exit waited on a long poll's thread"

        async def outage() -> None:
            task = asyncio.create_task(follower.run())
            # the control plane goes away: the sidecar keeps serving its table
            await asyncio.to_thread(control.stop)
            await until(lambda: follower.last_error is not None, 30, "the failure to be noticed")
            assert "control plane" in follower.last_error or "reach" in follower.last_error
            assert holder.table.version == 2 and "orders" in holder.table.services
            task.cancel()

        asyncio.run(outage())
        # a restarted sidecar with the control plane still down serves from its snapshot
        restarted = TableHolder()
        again = ControlFollower(restarted, state_dir=state, snapshot=snapshot, retry=0.2)

        async def restart() -> None:
            assert not await again.refresh_async()
            assert again.load_snapshot()

        asyncio.run(restart())
        assert restarted.table is not None and restarted.table.version == 2
        assert [e.url for e in restarted.table.services["orders"].endpoints] == [
            "http://10.0.0.7:9000", "https://127.0.0.1:15443", "https://127.0.0.2:15443"]
        assert [e.tls.identity if e.tls else None for e in restarted.table.services["orders"].endpoints] \
            == [None, ORDERS, ORDERS]
        store.close()
    finally:
        control.stop()
