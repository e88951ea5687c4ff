"""PostgreSQL sessions of their own, outside the store's pool: the LISTEN for new config versions
and the advisory lock that chooses a fleet's leader.

Both need a connection that lives as long as the process wants (a LISTEN is heard only by the
session that ran it; a session-level advisory lock is held only while its session lives), so
neither can borrow a pooled connection from `routes.store.Store`. Both take the store's URL.

    listener = ConfigListener(store.engine.url, wake=callback)   # callback from the LISTEN thread
    listener.start(); ...; listener.stop()

    lease = AdvisoryLease(store.engine.url, LEADER_LOCK_KEY)
    lease.acquire() -> bool        # blocking: pg_try_advisory_lock on the lease's own session
    lease.check() -> bool          # blocking: the session still answers (so the lock is still ours)
    lease.release()

A dropped session is noticed by the next read on it: TCP keepalives (10 s idle, then 3 probes 5 s
apart) bound how long a silent partition takes to be seen.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import URL

from routes.store import NOTIFY_CHANNEL

log = logging.getLogger("peel.listen")

# The leader's session-level advisory lock: sha256(b"peel-leader")[:8] as a signed bigint (distinct
# from COMMIT_LOCK_KEY and migrations' MIGRATION_LOCK_KEY).
LEADER_LOCK_KEY = int.from_bytes(hashlib.sha256(b"peel-leader").digest()[:8], "big", signed=True)
# libpq keepalives: a peer gone silent is found within about 25 s instead of the kernel's 2 h
KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                              "keepalives_count": 3, "connect_timeout": 5}
# reconnect pauses of the LISTEN thread: doubling from the first, capped
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 15.0


def conninfo(url: URL) -> str:
    """The libpq URL of a SQLAlchemy `postgresql+psycopg://` URL (password included)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _connect(url: URL) -> Any:
    import psycopg  # the `postgres` extra; only a PostgreSQL store gets here

    return psycopg.connect(conninfo(url), autocommit=True, **KEEPALIVES)


class ConfigListener:
    """A thread that LISTENs on `NOTIFY_CHANNEL` and calls `wake()` for every notification.

    `wake` is also called after each (re)connection, since notifications sent while the session was
    down are lost: the caller's poll finds what they would have said. `wake` runs in the listener's
    thread; a serving process passes one that hands over to its event loop.
    """

    def __init__(self, url: URL, wake: Callable[[], object], *, check_every: float = 1.0) -> None:
        self.url = url
        self.wake = wake
        self.check_every = check_every
        self.connected = False
        self.notifications = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="peel-listen", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        pause = BACKOFF_FIRST
        failures = 0
        while not self._stop.is_set():
            try:
                self._listen()
                pause, failures = BACKOFF_FIRST, 0
            except Exception as exc:  # the driver's errors: the server or network went away
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("LISTEN %s lost (%s); polling meanwhile, reconnecting in %.1f s",
                                NOTIFY_CHANNEL, str(exc).strip().splitlines()[0] if str(exc) else
                                type(exc).__name__, pause)
            finally:
                self.connected = False
                self._close()
            self._stop.wait(pause)
            pause = min(pause * 2, BACKOFF_MAX)

    def _listen(self) -> None:
        self._conn = conn = _connect(self.url)
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        self.connected = True
        log.info("listening for new config versions (LISTEN %s)", NOTIFY_CHANNEL)
        self.wake()  # whatever was committed while this session was not listening
        while not self._stop.is_set():
            # a timeout so that stop() is seen; a broken session raises here
            for _ in conn.notifies(timeout=self.check_every):
                self.notifications += 1
                self.wake()
            if self._stop.is_set():
                return
            conn.execute("SELECT 1")  # notifies() alone may not see a peer that went away

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # closing a broken session: nothing left to do
                log.debug("closing the LISTEN session: %s", exc)


class AdvisoryLease:
    """A session-level PostgreSQL advisory lock on a session of its own.

    PostgreSQL releases the lock when the session ends: the process died, or its connection
    dropped. So `acquire()` succeeds in exactly one process of the fleet at a time, and another
    succeeds soon after the holder dies. Blocking calls: run them in a thread.
    """

    def __init__(self, url: URL, key: int = LEADER_LOCK_KEY) -> None:
        self.url = url
        self.key = key
        self._conn: Any = None

    def acquire(self) -> bool:
        """Try once to take the lock (no wait); False when another session holds it or the
        database cannot be reached."""
        # a kept session may have died since the last try: then once more on a fresh one
        for _attempt in range(2 if self._conn is not None else 1):
            try:
                if self._conn is None:
                    self._conn = _connect(self.url)
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
                return bool(row and row[0])
            except Exception as exc:
                log.debug("leader lock not taken: %s", exc)
                self._drop()
        return False

    def check(self) -> bool:
        """Whether the session holding the lock still answers; False (and the session closed)
        when it does not: the lock must be taken as lost."""
        if self._conn is None:
            return False
        try:
            row = self._conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                " AND granted AND ((classid::bigint << 32) | objid::bigint) = %s",
                (self.key,)).fetchone()
            if row and row[0]:
                return True
            log.warning("the leader lock is no longer held by this session")
        except Exception as exc:
            log.warning("the leader's session was lost: %s", str(exc).strip().splitlines()[0]
                        if str(exc) else type(exc).__name__)
        self._drop()
        return False

    def release(self) -> None:
        """Give the lock up (closing the session releases it too)."""
        if self._conn is not None:
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            except Exception as exc:
                log.debug("leader lock release: %s", exc)
        self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:
                log.debug("closing the leader's session: %s", exc)
