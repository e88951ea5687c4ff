"""The PostgreSQL sessions of `routes/listen.py` on a real server: a commit wakes the LISTEN thread,
which reconnects when its session is killed; the leader's advisory lock is held by one session at a
time and taken by another once the holder's session ends."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from sqlalchemy.engine import make_url

from routes.listen import LEADER_LOCK_KEY, AdvisoryLease, ConfigListener, conninfo
from routes.model import Document
from routes.store import Store
from tests.pg import pg_server, pg_url  # noqa: F401
from tests.sockets.conftest import wait_for

pytestmark = pytest.mark.postgres


def terminate(url: str) -> int:
    """End every other session on the database (as a crash or a network cut would)."""
    with psycopg.connect(conninfo(make_url(url)), autocommit=True) as conn:
        row = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()
    return int(row[0]) if row else 0


def test_a_commit_wakes_the_listener_and_it_reconnects_after_its_session_dies(
        pg_url: str) -> None:  # noqa: F811
    store = Store(pg_url)
    store.upgrade()
    woken: list[float] = []
    event = threading.Event()

    def wake() -> None:
        woken.append(time.monotonic())
        event.set()

    listener = ConfigListener(store.engine.url, wake, check_every=0.2)
    listener.start()
    try:
        wait_for(lambda: listener.connected, 10, "the LISTEN session")
        wait_for(lambda: len(woken) == 1, 10, "the wake after connecting")
        store.commit(Document(), actor="t", reason="one")
        wait_for(lambda: listener.notifications == 1, 5, "the notification")
        assert len(woken) == 2
        store.engine.dispose()
        assert terminate(pg_url) >= 1
        wait_for(lambda: len(woken) >= 3, 20, "the wake after reconnecting")
        wait_for(lambda: listener.connected, 20, "the LISTEN session again")
        store.commit(Document(), actor="t", reason="two")
        wait_for(lambda: listener.notifications == 2, 5, "the notification after reconnecting")
    finally:
        listener.stop()
        store.close()
    assert not listener.connected


def test_the_advisory_lease_is_held_by_one_session_and_passes_on_when_it_ends(
        pg_url: str) -> None:  # noqa: F811
    url = make_url(pg_url)
    a, b = AdvisoryLease(url), AdvisoryLease(url)
    try:
        assert a.acquire()
        assert not b.acquire()
        assert a.check() and not b.check()
        a.release()
        assert b.acquire() and b.check()
        assert not a.acquire()
        # the holder's session killed (its process died, its connection dropped)
        assert terminate(pg_url) >= 2
        assert not b.check()
        assert a.acquire() and a.check()
    finally:
        a.release()
        b.release()


@pytest.mark.parametrize("key", [LEADER_LOCK_KEY, -5, 5, 2**40 + 7, -(2**40) - 7])
def test_check_finds_the_lock_whatever_the_sign_of_the_key(pg_url: str, key: int) -> None:  # noqa: F811
    lease = AdvisoryLease(make_url(pg_url), key)
    other = AdvisoryLease(make_url(pg_url), key + 1)
    try:
        assert not lease.check()
        assert other.acquire() and not lease.check()  # another key held by another session
        assert lease.acquire() and lease.check()
    finally:
        lease.release()
        other.release()
