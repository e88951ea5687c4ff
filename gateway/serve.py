"""`peel serve`: the process. Binds the listeners, runs the data plane and the admin API, drains.

With one worker (the default) a single process runs both listeners in one event loop. With
`--workers N` the first process binds the sockets, runs the admin API itself and starts N worker
processes that inherit the public listener's socket; the kernel spreads accepted connections over
them. Every process that serves keeps its own route table current from the store (`Watcher`), so
no worker waits on another. A worker that dies is started again, with a growing pause.

Signals: SIGTERM or SIGINT drain — stop accepting, let in-flight requests finish within
`server.grace_period`, exit 0. SIGHUP re-reads the settings file and applies what can change at run
time (log level).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import uvicorn

from facade.counts import TrafficCounts
from facade.flusher import CountsFlusher, instance_id
from gateway import systemd
from gateway.accesslog import AccessLog
from gateway.errors import ConfigError, PeelError, StoreError
from gateway.holder import TableHolder
from gateway.listener import make_server, uvicorn_config
from gateway.pool import UpstreamPool
from gateway.proxy import ProxyApp
from gateway.settings import ListenerSettings, Settings, load_settings
from routes.store import Store
from routes.watcher import Watcher

log = logging.getLogger("peel.serve")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger().setLevel(level.upper())
    # alembic announces its plugin set-up at INFO on every schema check: noise for operators.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))


def bind(listener: ListenerSettings, name: str) -> socket.socket:
    """Bind one listener's socket, or fail with a message naming the settings key."""
    host, port = listener.host, listener.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"listeners.{name}.bind", f"cannot listen on {listener.bind}: "
                          f"{exc.strerror or exc}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def preflight(settings: Settings) -> Store:
    """Refuse to start on a store that is not at this code's schema.

    An unreachable store is not fatal when a snapshot of the last good table exists: the gateway
    serves it and keeps polling.
    """
    store = Store(settings.database.url)
    try:
        store.check_schema()
    except StoreError as exc:
        snapshot = Path(settings.server.snapshot_path)
        if exc.unreachable and snapshot.exists():
            log.warning("%s; starting from the snapshot %s", exc, snapshot)
        else:
            raise
    return store


class Runtime:
    """What one serving process owns: its table holder, watcher, pool and access log."""

    def __init__(self, settings: Settings, store: Store, *, write_snapshots: bool) -> None:
        self.settings = settings
        self.holder = TableHolder()
        self.watcher = Watcher(store, self.holder, interval=settings.server.poll_interval,
                               snapshot=Path(settings.server.snapshot_path),
                               write_snapshots=write_snapshots)
        self.counts = TrafficCounts()
        self.flusher = CountsFlusher(store, self.counts, instance=instance_id(),
                                     interval=settings.facade.counts_interval)
        self.servers: list[uvicorn.Server] = []
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._closers: list[Callable[[], Awaitable[object]]] = []

    def start_background(self, *, counts: bool) -> None:
        """The watcher (and, where requests are served, the traffic-count flusher)."""
        self._tasks.append(asyncio.create_task(self.watcher.run()))
        if counts:
            self._tasks.append(asyncio.create_task(self.flusher.run()))
            self._closers.append(self.flusher.flush)

    async def close(self) -> None:
        """Stop the background work, then flush counts, close pools and the access log."""
        for task in self._tasks:
            task.cancel()
        for closer in reversed(self._closers):
            await closer()

    def ready(self) -> bool:
        return self.holder.table is not None and not self.stopping

    async def load_first_table(self) -> None:
        """Load from the store, else from the snapshot; the listeners open either way."""
        if not await asyncio.to_thread(self.watcher.refresh):
            await asyncio.to_thread(self.watcher.load_snapshot)
        if self.holder.table is None:
            log.error("no route table yet (%s); answering 503 until the store is reachable",
                      self.watcher.last_error or "store empty")

    def data_plane(self, sock: socket.socket) -> uvicorn.Server:
        access_log = AccessLog(self.settings.access_log.target)
        pool = UpstreamPool(self.settings.proxy)
        app = ProxyApp(self.holder, pool, self.settings, access_log, counts=self.counts)
        server = make_server(uvicorn_config(app, self.settings, listener="public", sock_fd=sock.fileno()))
        self.servers.append(server)

        async def close_access_log() -> None:
            access_log.close()

        self._closers += [close_access_log, pool.close]
        return server

    def admin(self, store: Store) -> uvicorn.Server:
        # Imported here: worker processes never serve the admin API and need not carry starlette.
        from gateway.admin.app import build_admin_app

        app = build_admin_app(store, ready=self.ready, settings=self.settings)
        server = make_server(uvicorn_config(app, self.settings, listener="admin"))
        self.servers.append(server)
        return server

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.stopping:
            # Only a second Ctrl-C stops waiting for in-flight requests: a repeated SIGTERM (a
            # process-group kill after the one to the main process) must not cut the drain short.
            if sig == signal.SIGINT:
                for server in self.servers:
                    server.force_exit = True
            return
        self.stopping = True
        systemd.notify("STOPPING=1")
        log.info("draining: no new connections; in-flight requests get %.0f s",
                 self.settings.server.grace_period)
        for server in self.servers:
            server.should_exit = True


def install_signals(runtime: Runtime, config_path: str | None) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stop, sig)
    loop.add_signal_handler(signal.SIGHUP, reload_settings, runtime, config_path)


def reload_settings(runtime: Runtime, config_path: str | None) -> None:
    """SIGHUP: re-read the settings and apply the parts that may change while running."""
    systemd.notify("RELOADING=1", systemd.monotonic_usec())
    try:
        fresh = load_settings(config_path)
    except ConfigError as exc:
        log.error("SIGHUP: settings refused, keeping the running ones: %s", exc)
    else:
        configure_logging(fresh.server.log_level)
        log.info("SIGHUP: settings re-read (log level %s)", fresh.server.log_level)
    systemd.notify("READY=1")


async def run_single(settings: Settings, store: Store, public: socket.socket,
                     admin: socket.socket, config_path: str | None) -> int:
    """One process: both listeners, one watcher."""
    runtime = Runtime(settings, store, write_snapshots=True)
    await runtime.load_first_table()
    proxy_server = runtime.data_plane(public)
    admin_server = runtime.admin(store)
    install_signals(runtime, config_path)
    runtime.start_background(counts=True)
    try:
        serving = [asyncio.create_task(proxy_server.serve(sockets=[public])),
                   asyncio.create_task(admin_server.serve(sockets=[admin]))]
        await _notify_when_started(runtime)
        await asyncio.gather(*serving)
    finally:
        await runtime.close()
    return 0


async def run_worker(settings: Settings, fd: int, config_path: str | None) -> int:
    """A worker process: the public listener on the inherited socket, its own watcher."""
    public = socket.socket(fileno=fd)
    store = Store(settings.database.url)
    runtime = Runtime(settings, store, write_snapshots=False)
    await runtime.load_first_table()
    server = runtime.data_plane(public)
    install_signals(runtime, config_path)
    runtime.start_background(counts=True)
    try:
        await server.serve(sockets=[public])
    finally:
        await runtime.close()
    return 0


async def run_master(settings: Settings, store: Store, public: socket.socket, admin: socket.socket,
                     config_path: str | None) -> int:
    """The first process with several workers: admin API, supervision, snapshots."""
    runtime = Runtime(settings, store, write_snapshots=True)
    await runtime.load_first_table()
    admin_server = runtime.admin(store)
    install_signals(runtime, config_path)
    runtime.start_background(counts=False)
    supervisor = Supervisor(settings.server.workers, public, config_path, runtime)
    supervising = asyncio.create_task(supervisor.run())
    try:
        serving = asyncio.create_task(admin_server.serve(sockets=[admin]))
        await _notify_when_started(runtime)
        await serving
        await supervisor.stop(settings.server.grace_period + 5)
    finally:
        supervising.cancel()
        await runtime.close()
    return 0 if not supervisor.failed else 1


class Supervisor:
    """Starts the worker processes and starts again any that die while the gateway runs."""

    def __init__(self, count: int, public: socket.socket, config_path: str | None,
                 runtime: Runtime) -> None:
        self.count = count
        self.public = public
        self.config_path = config_path
        self.runtime = runtime
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.failed = False

    def spawn(self, slot: int) -> None:
        fd = self.public.fileno()
        args = [sys.executable, "-m", "gateway.serve", "--worker", "--fd", str(fd)]
        if self.config_path:
            args += ["--config", self.config_path]
        self.procs[slot] = subprocess.Popen(args, pass_fds=(fd,))
        log.info("worker %d started (pid %d)", slot, self.procs[slot].pid)

    async def run(self) -> None:
        for slot in range(self.count):
            self.spawn(slot)
        restarts: dict[int, float] = {}
        while not self.runtime.stopping:
            await asyncio.sleep(0.5)
            for slot, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None or self.runtime.stopping:
                    continue
                pause = min(30.0, restarts.get(slot, 0.5) * 2)
                restarts[slot] = pause
                log.error("worker %d (pid %d) exited with %s; starting it again in %.1f s",
                          slot, proc.pid, code, pause)
                await asyncio.sleep(pause)
                if not self.runtime.stopping:
                    self.spawn(slot)

    async def stop(self, timeout: float) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                log.error("worker pid %d did not stop in %.0f s; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait()
                self.failed = True


async def _notify_when_started(runtime: Runtime) -> None:
    deadline = time.monotonic() + 30
    while not all(s.started for s in runtime.servers) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    for name, listener in (("public", runtime.settings.listeners.public),
                           ("admin", runtime.settings.listeners.admin)):
        log.info("%s listener on %s", name, listener.bind)
    systemd.notify("READY=1", f"STATUS=serving config version {runtime.watcher.version}")


def _run(main: Coroutine[Any, Any, int]) -> int:
    import uvloop

    result: int = uvloop.run(main)
    return result


def serve(settings: Settings, config_path: str | None = None) -> int:
    """Run the gateway until a signal stops it. Raises PeelError for what an operator must fix."""
    configure_logging(settings.server.log_level)
    store = preflight(settings)
    public = bind(settings.listeners.public, "public")
    admin = bind(settings.listeners.admin, "admin")
    if settings.server.workers == 1:
        return _run(run_single(settings, store, public, admin, config_path))
    return _run(run_master(settings, store, public, admin, config_path))


def worker_main(argv: list[str]) -> int:
    """Entry of a worker process started by the master (not a user command)."""
    config_path = argv[argv.index("--config") + 1] if "--config" in argv else None
    fd = int(argv[argv.index("--fd") + 1])
    settings = load_settings(config_path)
    configure_logging(settings.server.log_level)
    try:
        return _run(run_worker(settings, fd, config_path))
    except PeelError as exc:
        log.error("worker failed: %s", exc)
        return 1


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(worker_main(sys.argv[1:]))
    sys.exit("gateway.serve is started by `peel serve`")
