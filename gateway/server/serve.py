"""`peel serve`: the process. Binds the listeners, runs the data plane and the admin API, drains.

With one worker (the default) a single process runs both listeners in one event loop. With
`--workers N` the first process binds the sockets, runs the admin API itself and starts N worker
processes that inherit the public listener's socket; the kernel spreads accepted connections over
them. Every process that serves keeps its own route table current from the store (`Watcher`), so
no worker waits on another. A worker that dies is started again, with a growing pause.

Signals: SIGTERM or SIGINT drain. Readiness turns false at once and every response says
`Connection: close`, while the listeners keep accepting for `server.prestop_delay` seconds (a load
balancer polling /readyz takes the gateway out meanwhile); then the listening sockets close, the
requests in flight and those already accepted get `server.grace_period` to finish, and the process
exits 0. The master forwards the signal to its workers at once and keeps the admin listener until
they are done. A second Ctrl-C forces. SIGHUP re-reads the settings file and applies what can change
at run time (log level, drain timings, limits, the TLS certificates); the master forwards it to the
workers. SIGUSR1 makes a process read the store's latest config version now: the master sends it to
its workers after each version it commits, so they serve the change within milliseconds, not at
their next poll (`gateway.admin.served`).

TLS (`docs/tls.md`): a listener with `tls_certificates` serves HTTPS. The certificates are loaded
(and checked) before any socket is bound, so a bad one stops `peel serve` with the setting's name;
each process that serves a TLS listener loads its own copy and reloads it on SIGHUP and when the
files change. The optional redirect listener runs in the first process. The inbound listener
(`listeners.inbound.mtls`, `docs/mtls.md`) serves the same app with this gateway's identity
(`gateway.identity.bundle`), reloaded like the certificates; with several workers each worker
accepts on the inherited inbound socket too (`--inbound-fd`), with its own identity and table. An
admin listener bound beyond loopback without TLS is logged as a warning at start: its bearer
tokens would cross the network in clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import uvicorn

from facade.counts import TrafficCounts
from facade.flusher import CountsFlusher, instance_id
from facade.shadow_counts import ShadowFlusher, ShadowStats
from facade.window import GuardSamples, SamplesFlusher
from gateway.core import native
from gateway.core.errors import ConfigError
from gateway.core.heap import one_arena, release_free_heap
from gateway.core.settings import LimitsSettings, ListenerSettings, Settings, is_loopback, load_settings
from gateway.dataplane.outbound import (
    OutboundApp,
    OutboundCounts,
    app_endpoint,
    follow_derived,
    outbound_table,
    sidecar_table,
)
from gateway.dataplane.proxy import ProxyApp
from gateway.edge import drain
from gateway.edge.https import Hsts, RedirectApp
from gateway.edge.inbound import InboundListener
from gateway.edge.listener import make_server, uvicorn_config
from gateway.edge.outbound import Tunnels, outbound_protocol
from gateway.edge.protocol import PeelHttpProtocol
from gateway.edge.tls import TlsListener
from gateway.identity.bundle import IdentityBundle, exists
from gateway.identity.renewal import start_renewal
from gateway.server import systemd
from gateway.server.follow_control import ControlFollower, control_follower
from gateway.server.leader import AlwaysLease, Leader, cancel, leader_jobs
from gateway.server.report_control import ControlReport
from gateway.server.served_tables import TableVersionFile, workers_serve
from gateway.server.supervisor import HANDLED, Supervisor
from gateway.telemetry.accesslog import AccessLog
from gateway.telemetry.graph import EdgeCounts, GraphFlusher
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.procstats import LiveView, ProcessState, Publisher
from gateway.telemetry.tracing import Tracing
from gateway.upstream.dial import Dialer
from gateway.upstream.endpoints import Upstreams
from gateway.upstream.health import HealthChecker
from gateway.upstream.pool import UpstreamPool
from routes.errors import PeelError, StoreError
from routes.holder import TableHolder
from routes.listen import AdvisoryLease, ConfigListener
from routes.store import Store
from routes.table import RouteTable
from routes.watcher import Watcher

log = logging.getLogger("peel.serve")



def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger().setLevel(level.upper())
    # alembic announces its plugin set-up at INFO on every schema check: noise for operators.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))


def bind(listener: ListenerSettings, name: str,
         passed: dict[str, socket.socket] | None = None) -> socket.socket:
    """Bind one listener's socket, or fail with a message naming the settings key.

    A socket systemd passed under the listener's name (`FileDescriptorName=` in
    `deploy/vm/peel.socket`) is taken instead of binding: systemd keeps it open across a restart
    or an upgrade, so connections wait in its queue for the next process rather than being refused.
    """
    if passed and name in passed:
        return adopt(passed.pop(name), listener, name)
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


SO_DETACH_FILTER = 27  # <asm-generic/socket.h>


def passed_sockets() -> dict[str, socket.socket]:
    """The listening sockets systemd passed to this process, by name (see `systemd.listen_fds`)."""
    out: dict[str, socket.socket] = {}
    for name, fd in systemd.listen_fds(os.environ, os.getpid()):
        sock = socket.socket(fileno=fd)
        if name in out or sock.type != socket.SOCK_STREAM or not sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            log.warning("ignoring the socket systemd passed as %r (fd %d): not one listening "
                        "stream socket per name", name, fd)
            sock.detach()
            continue
        out[name] = sock
    systemd.forget_listen_fds(os.environ)
    return out


def adopt(sock: socket.socket, listener: ListenerSettings, name: str) -> socket.socket:
    """A listening socket from systemd, made ready to serve as listener `name`."""
    if sys.platform == "linux":
        # A Peel that drained this socket before may have left its drop-every-packet filter on it
        # (gateway/edge/drain.py): the socket outlived that process, so the filter did too.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    address = sock.getsockname()
    if sock.family in (socket.AF_INET, socket.AF_INET6) and address[1] != listener.port:
        log.warning("listeners.%s.bind says %s but systemd passed a socket on port %s: serving "
                    "that one; make the socket unit and the setting agree", name, listener.bind,
                    address[1])
    sock.setblocking(False)
    sock.set_inheritable(True)
    drain.hold(sock)  # the drain leaves it to systemd and the next process
    log.info("%s listener: socket passed by systemd (%s)", name, address)
    return sock


def load_identity(settings: Settings) -> IdentityBundle | None:
    """This gateway's identity: required by the inbound listener, used for upstream mTLS when the
    state directory holds one; `ConfigError` naming `identity.state_dir` when it cannot be used."""
    inbound = settings.listeners.inbound.mtls != "off"
    if inbound or exists(settings.identity.state_dir):
        return IdentityBundle(settings.identity.state_dir)
    return None


def load_tls(settings: Settings, names: tuple[str, ...] = ("public", "admin")) -> dict[str, TlsListener]:
    """The TLS side of each listener in `names` that has certificates; `ConfigError` naming the
    setting for a certificate or key that cannot be used."""
    out: dict[str, TlsListener] = {}
    for name in names:
        listener: ListenerSettings = getattr(settings.listeners, name)
        if listener.tls:
            out[name] = TlsListener(listener, f"listeners.{name}")
    return out


def warn_plaintext_admin(settings: Settings) -> None:
    """Loud, at start: an admin listener beyond loopback without TLS carries tokens in clear."""
    admin = settings.listeners.admin
    if not admin.tls and not is_loopback(admin.host):
        log.warning("INSECURE: the admin listener binds %s without TLS: admin bearer tokens and every "
                    "change to routes cross the network in clear, readable and replayable by anyone "
                    "on the path. Set listeners.admin.tls_certificates (docs/tls.md) or bind it to "
                    "127.0.0.1", admin.bind)


@dataclasses.dataclass(frozen=True, slots=True)
class Sockets:
    """The bound listening sockets of the first process."""

    public: socket.socket
    admin: socket.socket
    redirect: socket.socket | None = None
    inbound: socket.socket | None = None
    # the outbound listener's socket, then one per `service_ports` entry (docs/east-west.md)
    outbound: tuple[socket.socket, ...] = ()


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
    """What one serving process owns: its table holder, watcher, pool, access log, endpoint state
    (balancing, health checks), metrics and tracing; the master of several workers uses only the
    holder, the watcher and the live view of its workers."""

    def __init__(self, settings: Settings, store: Store, *, write_snapshots: bool,
                 tls: dict[str, TlsListener] | None = None,
                 identity: IdentityBundle | None = None) -> None:
        self.settings = settings
        # this gateway's identity (inbound listener, upstream mTLS); reloaded like `tls`
        self.identity = identity
        self.inbound_listener: InboundListener | None = None
        # the TLS side of this process's TLS listeners, by listener name (reloaded on SIGHUP)
        self.tls = tls or {}
        self.holder = TableHolder()
        # the table source: the store, or a sidecar's control plane (`run_sidecar`, server.source)
        self.watcher: Watcher | ControlFollower = Watcher(
            store, self.holder, interval=settings.server.poll_interval,
            snapshot=Path(settings.server.snapshot_path), write_snapshots=write_snapshots)
        self.counts = TrafficCounts()
        self.flusher = CountsFlusher(store, self.counts, instance=instance_id(),
                                     interval=settings.facade.counts_interval)
        # the dependency graph's edges (docs/east-west.md), flushed like the traffic counts; the
        # outbound listener's callers are this gateway's own service
        self.graph = EdgeCounts(local=str(identity.identity) if identity is not None else None)
        self.graph_flusher = GraphFlusher(store, self.graph, instance=instance_id(),
                                          interval=settings.facade.counts_interval)
        # the guard's measurements of guarded migrations, flushed like the traffic counts
        self.samples = GuardSamples()
        self.samples_flusher = SamplesFlusher(store, self.samples, instance=instance_id(),
                                              interval=settings.facade.counts_interval)
        # the shadow stage's comparison counts, flushed like the traffic counts
        self.shadow_stats = ShadowStats()
        self.shadow_flusher = ShadowFlusher(store, self.shadow_stats, instance=instance_id(),
                                            interval=settings.facade.counts_interval)
        self.servers: list[uvicorn.Server] = []
        self.stopping = False
        self.forced = False
        # set by stop(): the master waits on it, then on its workers
        self.stopped = asyncio.Event()
        # the master's Supervisor.forward: signals that its workers must get too
        self.forward: Callable[[signal.Signals], None] | None = None
        # the master's Supervisor.running: whether any worker process is alive (readiness)
        self.workers: Callable[[], bool] | None = None
        # the master's Supervisor.pids: the live workers, whose tables a write waits for (`served`)
        self.worker_pids: Callable[[], list[int]] | None = None
        # data-plane servers, each with a spare descriptor of its listening socket (see _drain)
        self._data: list[tuple[uvicorn.Server, socket.socket]] = []
        self._forcing = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closers: list[Callable[[], Awaitable[object]]] = []
        self.upstreams = Upstreams()
        # the one dial seam of this process: the pool, WebSocket upstreams and health checks
        self.dialer = Dialer()
        self.dialer.tls.identity = identity
        self.health = HealthChecker(self.upstreams, dialer=self.dialer)
        self.metrics = Metrics()
        self.state = ProcessState(self.metrics, upstreams=self.upstreams,
                                  gateway=settings.listeners.public.bind, clock=self.upstreams.clock)
        self.proxies: list[ProxyApp] = []
        # the admin process's live view (/metrics) and, in the master or single process, the leader
        self.live: LiveView | None = None
        self.leader: Leader | None = None

    def start_background(self, *, counts: bool, publish: bool = False, lead: bool = True) -> None:
        """The watcher (and, where requests are served, the traffic-count flusher, the followers
        of new tables and, in a worker, the publisher of its live state and of its table's version
        for the master's admin)."""
        if counts:
            self.follow_tables()
        self._tasks.append(asyncio.create_task(self.watcher.run()))
        if isinstance(self.watcher, ControlFollower):  # registered in the service registry meanwhile
            self._tasks.append(asyncio.create_task(self.watcher.heartbeat()))
            self._closers.append(self.watcher.deregister)
        self.listen_for_changes()
        if self.watcher.write_snapshots and lead:  # the single process or the master: one per gateway
            self.lead()
        if counts and isinstance(self.watcher, ControlFollower):  # no store: to the control plane
            report = ControlReport(self.watcher.call)
            for flusher in (self.flusher, self.graph_flusher, self.samples_flusher, self.shadow_flusher):
                flusher.store = report
        if counts:  # counts go to the store, or to the control plane a sidecar follows
            self._tasks.append(asyncio.create_task(self.flusher.run()))
            self._closers.append(self.flusher.flush)
            self._tasks.append(asyncio.create_task(self.graph_flusher.run()))
            self._closers.append(self.graph_flusher.flush)
            self._tasks.append(asyncio.create_task(self.samples_flusher.run()))
            self._closers.append(self.samples_flusher.flush)
            self._tasks.append(asyncio.create_task(self.shadow_flusher.run()))
            self._closers.append(self.shadow_flusher.flush)
        if counts:
            self._closers.append(self.health.close)
        for tls in self.tls.values():
            self._tasks.append(asyncio.create_task(tls.watch()))
        if self.identity is not None:
            self._tasks.append(asyncio.create_task(self.identity.watch()))
        # this gateway's certificate renewed at half its life (when joined); expiries in /metrics
        self.state.edge_tls = self.tls
        identity = self.identity
        self._tasks += start_renewal(
            self.settings.identity, self.state,
            None if identity is None else lambda: identity.refresh(why="renewed"))
        if publish:
            publisher = Publisher(self.state, self.settings.server.run_dir,
                                  self.settings.metrics.publish_interval)
            self._tasks.append(asyncio.create_task(publisher.run()))
            self._closers.append(lambda: asyncio.to_thread(publisher.remove))
            # the version of each table this worker serves: the master's admin API waits for it
            version_file = TableVersionFile(self.settings.server.run_dir, os.getpid())
            self.holder.follow(version_file.table)
            self._closers.append(lambda: asyncio.to_thread(version_file.remove))

    def listen_for_changes(self) -> None:
        """Wake the watcher when a config version is committed: by this process (its store's
        `on_commit`: `committed`), and on PostgreSQL by any gateway (LISTEN, docs/fleet.md)."""
        if not isinstance(self.watcher, Watcher):
            return
        store, loop = self.watcher.store, asyncio.get_running_loop()

        def committed(version: int) -> None:  # in the committing thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: the process is ending
                loop.call_soon_threadsafe(self.committed)

        store.on_commit(committed)
        if store.dialect != "postgresql":
            return
        listener = ConfigListener(store.engine.url,
                                  lambda: loop.call_soon_threadsafe(self.watcher.wake))
        listener.start()
        self._closers.append(lambda: asyncio.to_thread(listener.stop))

    def committed(self) -> None:
        """This process committed a config version (its admin API, or the leader's jobs): its
        watcher reads it now rather than at its next poll, and so does each worker's (SIGUSR1), so
        the admin API's answer follows the change within milliseconds (`gateway.admin.served`)."""
        self.watcher.wake()
        if self.forward is not None and not self.stopping:
            self.forward(signal.SIGUSR1)

    async def served(self, version: int, timeout: float) -> bool:
        """This gateway serves config version `version` (or a later one): this process's table and,
        in a master, every live worker's (`gateway.server.served_tables`); at most `timeout`
        seconds in all. What the admin API's writes wait for (`gateway.admin.served`)."""
        started = time.monotonic()
        if not await self.holder.served(version, timeout):
            return False
        if self.worker_pids is None:
            return True
        left = max(0.0, timeout - (time.monotonic() - started))
        return await workers_serve(self.settings.server.run_dir, self.worker_pids, version, left)

    def lead(self) -> None:
        """Compete for the fleet's leadership (the advisory lock; alone on SQLite) and run the
        leader's jobs while holding it (gateway/server/leader.py)."""
        assert isinstance(self.watcher, Watcher)
        store = self.watcher.store
        lease = AdvisoryLease(store.engine.url) if store.dialect == "postgresql" else AlwaysLease()
        # the guard reads a window once every gateway has flushed it (counts_interval, and a margin)
        lag = self.settings.facade.counts_interval + 1.0
        leader = self.leader = Leader(lease, leader_jobs(store, guard_lag=lag))
        if self.live is not None:
            self.live.leader = (instance_id(), lambda: leader.leading)
        task = asyncio.create_task(leader.run())
        self._closers.append(lambda: cancel(task))

    def follow_tables(self) -> None:
        """The table followers of a serving process, registered once, called once per table in
        this order by `TableHolder.swap` (each proxy registered its own in its constructor)."""
        metrics = self.metrics
        # the services' upstream TLS files, read when a table arrives (before any check dials)
        self.holder.follow(self.dialer.tls.update)
        self.holder.follow(self.upstreams.update)
        self.holder.follow(lambda table: self.health.sync())
        self.holder.follow(lambda table: metrics.config_loaded(table.version, True, self.holder.loaded_at))
        self.watcher.on_failed = lambda version: metrics.config_loaded(version, False)

    async def close(self) -> None:
        """Stop the background work, then flush counts, close pools and the access log."""
        for task in self._tasks:
            task.cancel()
        for closer in reversed(self._closers):
            await closer()

    def ready(self) -> bool:
        """A table is loaded, the process is not draining and, in a master, a worker is alive."""
        return (self.holder.table is not None and not self.stopping
                and (self.workers is None or self.workers()))

    async def load_first_table(self) -> None:
        """Load from the store, else from the snapshot; the listeners open either way."""
        if not await self.watcher.refresh_async():
            await asyncio.to_thread(self.watcher.load_snapshot)
        if self.holder.table is None:
            log.error("no route table yet (%s); answering 503 until the store is reachable",
                      self.watcher.last_error or "store empty")

    def data_plane(self, sock: socket.socket) -> uvicorn.Server:
        settings = self.settings
        access_log = AccessLog(settings.access_log.target)
        self.state.access_log = access_log
        pool = UpstreamPool(settings.proxy, dialer=self.dialer)
        tracing = Tracing(settings.tracing) if settings.tracing.enabled else None
        self.state.tracing = tracing
        app = ProxyApp(self.holder, pool, settings, access_log, counts=self.counts, samples=self.samples,
                       shadow_stats=self.shadow_stats, graph=self.graph,
                       upstreams=self.upstreams, tracing=tracing,
                       metrics=self.metrics if settings.metrics.enabled else None)
        self.proxies.append(app)
        self.state.beta = app.resolver.beta_filter
        tls = self.tls.get("public")
        public = settings.listeners.public
        served: Any = Hsts(app, public.hsts_max_age) if tls is not None and public.hsts_max_age else app
        server = make_server(uvicorn_config(served, self.settings, listener="public", sock_fd=sock.fileno(),
                                            ssl_context_factory=tls.factory if tls else None))
        self.servers.append(server)
        spare = sock.dup()
        spare.setblocking(False)
        self._data.append((server, spare))

        async def close_access_log() -> None:
            access_log.close()

        async def close_tracing() -> None:
            if tracing is not None:
                await asyncio.to_thread(tracing.shutdown)

        self._closers += [close_access_log, close_tracing, pool.close]
        return server

    def admin(self, store: Store, *, serving: bool) -> uvicorn.Server:
        """The admin listener; `serving`: this process also runs the data plane (its live state is
        read from memory; a master reads its workers' published files)."""
        # Imported here: worker processes never serve the admin API and need not carry starlette.
        from gateway.admin.app import build_admin_app

        settings = self.settings
        live = LiveView(settings.server.run_dir, interval=settings.metrics.publish_interval,
                        local=self.state if serving else None, gateway=settings.listeners.public.bind)
        self.live = live
        app = build_admin_app(store, ready=self.ready, settings=settings, live=live,
                              switch_interval=SWITCH_INTERVAL_ADMIN if serving else None,
                              served=self.served)
        tls = self.tls.get("admin")
        server = make_server(uvicorn_config(app, self.settings, listener="admin",
                                            ssl_context_factory=tls.factory if tls else None))
        self.servers.append(server)
        return server

    def east_west_proxy(self, holder: TableHolder, *, own_upstreams: bool = False) -> ProxyApp:
        """A data-plane app over `holder` (the outbound or a sidecar's inbound table), with this
        process's access log and tracing (made here in a sidecar, which has no public listener);
        `own_upstreams`: its own endpoint state (a sidecar's local app)."""
        settings = self.settings
        if self.state.access_log is None:
            access_log = self.state.access_log = AccessLog(settings.access_log.target)
            made = self.state.tracing = Tracing(settings.tracing) if settings.tracing.enabled else None

            async def close_access_log() -> None:
                access_log.close()

            async def close_tracing() -> None:
                if made is not None:
                    await asyncio.to_thread(made.shutdown)

            self._closers += [close_access_log, close_tracing]
        pool = UpstreamPool(settings.proxy, dialer=self.dialer)
        self._closers.append(pool.close)
        tracing = self.state.tracing if isinstance(self.state.tracing, Tracing) else None
        return ProxyApp(holder, pool, settings, self.state.access_log, counts=self.counts,
                        graph=self.graph, upstreams=None if own_upstreams else self.upstreams,
                        tracing=tracing,
                        metrics=self.metrics if settings.metrics.enabled else None)

    def outbound(self, socks: tuple[socket.socket, ...]) -> list[uvicorn.Server]:
        """The outbound listener (docs/east-west.md): the data plane over the outbound table, one
        server per socket (the listener's, then each service port's), `CONNECT` to the allow-list;
        drained like the public listener."""
        settings = self.settings
        listener = settings.listeners.outbound
        holder = follow_derived(self.holder, outbound_table)
        counts = self.outbound_counts = OutboundCounts(self.metrics if settings.metrics.enabled else None)
        ports = {port: name for name, port in listener.service_ports.items()}
        proxy = self.east_west_proxy(holder)
        proxy.listener = "outbound"  # its callers are local apps: cohorts trusted, graph source this VM
        app = OutboundApp(proxy, holder, service_ports=ports, counts=counts)
        tunnels = Tunnels(listener.connect_allow, self.dialer, counts)
        servers = []
        for sock in socks:
            config = uvicorn_config(app, settings, listener="outbound", sock_fd=sock.fileno())
            config.http = outbound_protocol(settings.limits, tunnels)
            server = make_server(config)
            self.servers.append(server)
            spare = sock.dup()
            spare.setblocking(False)
            self._data.append((server, spare))
            servers.append(server)

        async def close_tunnels() -> None:
            tunnels.close()

        self._closers.append(close_tunnels)
        return servers

    def sidecar_app(self) -> ProxyApp:
        """A sidecar's inbound app: its own service's routes, answered by the local app."""
        assert self.identity is not None
        service = self.identity.identity.service
        if service is None:
            raise ConfigError("identity.state_dir", f"the identity {self.identity.identity} names no "
                              "service (spiffe://<trust domain>/svc/<service>): a sidecar serves one")
        app = app_endpoint(self.settings.listeners.inbound.app)
        holder = follow_derived(self.holder, lambda table: sidecar_table(table, service, app))
        return self.east_west_proxy(holder, own_upstreams=True)

    def inbound(self, sock: socket.socket, app: ProxyApp | None = None) -> uvicorn.Server:
        """The inbound listener: `app`, else the data plane's app (after `data_plane`), connections
        accepted by `InboundListener` (run it with `serve_inbound`)."""
        assert self.identity is not None and (app is not None or self.proxies)
        server = make_server(uvicorn_config(app or self.proxies[0], self.settings, listener="inbound",
                                            sock_fd=sock.fileno()))
        self.servers.append(server)
        self.inbound_listener = InboundListener(
            server, sock, self.identity, lambda: self.settings.listeners.inbound.mtls,
            metrics=self.metrics if self.settings.metrics.enabled else None)
        # the document's mesh.inbound_mtls and revocations (docs/mtls.md)
        self.holder.follow(self.inbound_listener.follow)
        return server

    async def serve_inbound(self, server: uvicorn.Server) -> None:
        """Run the inbound server (no socket of its own) and its acceptor until the drain ends it."""
        acceptor = self.inbound_listener
        assert acceptor is not None
        serving = asyncio.create_task(server.serve(sockets=[]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        accepting = asyncio.create_task(acceptor.run())
        try:
            await serving
        finally:
            acceptor.close()
            accepting.cancel()

    def redirect(self, sock: socket.socket) -> uvicorn.Server:
        """The optional plain listener that answers 308 to https on the public listener."""
        app = RedirectApp(self.settings.listeners.public.port)
        server = make_server(uvicorn_config(app, self.settings, listener="redirect",
                                            sock_fd=sock.fileno()))
        self.servers.append(server)
        return server

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """SIGTERM or SIGINT: begin the drain (see the module docstring); a second SIGINT forces."""
        if self.stopping:
            # Only a second Ctrl-C stops waiting for in-flight requests: a repeated SIGTERM (a
            # process-group kill after the one to the main process) must not cut the drain short.
            if sig == signal.SIGINT and not self.forced:
                self.force()
            return
        self.stopping = True
        self.stopped.set()
        systemd.notify("STOPPING=1")
        server = self.settings.server
        log.info("draining: not ready; accepting for %.1f s more, then in-flight requests get %.0f s",
                 server.prestop_delay, server.grace_period)
        if self.forward is not None:
            self.forward(signal.SIGTERM)
        task = asyncio.create_task(self._drain(asyncio.get_running_loop().time() + server.prestop_delay))
        self._tasks.append(task)

    def force(self) -> None:
        """Stop at once: in-flight requests are cut."""
        log.warning("forced stop: in-flight requests are cut")
        self.forced = True
        self._forcing.set()
        for server in self.servers:
            server.should_exit = server.force_exit = True
        if self.forward is not None:
            self.forward(signal.SIGINT)

    async def _drain(self, stop_accepting_at: float) -> None:
        loop = asyncio.get_running_loop()
        while not all(server.started for server, _ in self._data) and not self.forced:
            await asyncio.sleep(0.02)  # a signal during start-up: uvicorn has no sockets to close yet
        for server in [s for s, _ in self._data] + ([self.inbound_listener.server]
                                                    if self.inbound_listener else []):
            drain.close_after_response(server)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._forcing.wait(), max(0.0, stop_accepting_at - loop.time()))
        if self.forced:
            return
        deadline = loop.time() + self.settings.server.grace_period
        for server, spare in self._data:
            await drain.stop_accepting(server, spare)
        inbound = self.inbound_listener
        data = [server for server, _ in self._data]
        if inbound is not None:
            inbound.close()
            inbound.sock.close()
            data.append(inbound.server)
        if self._data:
            log.info("draining: listeners closed")
        while loop.time() < deadline and not self.forced:
            if not any([drain.settle(server) for server in data]):
                break
            await asyncio.sleep(0.02)
        for server in data:
            # uvicorn's own shutdown ends what is left, cancelling requests past the grace period
            server.config.timeout_graceful_shutdown = max(0.0, deadline - loop.time())  # type: ignore[assignment]
            server.should_exit = True


def install_signals(runtime: Runtime, config_path: str | None) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stop, sig)
    loop.add_signal_handler(signal.SIGHUP, reload_settings, runtime, config_path)
    # the master committed a config version: read it now (Runtime.committed)
    loop.add_signal_handler(signal.SIGUSR1, runtime.watcher.wake)


def reload_settings(runtime: Runtime, config_path: str | None) -> bool:
    """SIGHUP: re-read the settings and apply the parts that may change while running.

    The master passes SIGHUP on to its workers only once the file parsed: each worker re-reads it
    itself, and a file that is refused here would be refused there too.
    """
    systemd.notify("RELOADING=1", systemd.monotonic_usec())
    try:
        fresh = load_settings(config_path)
    except ConfigError as exc:
        log.error("SIGHUP: settings refused, keeping the running ones: %s", exc)
        systemd.notify("READY=1")
        return False
    configure_logging(fresh.server.log_level)
    running = runtime.settings.server
    # What nothing captured at start: the log level, the drain timings read at SIGTERM, and
    # `[limits]`, which the protocol class of every listener reads per connection and request.
    runtime.settings = dataclasses.replace(runtime.settings, server=dataclasses.replace(
        running, log_level=fresh.server.log_level, grace_period=fresh.server.grace_period,
        prestop_delay=fresh.server.prestop_delay))
    runtime.settings = dataclasses.replace(runtime.settings, limits=fresh.limits)
    apply_limits(runtime.servers, fresh.limits)
    for name, tls in runtime.tls.items():
        tls.reload(getattr(fresh.listeners, name))
    if runtime.identity is not None:
        runtime.identity.reload()
    _reload_inbound_mode(runtime, fresh)
    for name in ("public", "admin"):
        if name not in runtime.tls and getattr(fresh.listeners, name).tls:
            log.error("SIGHUP: listeners.%s.tls_certificates: turning TLS on needs a restart", name)
    log.info("SIGHUP: settings re-read (log level %s)", fresh.server.log_level)
    if runtime.forward is not None and not runtime.stopping:
        runtime.forward(signal.SIGHUP)
    systemd.notify("READY=1")
    return True


def _reload_inbound_mode(runtime: Runtime, fresh: Settings) -> None:
    """`listeners.inbound.mtls` between permissive and strict applies to the next connections."""
    running = runtime.settings.listeners
    mode = fresh.listeners.inbound.mtls
    if mode == running.inbound.mtls:
        return
    if runtime.inbound_listener is None or mode == "off":
        log.error("SIGHUP: listeners.inbound.mtls: turning the inbound listener on or off needs a restart")
        return
    runtime.settings = dataclasses.replace(runtime.settings, listeners=dataclasses.replace(
        running, inbound=dataclasses.replace(running.inbound, mtls=mode)))
    document = runtime.inbound_listener.document_mode
    if document is not None:
        log.warning("SIGHUP: listeners.inbound.mtls is now %s, but the document's mesh.inbound_mtls "
                    "(%s) sets the inbound listener's mode while it is there", mode, document)
        return
    log.info("SIGHUP: the inbound listener is now %s", mode)


def apply_limits(servers: list[uvicorn.Server], limits: LimitsSettings) -> None:
    """Give the listeners of `servers` new `[limits]` for the connections and requests to come.

    Each listener runs its own `PeelHttpProtocol.configured` subclass, whose instances read the
    limits from class attributes; both are replaced in one assignment, on the event loop, so no
    request sees one without the other. Requests already past their head keep what they checked.
    """
    fresh = PeelHttpProtocol.configured(limits)
    for server in servers:
        protocol = server.config.http
        if isinstance(protocol, type) and issubclass(protocol, PeelHttpProtocol):
            protocol.limits, protocol.head_limits = fresh.limits, fresh.head_limits


async def run_single(settings: Settings, store: Store, sockets: Sockets, config_path: str | None,
                     tls: dict[str, TlsListener], identity: IdentityBundle | None = None) -> int:
    """One process: every listener, one watcher. The admin listener outlives the data plane's drain."""
    runtime = Runtime(settings, store, write_snapshots=True, tls=tls, identity=identity)
    await runtime.load_first_table()
    proxy_server = runtime.data_plane(sockets.public)
    inbound_server = runtime.inbound(sockets.inbound) if sockets.inbound else None
    outbound_servers = runtime.outbound(sockets.outbound) if sockets.outbound else []
    admin_server = runtime.admin(store, serving=True)
    redirect_server = runtime.redirect(sockets.redirect) if sockets.redirect else None
    install_signals(runtime, config_path)
    runtime.start_background(counts=True)
    settle_memory(runtime.holder)
    try:
        proxying = asyncio.create_task(proxy_server.serve(sockets=[sockets.public]))
        serving = asyncio.create_task(admin_server.serve(sockets=[sockets.admin]))
        redirecting = _serve_redirect(redirect_server, sockets.redirect)
        inbound = asyncio.create_task(runtime.serve_inbound(inbound_server)) if inbound_server else None
        outbound = [asyncio.create_task(server.serve(sockets=[sock]))
                    for server, sock in zip(outbound_servers, sockets.outbound, strict=True)]
        await _notify_when_started(runtime)
        await proxying
        for task in outbound:
            await task
        if inbound is not None:
            await inbound
        await _stop_redirect(redirect_server, redirecting)
        admin_server.should_exit = True
        await serving
    finally:
        await runtime.close()
    return 0


async def run_sidecar(settings: Settings, store: Store, outbound_socks: tuple[socket.socket, ...],
                      inbound_sock: socket.socket | None, config_path: str | None,
                      identity: IdentityBundle | None) -> int:
    """A sidecar (`server.role = "sidecar"`, docs/east-west.md): the outbound listener for the
    local apps and the inbound listener in front of the local app; no public or admin listener;
    one watcher, of the store or (server.source = "control") of the control plane it joined; never
    the fleet's leader (its control work is the gateways')."""
    runtime = Runtime(settings, store, write_snapshots=True, identity=identity)
    if settings.server.source == "control":
        runtime.watcher = control_follower(settings, runtime.holder)
    await runtime.load_first_table()
    outbound_servers = runtime.outbound(outbound_socks) if outbound_socks else []
    inbound_server = runtime.inbound(inbound_sock, runtime.sidecar_app()) if inbound_sock else None
    install_signals(runtime, config_path)
    runtime.start_background(counts=True, lead=False)
    settle_memory(runtime.holder)
    try:
        outbound = [asyncio.create_task(server.serve(sockets=[sock]))
                    for server, sock in zip(outbound_servers, outbound_socks, strict=True)]
        inbound = asyncio.create_task(runtime.serve_inbound(inbound_server)) if inbound_server else None
        await _notify_when_started(runtime)
        for task in outbound:
            await task
        if inbound is not None:
            await inbound
    finally:
        await runtime.close()
    return 0


def bind_outbound(settings: Settings, passed: dict[str, socket.socket]) -> tuple[socket.socket, ...]:
    """The outbound listener's socket, then one per `listeners.outbound.service_ports` entry (on the
    listener's address)."""
    listener = settings.listeners.outbound
    socks = [bind(listener, "outbound", passed)]
    host = f"[{listener.host}]" if ":" in listener.host else listener.host
    for name, port in listener.service_ports.items():
        try:
            socks.append(bind(dataclasses.replace(listener, bind=f"{host}:{port}"), "outbound"))
        except ConfigError as exc:
            for sock in socks:
                sock.close()
            raise ConfigError(f"listeners.outbound.service_ports.{name}", exc.message) from exc
    return tuple(socks)


def _serve_redirect(server: uvicorn.Server | None, sock: socket.socket | None) -> asyncio.Task[None] | None:
    if server is None or sock is None:
        return None
    return asyncio.create_task(server.serve(sockets=[sock]))


async def _stop_redirect(server: uvicorn.Server | None, task: asyncio.Task[None] | None) -> None:
    if server is not None and task is not None:
        server.should_exit = True
        await task


async def run_worker(settings: Settings, fd: int, config_path: str | None,
                     inbound_fd: int | None = None) -> int:
    """A worker process: the public listener on the inherited socket (and the inbound listener
    on its inherited socket, when the master passed one), its own watcher."""
    public = socket.socket(fileno=fd)
    inbound = socket.socket(fileno=inbound_fd) if inbound_fd is not None else None
    store = Store(settings.database.url)
    runtime = Runtime(settings, store, write_snapshots=False, tls=load_tls(settings, ("public",)),
                      identity=load_identity(settings))
    await runtime.load_first_table()
    server = runtime.data_plane(public)
    inbound_server = runtime.inbound(inbound) if inbound is not None else None
    install_signals(runtime, config_path)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)  # blocked by Supervisor.spawn
    runtime.start_background(counts=True, publish=True)
    settle_memory(runtime.holder)
    try:
        inbound_task = asyncio.create_task(runtime.serve_inbound(inbound_server)) if inbound_server else None
        await server.serve(sockets=[public])
        if inbound_task is not None:
            await inbound_task
    finally:
        await runtime.close()
    return 0


async def run_master(settings: Settings, store: Store, sockets: Sockets, config_path: str | None,
                     tls: dict[str, TlsListener]) -> int:
    """The first process with several workers: admin API, redirect listener, supervision, snapshots.
    The workers load the public listener's certificates themselves."""
    runtime = Runtime(settings, store, write_snapshots=True,
                      tls={name: t for name, t in tls.items() if name != "public"})
    await runtime.load_first_table()
    admin_server = runtime.admin(store, serving=False)
    redirect_server = runtime.redirect(sockets.redirect) if sockets.redirect else None
    supervisor = Supervisor(settings.server.workers, sockets.public, config_path,
                            lambda: runtime.stopping, inbound=sockets.inbound)
    runtime.forward = supervisor.forward
    runtime.workers = supervisor.running
    runtime.worker_pids = supervisor.pids
    install_signals(runtime, config_path)
    runtime.start_background(counts=False)
    supervising = asyncio.create_task(supervisor.run())
    try:
        serving = asyncio.create_task(admin_server.serve(sockets=[sockets.admin]))
        redirecting = _serve_redirect(redirect_server, sockets.redirect)
        await _notify_when_started(runtime)
        await runtime.stopped.wait()
        # The workers got SIGTERM from stop(); /readyz keeps answering 503 until they are done.
        server = runtime.settings.server
        await supervisor.wait(server.prestop_delay + server.grace_period + 5)
        await _stop_redirect(redirect_server, redirecting)
        admin_server.should_exit = True
        await serving
    finally:
        supervising.cancel()
        await runtime.close()
    return 0 if not supervisor.failed else 1


# How long a thread that holds the GIL keeps it while another waits (CPython's default: 5 ms). uvloop
# runs libuv without the GIL and takes it back for every callback; while a thread computes (the
# access-log writer's batch, an exporter, the admin API's commit), each callback of the event loop
# waited up to the whole interval (bench/README.md).
SWITCH_INTERVAL = 0.001
# The same while an admin request is in flight in a process that also serves traffic: the request's
# work in threads (a commit: 6 ms of CPU for a one-route change to a 10,000-route table) otherwise
# made each callback of the loop wait up to SWITCH_INTERVAL for the GIL
# (`gateway.admin.app.SwitchingOften`).
SWITCH_INTERVAL_ADMIN = 0.0002
# At most this often, a table's arrival thaws the frozen objects for one full collection (`Settler`)
THAW_EVERY = 600.0
# How long after the last table of a series of changes (no new one meanwhile) what they freed goes
# back to the operating system (`Settler`). Changes come in series (an apply script, a migration's
# steps, the bench's `peel apply` every 0.8-1.1 s): a trim 1 s after a table fell between them. A
# series that never pauses (tables closer than that for good) is still trimmed every TRIM_AT_LATEST.
TRIM_AFTER = 5.0
TRIM_AT_LATEST = 60.0


def settle_memory(holder: TableHolder) -> None:
    """Collect once, then exempt everything alive (modules, settings, the first table) from the
    cyclic garbage collector: its full collections would otherwise walk those objects again and
    again, each a pause of tens of milliseconds on the request path (the p99 in `make bench`).
    Frozen objects are still freed by reference counting when dropped (the first table, on the
    first reload). Every later table is frozen when it arrives (`Settler`, the holder's last
    follower). What start-up freed goes back to the operating system (`release_free_heap`)."""
    gc.collect()
    gc.freeze()
    release_free_heap()
    holder.follow(Settler().table)
    sys.setswitchinterval(SWITCH_INTERVAL)


class Settler:
    """Exempts each new table (and what its followers built) from the collector, as the first one.

    A 10,000-route table is hundreds of thousands of objects: left to the collector, each full
    collection walked them all (13-45 ms on the event loop), and the young collections of the next
    change walked its new containers again and again. Nothing is collected first: a request
    leaves no garbage cycle (`gateway.edge.cycle`), nor does a closed connection (`Downstream`) or
    a change (its edit, diff, encode, decode and compile), and a table holds no cycle, so an old
    one is freed by reference counting once dropped, frozen or not (tests/unit/test_settle.py). A
    young collection before each freeze found nothing on 30 changes to a 10,000-route table and
    cost 2-6 ms of the event loop each (bench/README.md).

    What is frozen and is or becomes garbage in a reference cycle (an object of some connection
    that was open when a table arrived) the frozen generation would keep for good; so at most
    every `thaw_every` seconds, a table's arrival thaws everything for one full collection
    instead, a pause the length of the old full passes, once in that time, after which the heap
    that collection freed goes back to the operating system.

    Otherwise, `trim_after` seconds after the last table of a burst (`trim_at_latest` seconds after
    its first, when it goes on that long), what the changes freed goes back to the operating
    system, on a thread: by then the admin request or the store read that made the table has
    dropped its copies (gateway.core.heap). Not during the burst: a trim there handed back the
    pages that the next change then took again, a page fault each (a worker's minor faults over 16
    one-route `PUT`s to a 10,000-route table, 0.5 s apart: about 6,500 with a trim 1 s after the
    first table of a burst, 2,200 with this one; bench/README.md).
    """

    def __init__(self, *, thaw_every: float = THAW_EVERY, trim_after: float = TRIM_AFTER,
                 trim_at_latest: float = TRIM_AT_LATEST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.thaw_every = thaw_every
        self.trim_after = trim_after
        self.trim_at_latest = trim_at_latest
        self.clock = clock
        self.thawed = clock()
        self.trimming = False  # a trim is due
        self.burst_began = self.last_table = self.thawed

    def table(self, table: RouteTable) -> None:
        """A table follower."""
        now = self.last_table = self.clock()
        if now - self.thawed >= self.thaw_every:
            self.thawed = now
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            release_free_heap()
            return
        gc.freeze()
        self._trim_soon()

    def _trim_soon(self) -> None:
        if self.trimming:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving yet: `settle_memory` trims once it has frozen
            return
        self.trimming = True
        self.burst_began = self.last_table
        loop.call_later(self.trim_after, self._trim, loop)

    def _trim(self, loop: asyncio.AbstractEventLoop) -> None:
        now = self.clock()
        wait = min(self.trim_after - (now - self.last_table), self.trim_at_latest - (now - self.burst_began))
        if wait > 0:  # another table came since: wait until the burst ends
            loop.call_later(wait, self._trim, loop)
            return
        self.trimming = False
        # (a RuntimeError: the process is stopping, its executor takes no more work)
        with contextlib.suppress(RuntimeError):
            loop.run_in_executor(None, release_free_heap)


async def _notify_when_started(runtime: Runtime) -> None:
    deadline = time.monotonic() + 30
    while not all(s.started for s in runtime.servers) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    listeners = runtime.settings.listeners
    sidecar = runtime.settings.server.role == "sidecar"
    for name, listener in (("public", listeners.public), ("admin", listeners.admin),
                           ("redirect", listeners.redirect), ("inbound", listeners.inbound)):
        if sidecar and name != "inbound":
            continue
        if listener.bind and (name != "inbound" or listener.mtls != "off"):
            kind = ("https" if listener.tls else "http") if name != "redirect" else "308 to https"
            kind = f"mTLS, {listener.mtls}" if name == "inbound" else kind
            log.info("%s listener on %s (%s)", name, listener.bind, kind)
    if runtime.settings.outbound_enabled:
        outbound = listeners.outbound
        log.info("outbound listener on %s (HTTP proxy for registered services%s)", outbound.bind,
                 "".join(f", {name} on port {port}" for name, port in outbound.service_ports.items()))
    systemd.notify("READY=1", f"STATUS=serving config version {runtime.watcher.version}")
    period = systemd.watchdog_period(os.environ, os.getpid())
    if period is not None:
        runtime._tasks.append(asyncio.create_task(systemd.watchdog(period)))


def log_native() -> None:
    """Say whether the request path runs compiled (gateway.core.native); a build that is there but
    cannot be used is a warning: the operator built it to be used."""
    state = native.state()
    if state.active:
        log.info("data path compiled: %s", state.reason)
    elif state.manifest is not None:
        log.warning("data path as pure Python: %s (`peel native build`)", state.reason)
    else:
        log.info("data path as pure Python: %s", state.reason)


def _run(main: Coroutine[Any, Any, int]) -> int:
    import uvloop

    result: int = uvloop.run(main)
    return result


def serve(settings: Settings, config_path: str | None = None) -> int:
    """Run the gateway until a signal stops it. Raises PeelError for what an operator must fix."""
    one_arena()  # before threads start (gateway.core.heap)
    # SIGHUP's default action ends the process; until the loop handles it, a reload is ignored.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    configure_logging(settings.server.log_level)
    log_native()
    tls = load_tls(settings)
    identity = load_identity(settings)
    if settings.server.source == "control" and settings.server.role != "sidecar":
        raise ConfigError("server.source", "only a sidecar follows the control plane (server.role = "
                          "\"sidecar\"); a gateway serves the admin API over the store")
    if settings.listeners.inbound.advertise and settings.server.source != "control":
        raise ConfigError("listeners.inbound.advertise", "the endpoint is registered by a sidecar "
                          "following the control plane (server.source = \"control\")")
    # a sidecar following its control plane opens no database (an unused in-memory stand-in)
    store = Store("sqlite://") if settings.server.source == "control" else preflight(settings)
    listeners = settings.listeners
    passed = passed_sockets()
    if settings.server.role == "sidecar":
        if not settings.outbound_enabled and listeners.inbound.mtls == "off":
            raise ConfigError("server.role", "a sidecar serves the outbound or the inbound listener: "
                              "both are off (listeners.outbound.enabled, listeners.inbound.mtls)")
        outbound = bind_outbound(settings, passed) if settings.outbound_enabled else ()
        inbound = bind(listeners.inbound, "inbound", passed) if listeners.inbound.mtls != "off" else None
        for name, unused in passed.items():
            log.warning("systemd passed a socket named %r that a sidecar does not use; closing it", name)
            unused.close()
        return _run(run_sidecar(settings, store, outbound, inbound, config_path, identity))
    warn_plaintext_admin(settings)
    sockets = Sockets(bind(listeners.public, "public", passed), bind(listeners.admin, "admin", passed),
                      bind(listeners.redirect, "redirect", passed) if listeners.redirect.bind else None,
                      bind(listeners.inbound, "inbound", passed) if listeners.inbound.mtls != "off" else None,
                      bind_outbound(settings, passed) if settings.outbound_enabled else ())
    for name, unused in passed.items():
        log.warning("systemd passed a socket named %r that no listener uses; closing it", name)
        unused.close()
    if settings.server.workers == 1:
        return _run(run_single(settings, store, sockets, config_path, tls, identity))
    return _run(run_master(settings, store, sockets, config_path, tls))


def worker_main(argv: list[str]) -> int:
    """Entry of a worker process started by the master (not a user command)."""
    one_arena()
    config_path = argv[argv.index("--config") + 1] if "--config" in argv else None
    fd = int(argv[argv.index("--fd") + 1])
    inbound_fd = int(argv[argv.index("--inbound-fd") + 1]) if "--inbound-fd" in argv else None
    settings = load_settings(config_path)
    configure_logging(settings.server.log_level)
    try:
        return _run(run_worker(settings, fd, config_path, inbound_fd))
    except PeelError as exc:
        log.error("worker failed: %s", exc)
        return 1


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(worker_main(sys.argv[1:]))
    sys.exit("gateway.server.serve is started by `peel serve`")
