"""Which config version each worker of this gateway serves, for the master's admin API.

    worker:  holder.follow(TableVersionFile(run_dir, os.getpid()).table)   # written at each swap
    master:  await workers_serve(run_dir, supervisor.pids, version, timeout)

A write through the admin API answers once the gateway serves the version it committed
(`gateway.admin.served`). With one process that is its own table. With workers, the master wakes
them (SIGUSR1) and then waits, at most the write's timeout, until every live worker has said that
its table is that version or a later one: each worker writes its table's version to
`{server.run_dir}/table-{pid}` when it swaps one in (a few bytes, written to a temporary name and
renamed: a reader sees the old number or the new one), and the master reads those files. A worker
that has not written one yet (still starting) is waited for like the others: the first table it
loads is the latest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from routes.table import RouteTable

log = logging.getLogger("peel.serve")

# How often the master reads the workers' files while a write waits
POLL_SECONDS = 0.005


def table_file(run_dir: str | os.PathLike[str], pid: int) -> Path:
    return Path(run_dir) / f"table-{pid}"


class TableVersionFile:
    """A worker's `table-{pid}` file: the version of the table it serves (a `TableHolder` follower)."""

    def __init__(self, run_dir: str | os.PathLike[str], pid: int) -> None:
        self.path = table_file(run_dir, pid)
        self._complained = False

    def table(self, table: RouteTable) -> None:
        """Write `table`'s version (on the event loop, at the swap: a small write, no fsync)."""
        tmp: str | None = None
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                f.write(str(table.version))
            os.replace(tmp, self.path)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if not self._complained:  # the admin API's writes then answer after their timeout
                self._complained = True
                log.warning("cannot write %s: %s", self.path, exc)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def served_version(run_dir: str | os.PathLike[str], pid: int) -> int | None:
    """The version worker `pid` last said it serves; None when it has not said (or cannot be read)."""
    try:
        return int(table_file(run_dir, pid).read_text())
    except (OSError, ValueError):
        return None


async def workers_serve(run_dir: str | os.PathLike[str], pids: Callable[[], Iterable[int]],
                        version: int, timeout: float,
                        clock: Callable[[], float] = time.monotonic) -> bool:
    """Wait until every live worker (`pids()`, read again each time) serves `version` or a later
    one, at most `timeout` seconds; whether they all do."""
    deadline = clock() + timeout
    while True:
        behind = [pid for pid in pids() if (served_version(run_dir, pid) or 0) < version]
        if not behind:
            return True
        if clock() >= deadline:
            log.info("workers %s do not serve config version %d yet", behind, version)
            return False
        await asyncio.sleep(POLL_SECONDS)
