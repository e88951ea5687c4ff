"""Keeps one process's route table current: poll the store, load in steps, swap whole.

The request path never waits for any of this. On SQLite a poll first asks the store's
`CommitProbe` (`routes.probe`, a pragma read on the event loop, about 2 µs) whether anything was
committed since the last read; when nothing was, no live registration has expired since and the
last read is recent (`FULL_READ_EVERY` polls), the poll ends there. Otherwise (and always on
PostgreSQL) it reads one cheap query (the latest config version number and the service registry's
stamp, `routes.registry.watch_poll`) in a thread; only when one moved is the new version read (as
its splice of the version before, `config_versions.delta`, when the process holds that one: a
few hundred bytes for a one-route change, not the whole text), and the registered endpoints when
the stamp moved (in a thread: I/O), then decoded and compiled on the event loop in steps
of a few milliseconds (`routes.steps`: the CPU work of a change would hold the GIL against the
loop from a thread), and the new table assigned to the holder in one step. When the store cannot
be reached the last good table keeps serving; at start, when the store is down, the last good
document (with the registered endpoints it was served with) is read from the snapshot file on
local disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from routes.compiler import IncrementalCompiler, compile_incrementally
from routes.document_text import CODEC
from routes.errors import PeelError
from routes.holder import TableHolder
from routes.model import Document
from routes.registry import Registration, Stamp
from routes.steps import STEP_GAP, Steps, run, run_on_loop
from routes.store import ConfigVersion, Store, StoredVersion
from routes.table import RouteTable

log = logging.getLogger("peel.watcher")

# A poll reads the store at least every this many polls, whatever its `CommitProbe` says (5 s at the
# default interval): the probe is a hint, and a read also tells whether the store is reachable.
FULL_READ_EVERY = 20


def write_snapshot(path: Path, version: int, document: Document,
                   registered: Sequence[Registration] = ()) -> None:
    """Write the document (and the registered endpoints it was served with) atomically (temp file,
    fsync, rename) so a crash never leaves half a file. The document is the process's codec's text
    (`routes.document_text`): the lines of a document just committed or read are not encoded again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = f',"registered":{json.dumps([r.to_dict() for r in registered], separators=(",", ":"))}' \
        if registered else ""
    data = f'{{"version":{int(version)},"document":{CODEC.encode(document)}{extra}}}'
    fd, tmp = tempfile.mkstemp(prefix=".snapshot-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_snapshot(path: Path) -> tuple[int, Document] | None:
    """The snapshot's version and document, or None when there is none or it is unreadable."""
    found = read_served_snapshot(path)
    return None if found is None else (found[0], found[1])


def read_served_snapshot(path: Path) -> tuple[int, Document, tuple[Registration, ...]] | None:
    """The snapshot's version, document and registered endpoints, or None (none, or unreadable)."""
    try:
        data: Any = json.loads(path.read_text())
        return (int(data["version"]), Document.parse(data["document"], stored=True),
                tuple(Registration.from_dict(r) for r in data.get("registered", ())))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, PeelError) as exc:
        log.warning("ignoring the route snapshot %s: %s", path, exc)
        return None


Compile = Callable[[Document, int, Sequence[Registration]], RouteTable]
# What a poll read from the store: (latest version, registry stamp, that version, registrations)
_Fetched = tuple[int, Stamp, "StoredVersion | ConfigVersion", tuple[Registration, ...]]


class Watcher:
    """Polls `store` every `interval` seconds and swaps newer tables into `holder`.

    `write_snapshots` is on in one process per gateway (the one that owns the admin listener), so
    several workers do not race on the same file.
    """

    def __init__(self, store: Store, holder: TableHolder, *, interval: float, snapshot: Path,
                 write_snapshots: bool = True,
                 compile: Compile = compile_incrementally,
                 ) -> None:
        self.store = store
        self.holder = holder
        self.interval = interval
        self.snapshot = snapshot
        self.write_snapshots = write_snapshots
        self.compile = compile
        self.store_ok = False
        self.last_error: str | None = None
        self.reloads = 0
        self._failing_version: int | None = None
        # the registry's stamp the current table was compiled with (`routes.registry`), and the
        # registrations read with it: a new config version with the same stamp reuses them
        self._stamp: Stamp | None = None
        self._registered: tuple[Registration, ...] | None = None
        # told the number of a stored config version that failed to compile (once per version)
        self.on_failed: Callable[[int], None] | None = None
        # set by wake(): run() polls at once instead of at the end of its interval
        self._woken = asyncio.Event()
        # SQLite: tells the event loop's polls whether anything was committed (None: always read)
        self._probe = store.commit_probe()
        # when the first live registration expires, as of the last read (its stamp changes then)
        self._expiry: datetime | None = None
        self._polls_unread = 0  # polls the probe ended since the last read
        self.reads = 0  # polls that read the store (for tests and curious operators)

    @property
    def failing_version(self) -> int | None:
        """The newest stored config version that could not be loaded (None: the latest loaded)."""
        return self._failing_version

    @property
    def version(self) -> int:
        table = self.holder.table
        return table.version if table is not None else -1

    def load_snapshot(self) -> bool:
        """Serve the snapshot's table when nothing newer is loaded. True when one was loaded."""
        found = read_served_snapshot(self.snapshot)
        if found is None or found[0] <= self.version:
            return False
        version, document, registered = found
        self._swap(self.compile(document, version, registered), source="snapshot")
        return True

    def refresh(self) -> bool:
        """One synchronous poll: load, compile and swap when the store has a newer version.

        Returns True when a new table was swapped in. Raises nothing: store failures are kept in
        `last_error` and the current table stays. The swap runs the holder's followers in the
        calling thread: a serving process polls with `run()`, which swaps on the event loop.
        """
        found = self.poll()
        if found is None:
            return False
        table, document, registered = found
        self._swap(table, source="store")
        self._write_snapshot(table.version, document, registered)
        return True

    def poll(self) -> tuple[RouteTable, Document, tuple[Registration, ...]] | None:
        """Blocking, thread-safe, no swap: a newer table compiled from the store, or None."""
        fetched = self._fetch()
        return None if fetched is None else run(self._load_steps(fetched))

    def _fetch(self) -> _Fetched | None:
        """The store's side of a poll (blocking I/O): None when nothing moved or it failed."""
        try:
            latest, stamp, self._expiry = self.store.watch_poll()
            self._set_store_ok(True)
        except PeelError as exc:
            self._set_store_ok(False, str(exc))
            return None
        except Exception as exc:  # a driver error the store did not wrap: still keep serving
            self._set_store_ok(False, f"{type(exc).__name__}: {exc}")
            return None
        if stamp == self._stamp and latest in (self.version, self._failing_version):
            return None
        try:
            stored: StoredVersion | ConfigVersion = self.store.fetch(latest) if latest \
                else self.store.latest()
            registered = self._registered
            if registered is None or stamp != self._stamp:
                registered = tuple(self.store.registrations())
        except Exception as exc:
            self._failed(latest, stamp, exc)
            return None
        return latest, stamp, stored, registered

    def _load_steps(self, fetched: _Fetched
                    ) -> Steps[tuple[RouteTable, Document, tuple[Registration, ...]] | None]:
        """The CPU's side of a poll, in steps (`routes.steps`): decode and compile."""
        latest, stamp, stored, registered = fetched
        try:
            current = stored if isinstance(stored, ConfigVersion) \
                else (yield from self.store.decoded_steps(stored))
            yield
            if isinstance(self.compile, IncrementalCompiler):
                table = yield from self.compile.steps(current.document, current.version, registered)
            else:
                table = self.compile(current.document, current.version, registered)
        except Exception as exc:
            self._failed(latest, stamp, exc)
            return None
        self._failing_version = None
        self._stamp = stamp
        self._registered = registered
        return table, current.document, registered

    def _failed(self, latest: int, stamp: Stamp, exc: Exception) -> None:
        # A table that fails to compile leaves the previous one live; say so once per version
        # (and registry state: the next registry change tries again, not every poll).
        self._failing_version = latest
        self._stamp = stamp
        self._registered = None  # read with another stamp, or not at all: read them again
        self.last_error = f"config version {latest} could not be loaded: {exc}"
        log.error("%s; still serving version %d", self.last_error, self.version)

    async def refresh_async(self) -> bool:
        """`refresh` for the event loop: the store's queries in a thread; decoding and compiling
        on the loop in steps (`routes.steps`: in a thread they would hold the GIL against the
        loop), then the swap (the followers run there, before any request sees the table); the
        snapshot written in a thread."""
        if self._nothing_committed():
            return False
        failing = self._failing_version
        fetched = await asyncio.to_thread(self._fetch)
        # the first table (none served yet: no request waits) is loaded without the loop's gaps
        # between steps, 60 of them for 10,000 routes
        gap = STEP_GAP if self.holder.table is not None else 0.0
        found = None if fetched is None else await run_on_loop(self._load_steps(fetched), gap)
        if found is None:
            if self._failing_version is not None and self._failing_version != failing \
                    and self.on_failed is not None:
                self.on_failed(self._failing_version)
            return False
        table, document, registered = found
        self._swap(table, source="store")
        await asyncio.to_thread(self._write_snapshot, table.version, document, registered)
        return True

    def _nothing_committed(self) -> bool:
        """True when this poll can end without reading the store: its probe saw no commit since the
        last read, the store was reachable then, no live registration has expired since, and the
        last read is less than `FULL_READ_EVERY` polls old. Counts the reads."""
        probe = self._probe
        moved = probe is None or probe.moved()  # asked every poll: it compares with its last answer
        expiry = self._expiry
        if moved or not self.store_ok or self._polls_unread >= FULL_READ_EVERY \
                or (expiry is not None and datetime.now(UTC) >= expiry):
            self._polls_unread = 0
            self.reads += 1
            return False
        self._polls_unread += 1
        return True

    def wake(self) -> None:
        """Poll now rather than at the end of the interval (a NOTIFY said a version was committed).

        Call on the event loop (from another thread: `loop.call_soon_threadsafe(watcher.wake)`).
        Wakes that arrive while a poll runs make one more poll after it, not one each.
        """
        self._woken.set()

    async def run(self) -> None:
        """Poll every `interval` seconds, and at once when woken, until cancelled."""
        while True:
            self._woken.clear()
            await self.refresh_async()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self.interval)

    def _write_snapshot(self, version: int, document: Document,
                        registered: Sequence[Registration] = ()) -> None:
        if self.write_snapshots:
            try:
                write_snapshot(self.snapshot, version, document, registered)
            except OSError as exc:
                log.warning("could not write the route snapshot %s: %s", self.snapshot, exc)

    def _swap(self, table: RouteTable, *, source: str) -> None:
        self.holder.swap(table)
        self.reloads += 1
        log.info("route table version %d loaded from the %s (%d routes)", table.version, source,
                 len(table.routes))

    def _set_store_ok(self, ok: bool, error: str | None = None) -> None:
        if ok and not self.store_ok:
            if self.last_error is not None:
                log.info("store reachable again")
            self.last_error = None
        elif not ok and (self.store_ok or self.last_error != error):
            log.error("store unreachable, serving config version %d: %s", self.version, error)
            self.last_error = error
        self.store_ok = ok
