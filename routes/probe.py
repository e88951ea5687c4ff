"""`CommitProbe`: has anything been committed to a SQLite store since the last look?

A serving process's watcher polls the store every `server.poll_interval` seconds (0.25 by default)
for a newer config version and a changed service registry: two queries, each on its own pooled
connection and transaction, about 0.3 ms of CPU in a worker thread, four times a second, in every
process, for a store that changes a few times a day. That thread's CPU competes with the event
loop for the process's share of the cores: without it an idle gateway uses 40 % less CPU and the
p99 at a fixed 4,000 req/s fell 3-7 % (bench/README.md).

SQLite answers the question itself: `PRAGMA data_version` on a connection changes whenever another
connection commits to the database (any process, any table), and reading it costs about 2 µs, no
transaction left open. The probe keeps one connection for it, never writes through it, and runs on
the caller's thread (the event loop: cheap enough not to hand over to a thread). It is a hint, not
the truth: whatever it cannot read (a busy database, an error) answers "maybe", and the caller then
reads the store as before.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class CommitProbe:
    """`moved()`: whether another connection may have committed to the SQLite file at `path` since
    the previous call. The first call answers True (nothing to compare with)."""

    __slots__ = ("_connection", "_path", "_seen")

    def __init__(self, path: str) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None
        self._seen: int | None = None

    def moved(self) -> bool:
        try:
            if self._connection is None:
                # autocommit: no transaction stays open (an open read would hold back checkpoints);
                # no busy wait: a database locked for recovery answers "maybe" at once
                # (mode=rw: a file that is gone is an error, not a new empty database)
                self._connection = sqlite3.connect(f"{Path(self._path).absolute().as_uri()}?mode=rw",
                                                   uri=True, timeout=0, isolation_level=None,
                                                   check_same_thread=False)
            row = self._connection.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            self.close()
            return True
        seen, self._seen = self._seen, int(row[0])
        return seen != self._seen

    def close(self) -> None:
        """Close the connection (the next `moved()` opens another and answers True)."""
        connection, self._connection, self._seen = self._connection, None, None
        if connection is not None:
            connection.close()
