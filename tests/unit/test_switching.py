"""`SwitchingOften`: the GIL handed between threads more often while an admin request is in flight in
a process that also serves traffic, and the interval restored when the last one ends."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.admin.app import SwitchingOften
from gateway.core.settings import load_settings
from gateway.server.serve import SWITCH_INTERVAL, SWITCH_INTERVAL_ADMIN, Runtime
from routes.store import Store


def interval() -> float:
    return round(sys.getswitchinterval(), 6)  # kept in microseconds: 0.0002 reads 0.00019999...


def test_the_interval_is_short_while_any_admin_request_is_in_flight() -> None:
    seen: list[tuple[str, float]] = []
    gates = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((scope.get("path", scope["type"]), interval()))
        if scope["type"] == "http":
            await gates[scope["path"]].wait()
        seen.append((scope.get("path", scope["type"]), interval()))

    async def nothing() -> dict[str, Any]:
        return {}

    async def dropped(message: dict[str, Any]) -> None:
        pass

    wrapped = SwitchingOften(app, interval=SWITCH_INTERVAL_ADMIN)
    before = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)

    async def main() -> None:
        await wrapped({"type": "lifespan"}, nothing, dropped)  # not a request: left alone
        a = asyncio.create_task(wrapped({"type": "http", "path": "a"}, nothing, dropped))
        b = asyncio.create_task(wrapped({"type": "http", "path": "b"}, nothing, dropped))
        await asyncio.sleep(0.01)
        gates["a"].set()
        await a
        assert interval() == SWITCH_INTERVAL_ADMIN  # b is still in flight
        gates["b"].set()
        await b

    try:
        asyncio.run(main())
        assert seen[:2] == [("lifespan", SWITCH_INTERVAL)] * 2
        assert all(interval == SWITCH_INTERVAL_ADMIN for _, interval in seen[2:])
        assert interval() == SWITCH_INTERVAL and wrapped.in_flight == 0
    finally:
        sys.setswitchinterval(before)


def test_a_failing_request_restores_the_interval() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("refused")

    before = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        wrapped = SwitchingOften(app, interval=SWITCH_INTERVAL_ADMIN)
        with pytest.raises(RuntimeError, match="refused"):
            asyncio.run(wrapped({"type": "http"}, None, None))  # type: ignore[arg-type]
        assert interval() == SWITCH_INTERVAL and wrapped.in_flight == 0
    finally:
        sys.setswitchinterval(before)


def test_only_the_admin_api_of_a_process_that_serves_traffic_is_wrapped(tmp_path: Path) -> None:
    settings = load_settings(None, environ={"PEEL_SERVER_RUN_DIR": str(tmp_path)})
    with Store("sqlite://") as store:
        store.upgrade()
        runtime = Runtime(settings, store, write_snapshots=False)
        one_process, master = runtime.admin(store, serving=True), runtime.admin(store, serving=False)
    outermost = one_process.config.app.user_middleware[0]
    assert outermost.cls is SwitchingOften and outermost.kwargs == {"interval": SWITCH_INTERVAL_ADMIN}
    assert all(m.cls is not SwitchingOften for m in master.config.app.user_middleware)
