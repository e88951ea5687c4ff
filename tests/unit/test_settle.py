"""What keeps the cyclic garbage collector off the request path (`gateway.server.serve.Settler`).

A serving process freezes every table it loads, which is safe only because neither a table nor a
request leaves reference cycles behind: an old table is freed by reference counting once dropped,
frozen or not, and a request's objects go the same way, so the collector's young passes, which
would walk a new 10,000-route table's containers again and again, have nothing to trigger them.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from uvicorn.server import ServerState

from gateway.edge.protocol import PeelHttpProtocol
from gateway.server import serve
from gateway.server.serve import SWITCH_INTERVAL, Settler, settle_memory
from routes.changes import put_route
from routes.compiler import IncrementalCompiler
from routes.diff import diff
from routes.document_text import DocumentCodec
from routes.holder import TableHolder
from routes.model import Document, Route
from tests.fakes.served import until_served
from tests.fakes.transport import RecordingTransport
from tests.unit.test_cycle import connected


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def garbage() -> tuple[int, Counter[str]]:
    """How many objects the collector finds unreachable now, and of which types."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        found = gc.collect()
        kinds = Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return found, kinds


def document(routes: int, flipped: int = -1) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [
        {"name": f"r{i}", "match": {"path_prefix": f"/r{i}-v2" if i == flipped else f"/r{i}",
                                    "headers": [{"name": "x-beta", "regex": "^u[0-9]+$"}]},
         "service": "old",
         "rewrite": {"path_prefix": "/", "request_headers": {"set": {"x-from": "peel"}}},
         "migration": {"to": "new", "stage": "canary", "percent": 10}}
        for i in range(routes)]
    return {"services": [{"name": "old", "endpoints": ["http://127.0.0.1:9001"]},
                         {"name": "new", "endpoints": ["http://127.0.0.1:9002"]}],
            "routes": rows}


def test_a_dropped_document_and_table_are_freed_without_the_collector(collector_off: None) -> None:
    codec = DocumentCodec()
    compiler = IncrementalCompiler()
    old = codec.decode(codec.encode(Document.parse(document(50))))
    table = compiler(old, 1)
    # a one-route change, as a serving process makes it: parsed, diffed, encoded, compiled
    new = Document.parse(document(50, flipped=7))
    assert diff(old, new)
    text = codec.encode(new)
    table = compiler(codec.decode(text), 2)
    assert table.version == 2
    # an admin edit (with its delta), its diff, compile and encode; a worker reading it back
    worker, worker_compiler = DocumentCodec(), IncrementalCompiler()
    worker_compiler(worker.decode(text), 2)
    edited = put_route(table_document := codec.decode(text), Route.parse(
        {"name": "r3", "match": {"path_prefix": "/three"}, "service": "old"}, "route"))
    assert diff(table_document, edited)
    table = compiler(edited, 3)
    text = codec.encode(edited)
    assert worker_compiler(worker.decode(text), 3).route("r3") is not None
    del old, new, text, table, edited, table_document, worker, worker_compiler
    codec, compiler = DocumentCodec(), IncrementalCompiler()
    found, kinds = garbage()
    assert found == 0, kinds.most_common(10)


def test_requests_on_a_connection_leave_no_reference_cycles(collector_off: None) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def one(protocol: PeelHttpProtocol, state: ServerState) -> None:
        protocol.data_received(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        await until_served(state)

    async def go() -> tuple[int, Counter[str], bytes]:
        protocol, state, transport = connected(app)
        await one(protocol, state)  # the connection's own objects, made once
        garbage()
        for _ in range(50):
            await one(protocol, state)
        found, kinds = garbage()
        return found, kinds, bytes(transport.written)

    found, kinds, written = asyncio.run(go())
    assert written.count(b"HTTP/1.1 200 OK") == 51
    assert found == 0, kinds.most_common(10)


def test_a_closed_connection_leaves_no_reference_cycle(collector_off: None) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def go() -> tuple[int, Counter[str]]:
        first, state, _ = connected(app)  # the server's own objects (its config), made once
        garbage()
        for _ in range(5):
            protocol = PeelHttpProtocol(config=first.config, server_state=state, app_state={})
            protocol.connection_made(RecordingTransport())
            protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            await until_served(state)
            protocol.connection_lost(None)
            del protocol
        for _ in range(3):  # the last connection's task ends too
            await asyncio.sleep(0)
        return garbage()

    found, kinds = asyncio.run(go())
    assert found == 0, kinds.most_common(10)


class Marker:
    """An object in a reference cycle of its own."""

    def __init__(self) -> None:
        self.itself = self


def test_settling_a_table_freezes_the_young_generation_without_a_collection() -> None:
    now = [0.0]
    settler = Settler(thaw_every=600, clock=lambda: now[0])
    table = IncrementalCompiler()(Document.parse(document(3)), 1)
    gc.collect()
    before = gc.get_freeze_count()
    kept = [[i] for i in range(1000)]
    try:
        collections = gc.get_stats()[0]["collections"]
        stray = weakref.ref(Marker())  # garbage in a cycle (nothing Peel makes): frozen, not collected
        settler.table(table)
        assert gc.get_stats()[0]["collections"] == collections  # no pass on the event loop
        assert gc.get_freeze_count() >= before + len(kept)
        assert stray() is not None
        now[0] = 600.0
        settler.table(table)  # the thaw frees it
        assert stray() is None
    finally:
        gc.unfreeze()


def test_a_serving_process_settles_every_table_and_shortens_the_switch_interval() -> None:
    holder = TableHolder()
    interval = sys.getswitchinterval()
    try:
        settle_memory(holder)
        assert sys.getswitchinterval() == SWITCH_INTERVAL
        frozen = gc.get_freeze_count()
        kept = [[i] for i in range(500)]
        holder.swap(IncrementalCompiler()(Document.parse(document(3)), 1))  # the settler follows
        assert gc.get_freeze_count() >= frozen + len(kept)
    finally:
        sys.setswitchinterval(interval)
        gc.unfreeze()


def test_the_heap_goes_back_to_the_os_after_start_up_and_after_each_thaw(
        monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[int] = []
    monkeypatch.setattr(serve, "release_free_heap", lambda: released.append(gc.get_freeze_count()) or True)
    holder = TableHolder()
    interval = sys.getswitchinterval()
    now = [0.0]
    try:
        settle_memory(holder)
        assert len(released) == 1 and released[0] > 0  # after the freeze
        settler = Settler(thaw_every=600, clock=lambda: now[0])
        table = IncrementalCompiler()(Document.parse(document(3)), 1)
        settler.table(table)
        assert len(released) == 1  # an ordinary table: no trim on the event loop
        now[0] = 600.0
        settler.table(table)
        assert len(released) == 2  # the thaw's full collection freed what it could
    finally:
        sys.setswitchinterval(interval)
        gc.unfreeze()


def test_a_second_after_a_table_what_its_change_freed_goes_back_to_the_os(
        monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[str] = []
    monkeypatch.setattr(serve, "release_free_heap",
                        lambda: released.append(threading.current_thread().name) or True)
    settler = Settler(thaw_every=600, trim_after=0.05)
    table = IncrementalCompiler()(Document.parse(document(3)), 1)

    async def until(count: int) -> None:
        for _ in range(100):
            if len(released) >= count:
                return
            await asyncio.sleep(0.01)

    async def serving() -> None:
        for _ in range(3):  # a burst of changes: one trim, due after the last of them
            settler.table(table)
        assert settler.trimming and released == []  # due, not done on the spot
        await until(1)
        await asyncio.sleep(0.1)
        assert len(released) == 1 and released[0] != threading.current_thread().name  # not the loop
        settler.table(table)  # the next change: its own trim
        await until(2)
        assert len(released) == 2

    try:
        asyncio.run(serving())
        settler.table(table)  # no event loop (not serving yet): settle_memory trims
        assert len(released) == 2
    finally:
        gc.unfreeze()


def test_changes_closer_than_the_trim_delay_trim_once_after_the_last(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A trim in the middle of a series of changes handed back the pages the next change took
    again (a page fault each): the trim waits until `trim_after` passed with no new table."""
    released: list[float] = []
    monkeypatch.setattr(serve, "release_free_heap", lambda: released.append(time.monotonic()) or True)
    settler = Settler(thaw_every=600, trim_after=0.3)
    table = IncrementalCompiler()(Document.parse(document(3)), 1)

    async def serving() -> float:
        for _ in range(16):  # a change every 0.04 s for 0.64 s: two trim delays and more
            settler.table(table)
            last = time.monotonic()
            await asyncio.sleep(0.04)
        assert released == []  # none during the series
        for _ in range(200):
            if released:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.4)
        return last

    try:
        last = asyncio.run(serving())
        assert len(released) == 1 and released[0] - last >= 0.3
    finally:
        gc.unfreeze()


def test_a_series_of_changes_that_does_not_pause_is_trimmed_at_the_latest_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables that never stop coming (closer than `trim_after` for good) still get a trim once
    `trim_at_latest` after the first of them, and the next one as long after that."""
    released: list[float] = []
    monkeypatch.setattr(serve, "release_free_heap", lambda: released.append(time.monotonic()) or True)
    settler = Settler(thaw_every=600, trim_after=0.3, trim_at_latest=0.5)
    table = IncrementalCompiler()(Document.parse(document(3)), 1)

    async def serving() -> float:
        first = time.monotonic()
        for _ in range(30):  # a change every 0.04 s for 1.2 s: never 0.3 s without one
            settler.table(table)
            await asyncio.sleep(0.04)
        return first

    try:
        first = asyncio.run(serving())
        assert len(released) == 2
        assert released[0] - first >= 0.5 and released[1] - released[0] >= 0.45
    finally:
        gc.unfreeze()


def test_a_frozen_object_that_dies_in_a_cycle_is_freed_at_the_next_thaw() -> None:
    now = [0.0]
    settler = Settler(thaw_every=600, clock=lambda: now[0])
    table = IncrementalCompiler()(Document.parse(document(3)), 1)
    gc.collect()
    try:
        alive = Marker()  # say, a connection open when a table arrives
        gone = weakref.ref(alive)
        settler.table(table)
        del alive  # it closes: garbage in a cycle, but frozen
        now[0] = 599.0
        settler.table(table)
        assert gone() is not None
        now[0] = 600.0
        settler.table(table)  # the thaw
        assert gone() is None
    finally:
        gc.unfreeze()
