"""A sidecar's table source: its control plane's admin API, not the database.

    follower = ControlFollower(holder, state_dir=..., snapshot=..., advertise="https://10.0.2.15:15443")
    await follower.refresh_async() or follower.load_snapshot()   # at start
    tasks: follower.run(), follower.heartbeat()

A sidecar (`server.source = "control"`) has no database credentials. It asks the control plane it
joined (`identity.json`'s `control`, verified with `[identity] control_cacert`) for the current
config version and registered endpoints, `GET /api/v1/control/config`, as itself: each request is
signed by its certificate's key (`gateway.identity.caller`), so nothing but its identity is needed
and a renewed certificate is used from the next request on. It then long-polls with the tag of what
it holds (`?known=TAG&wait=25`): the control plane answers as soon as the config version or the
registry moves (it looks every 0.25 s), so a change reaches the sidecar within about a second.

The answer is compiled in a thread and swapped on the loop (the holder's followers run there, as
with the database watcher), then written to the snapshot file, the same file and format as the
watcher's (`routes.watcher.write_snapshot`): a sidecar restarted while the control plane is down
serves the last table it had. When the control plane is unreachable or refuses, the last good
table keeps serving; the error is logged once per distinct error and the request retried every
`RETRY` seconds. A config version that does not compile is logged once and skipped (the last good
table stays) until the next change.

Its counts go the same way (`gateway.server.report_control`, through `call`).

`heartbeat()` registers this sidecar's inbound listener (`advertise`) under its service in the
service registry (`POST /api/v1/control/endpoints`) at once and every third of `ttl`, so the
registration outlives a missed beat or two and expires within `ttl` after the sidecar stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import http.client
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from gateway.core.settings import Settings
from routes.compiler import compile_incrementally
from routes.holder import TableHolder
from routes.model import Document, ParseMemo
from routes.registry import DEFAULT_TTL, Registration
from routes.table import RouteTable
from routes.watcher import read_served_snapshot, write_snapshot

log = logging.getLogger("peel.watcher")

CONFIG_PATH = "/api/v1/control/config"
ENDPOINTS_PATH = "/api/v1/control/endpoints"
WAIT = 25.0  # seconds a long poll waits on the control plane (its limit is 30)
RETRY = 2.0  # seconds between attempts while the control plane cannot be reached

Compile = Callable[[Document, int, Sequence[Registration]], RouteTable]
_T = TypeVar("_T")
# the connections a task's thread opened (`ControlFollower._in_thread`), to abort when it is cancelled
_IN_FLIGHT: contextvars.ContextVar[set[http.client.HTTPConnection]] = contextvars.ContextVar("_IN_FLIGHT")


class ControlFollower:
    """Keeps `holder` on the control plane's current table (module docstring).

    The same surface as `routes.watcher.Watcher` where a serving process uses one: `version`,
    `last_error`, `reloads`, `load_snapshot`, `refresh_async`, `run`, `wake`, `on_failed`.
    """

    store = None  # no database: a serving process's LISTEN and leader need none here
    write_snapshots = True

    def __init__(self, holder: TableHolder, *, state_dir: Path, snapshot: Path, cafile: str | None = None,
                 advertise: str = "", ttl: float = DEFAULT_TTL.total_seconds(), wait: float = WAIT,
                 retry: float = RETRY, compile: Compile = compile_incrementally) -> None:
        self.holder = holder
        self.state_dir = state_dir
        self.snapshot = snapshot
        self.cafile = cafile
        self.advertise = advertise
        self.ttl = ttl
        self.wait = wait
        self.retry = retry
        self.compile = compile
        # each answer is a whole document: its unchanged routes are parsed and compiled once
        self._memo = ParseMemo()
        self.tag = ""
        self.last_error: str | None = None
        self.reloads = 0
        self.registered = 0  # successful registrations (heartbeats) so far
        self._failing: str | None = None
        self.on_failed: Callable[[int], None] | None = None
        self._woken = asyncio.Event()

    @property
    def version(self) -> int:
        table = self.holder.table
        return table.version if table is not None else -1

    # -- talking to the control plane (blocking; run in a thread) --------------------------------

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = 30.0) -> tuple[int, dict[str, Any] | None]:
        """One signed request to the control plane (blocking; `gateway.identity.caller.call`); what
        else a sidecar sends it goes through here too (its counts: `gateway.server.report_control`)."""
        return self._call(method, path, body, timeout)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              timeout: float = 30.0) -> tuple[int, dict[str, Any] | None]:
        from gateway.identity.caller import call
        from gateway.identity.join import read_state

        in_flight = _IN_FLIGHT.get(None)
        return call(read_state(self.state_dir), method, path, body, cafile=self.cafile, timeout=timeout,
                    opened=in_flight.add if in_flight is not None else None)

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(*args)` in a thread; cancelled, its requests are aborted, so the thread ends with it
        (a long poll would otherwise hold the process's exit for up to `wait` seconds)."""
        from gateway.identity.caller import abort

        opened: set[http.client.HTTPConnection] = set()
        _IN_FLIGHT.set(opened)  # this task's own set: the thread runs in a copy of its context
        try:
            return await asyncio.to_thread(fn, *args)
        except asyncio.CancelledError:
            for conn in list(opened):
                abort(conn)
            raise

    def fetch(self, wait: float) -> dict[str, Any] | None:
        """The control plane's answer when it differs from what this sidecar holds, else None.

        Raises `IdentityError` (unreachable, refused, no identity)."""
        query = {"known": self.tag, "wait": f"{wait:g}"} if self.tag and wait else (
            {"known": self.tag} if self.tag else {})
        path = CONFIG_PATH + ("?" + urlencode(query) if query else "")
        status, answer = self._call("GET", path, timeout=wait + 15.0)
        return answer if status == 200 else None

    def load(self, answer: dict[str, Any]) -> tuple[RouteTable, Document, tuple[Registration, ...]]:
        """Compile an answer (blocking); raises what parsing or compiling raises."""
        version = int(answer["version"])
        document = Document.parse(answer["document"], stored=True, memo=self._memo)
        registered = tuple(Registration.from_dict(r) for r in answer.get("registered", ()))
        return self.compile(document, version, registered), document, registered

    # -- the serving process's side -----------------------------------------------------------------

    def load_snapshot(self) -> bool:
        """Serve the snapshot's table when nothing newer is loaded. True when one was loaded."""
        found = read_served_snapshot(self.snapshot)
        if found is None or found[0] <= self.version:
            return False
        version, document, registered = found
        self._swap(self.compile(document, version, registered), source="snapshot")
        return True

    async def refresh_async(self, wait: float = 0.0) -> bool:
        """One request (a long poll when `wait`): True when a new table was swapped in. Raises
        nothing: failures are kept in `last_error` and the current table stays."""
        from gateway.identity.errors import IdentityError

        try:
            answer = await self._in_thread(self.fetch, wait)
        except IdentityError as exc:
            self._failed(str(exc))
            return False
        if self.last_error is not None and self._failing is None:
            log.info("control plane reachable again")
            self.last_error = None
        if answer is None:
            return False
        tag = str(answer.get("tag", ""))
        try:
            table, document, registered = await asyncio.to_thread(self.load, answer)
        except Exception as exc:
            # A table that fails to compile leaves the previous one live; said once per tag.
            self.tag = self._failing = tag
            self.last_error = f"config version {answer.get('version')} could not be loaded: {exc}"
            log.error("%s; still serving version %d", self.last_error, self.version)
            if self.on_failed is not None and isinstance(answer.get("version"), int):
                self.on_failed(answer["version"])
            return False
        self.tag, self._failing, self.last_error = tag, None, None
        self._swap(table, source="control plane")
        try:
            await asyncio.to_thread(write_snapshot, self.snapshot, table.version, document, registered)
        except OSError as exc:
            log.warning("could not write the route snapshot %s: %s", self.snapshot, exc)
        return True

    def wake(self) -> None:
        """Ask again now (instead of after the retry pause)."""
        self._woken.set()

    async def run(self) -> None:
        """Long-poll until cancelled; pause `retry` seconds after a failure, or after a poll that
        ended well before its wait without a new table (a control plane draining or starting)."""
        loop = asyncio.get_running_loop()
        while True:
            self._woken.clear()
            started = loop.time()
            if not await self.refresh_async(self.wait) and loop.time() - started < self.wait / 2:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), self.retry)

    async def heartbeat(self) -> None:
        """Register `advertise` now and every `ttl / 3` seconds until cancelled (none without one)."""
        from gateway.identity.errors import IdentityError

        if not self.advertise:
            return
        error: str | None = None
        while True:
            body = {"endpoint": self.advertise, "ttl": self.ttl}
            try:
                await self._in_thread(self._call, "POST", ENDPOINTS_PATH, body)
                self.registered += 1
                if error is not None:
                    log.info("registered %s in the service registry again", self.advertise)
                error = None
            except IdentityError as exc:
                if str(exc) != error:
                    log.error("could not register %s in the service registry: %s", self.advertise, exc)
                error = str(exc)
            await asyncio.sleep(self.ttl / 3 if error is None else min(self.retry, self.ttl / 3))

    async def deregister(self) -> None:
        """Remove `advertise` from the registry (a clean stop); a failure is only logged."""
        from gateway.identity.errors import IdentityError

        if not self.advertise:
            return
        try:
            await asyncio.to_thread(self._call, "DELETE", ENDPOINTS_PATH, {"endpoint": self.advertise}, 5.0)
        except IdentityError as exc:
            log.warning("could not remove %s from the service registry: %s", self.advertise, exc)

    def _failed(self, error: str) -> None:
        if error != self.last_error:
            log.error("control plane unreachable, serving config version %d: %s", self.version, error)
        self.last_error = error
        self._failing = None

    def _swap(self, table: RouteTable, *, source: str) -> None:
        self.holder.swap(table)
        self.reloads += 1
        log.info("route table version %d loaded from the %s (%d routes, %d services)", table.version,
                 source, len(table.routes), len(table.services))


def control_follower(settings: Settings, holder: TableHolder) -> ControlFollower:
    """The follower `peel serve` runs for a sidecar with `server.source = "control"`."""
    return ControlFollower(holder, state_dir=Path(settings.identity.state_dir),
                           snapshot=Path(settings.server.snapshot_path),
                           cafile=settings.identity.control_cacert or None,
                           advertise=settings.listeners.inbound.advertise)
