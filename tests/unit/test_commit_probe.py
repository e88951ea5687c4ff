"""`CommitProbe` (routes/probe.py) and the watcher's polls that end on its answer (routes/watcher.py):
a poll reads the store only when something was committed, a live registration expired, the store
was unreachable, or `FULL_READ_EVERY` polls went by; a commit is still served on the next poll."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from routes.holder import TableHolder
from routes.model import Document
from routes.probe import CommitProbe
from routes.store import Store
from routes.watcher import FULL_READ_EVERY, Watcher

ORDERS = "spiffe://peel.internal/svc/orders"


def test_the_probe_answers_whether_another_connection_committed(tmp_path: Path) -> None:
    path = tmp_path / "peel.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("CREATE TABLE t (x)")
    probe = CommitProbe(str(path))
    try:
        assert probe.moved()  # the first answer: nothing to compare with
        assert not probe.moved()
        writer.execute("INSERT INTO t VALUES (1)")
        assert probe.moved()
        assert not probe.moved()
        writer.execute("BEGIN")
        writer.execute("INSERT INTO t VALUES (2)")
        assert not probe.moved()  # not committed yet
        writer.execute("COMMIT")
        assert probe.moved()
        probe.close()
        assert probe.moved()  # a new connection: nothing to compare with again
        assert not probe.moved()
    finally:
        probe.close()
        writer.close()


def test_a_probe_of_a_missing_file_says_maybe_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "gone.db"
    probe = CommitProbe(str(path))
    assert probe.moved()
    assert probe.moved()
    assert not path.exists()


def test_only_a_sqlite_file_store_has_a_probe(tmp_path: Path) -> None:
    memory = Store("sqlite://")
    file = Store(f"sqlite:///{tmp_path / 'peel.db'}")
    try:
        assert memory.commit_probe() is None
        assert isinstance(file.commit_probe(), CommitProbe)
    finally:
        memory.close()
        file.close()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'peel.db'}")
    store.upgrade()
    store.commit(Document(), actor="t", reason="first")
    return store


def _poll(watcher: Watcher, times: int = 1) -> None:
    async def main() -> None:
        for _ in range(times):
            await watcher.refresh_async()
    asyncio.run(main())


def test_polls_read_the_store_only_after_a_commit(store: Store, tmp_path: Path) -> None:
    watcher = Watcher(store, TableHolder(), interval=0.25, snapshot=tmp_path / "snapshot.json")
    try:
        _poll(watcher)
        assert (watcher.reads, watcher.version) == (1, 1)
        _poll(watcher, 5)
        assert watcher.reads == 1  # nothing committed: the probe ended each poll
        store.commit(Document(), actor="t", reason="second")
        _poll(watcher)
        assert (watcher.reads, watcher.version) == (2, 2)
        # a write to any other table (a token) is a commit too: read, nothing new to load
        store.create_token("ops")
        _poll(watcher)
        assert (watcher.reads, watcher.version) == (3, 2)
    finally:
        store.close()


def test_a_poll_reads_the_store_every_full_read_every_polls_whatever_the_probe_says(
        store: Store, tmp_path: Path) -> None:
    watcher = Watcher(store, TableHolder(), interval=0.25, snapshot=tmp_path / "snapshot.json")
    try:
        _poll(watcher, 1 + FULL_READ_EVERY)
        assert watcher.reads == 1
        _poll(watcher)
        assert watcher.reads == 2
    finally:
        store.close()


def test_a_poll_reads_the_store_when_a_live_registration_has_expired(store: Store, tmp_path: Path) -> None:
    # registered 29.5 s ago for 30 s: it expires half a second from now, with no write to see
    store.register_endpoint("orders", "https://10.0.2.15:15443", ORDERS,
                            now=datetime.now(UTC) - timedelta(seconds=29.5))
    watcher = Watcher(store, TableHolder(), interval=0.25, snapshot=tmp_path / "snapshot.json")
    try:
        _poll(watcher)
        assert [r.url for r in watcher.holder.table.registered] == ["https://10.0.2.15:15443"]  # type: ignore[union-attr]
        _poll(watcher)
        assert watcher.reads == 1
        asyncio.run(asyncio.sleep(0.6))
        _poll(watcher)
        assert watcher.reads == 2
        assert watcher.holder.table.registered == ()  # type: ignore[union-attr]
    finally:
        store.close()


def test_without_a_probe_every_poll_reads_the_store(tmp_path: Path) -> None:
    store = Store("sqlite://")
    store.upgrade()
    watcher = Watcher(store, TableHolder(), interval=0.25, snapshot=tmp_path / "snapshot.json")
    try:
        _poll(watcher, 3)
        assert watcher.reads == 3
    finally:
        store.close()
