"""Live state across a gateway's processes: what each serving process publishes, what the admin merges.

`peel serve` is one process (data plane and admin listener) or a master (admin listener) with N
workers (data plane only). The admin listener must answer for all of them, so every serving process
that is not the admin's own publishes its state every `metrics.publish_interval` seconds as one JSON
file, `{server.run_dir}/proc-{pid}.json`:

    {"pid", "gateway", "role", "time" (unix), "started" (unix),
     "metrics":   Metrics.snapshot() + "ejections" ({service: n}, from Upstreams), "access_log_dropped",
                  "certificates" ([{"identity" | "listener", "name", "not_after" (unix)}]),
     "upstreams": [{"service", "in_flight", "pending",
                    "endpoints": [{"url", "in_flight", "healthy", "ejected"}]}],
     "services":  {name: ServiceState.snapshot(now)},
     "process":   {"resident_memory_bytes", "cpu_seconds", "open_fds", "start_time_seconds"}}

The snapshot is copied on the event loop (the counters are only ever touched there, so the copy is
consistent and needs no lock); reading /proc, encoding and writing (temp file + `os.replace`, so a
reader never sees half a file) happen in a thread. `LiveView`, on the admin side, reads every file of
a live pid (`os.kill(pid, 0)`) written within the last ten intervals (five seconds at least),
deletes the files of dead pids, and, in a single process, takes its own state straight from memory
(fresher than any file).

The files are trusted no further than they must be. `secure_run_dir` creates the directory 0700
and refuses one another user owns (`ConfigError` naming `server.run_dir`): whoever can write there
could feed `/metrics`. A file is written under a name `mkstemp` picks (0600, `O_EXCL`, no symlink
followed) and renamed over the old one; it is read with `O_NOFOLLOW`, only when it is a regular
file of this user of at most `MAX_FILE_BYTES`, and only when its content passes `check_snapshot`
(types, finite non-negative numbers, bounded strings and depth). A file that fails is ignored and
logged (each reason at most once a minute per file).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from gateway.core.errors import ConfigError
from gateway.telemetry.accesslog import AccessLog
from gateway.telemetry.metrics import Metrics, render

log = logging.getLogger("peel.procstats")

STALE_INTERVALS = 10  # a file not rewritten for this many intervals is ignored,
STALE_FLOOR = 5.0  # nor sooner than this many seconds: a loaded host delays a short interval's write
_FILE = re.compile(r"^proc-(\d+)\.json$")
# How per-process values of a service or endpoint combine in `LiveView.service`: these are summed,
# `healthy` must hold everywhere, other booleans anywhere, `state` is the worst of `_STATES`, other
# numbers take the highest (the worst latency, the longest ejection), other values the first seen.
SUMMED = frozenset({"in_flight", "pending", "ejections", "ejections_total", "circuit_open_total",
                    "panic_total", "requests", "failures"})
_STATES = ("up", "unhealthy", "ejected")
_COMPLAIN_EVERY = 60.0
RUN_DIR_SETTING = "server.run_dir"
MAX_FILE_BYTES = 4 * 1024 * 1024  # a worker with 1,000 services writes well under 1 MiB
MAX_NUMBER = 2**63
MIN_NUMBER = -1  # counters, times and sizes are never negative; -1 is "none yet" (config version)
MAX_STRING = 4096
MAX_DEPTH = 12
# top-level keys of a published snapshot and their types ("process" is added by the writer)
_TOP: dict[str, type | tuple[type, ...]] = {
    "pid": int, "gateway": str, "role": str, "time": (int, float), "started": (int, float),
    "metrics": dict, "upstreams": list, "services": dict, "process": dict}


def secure_run_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` (mode 0700, whatever the umask) or check the one there, and return it.

    Refused with `ConfigError` naming `server.run_dir`: a path that is not a directory, or that
    another user owns (the directory itself or a symlink to it). Group and other write permission on
    an existing directory of this user is taken away (logged).
    """
    run_dir = Path(path)
    try:
        run_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.mkdir(run_dir, 0o700)
        os.chmod(run_dir, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(RUN_DIR_SETTING, f"cannot create {run_dir}: {exc.strerror or exc}") from exc
    uid = os.geteuid()
    try:
        link = os.lstat(run_dir)
        found = os.stat(run_dir)
    except OSError as exc:
        raise ConfigError(RUN_DIR_SETTING, f"cannot use {run_dir}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(found.st_mode):
        raise ConfigError(RUN_DIR_SETTING, f"{run_dir} is not a directory")
    for what in (link, found):
        if what.st_uid != uid:
            raise ConfigError(RUN_DIR_SETTING, f"{run_dir} is owned by uid {what.st_uid}, not by uid "
                              f"{uid} that Peel runs as: its owner could feed /metrics false live "
                              "state; use a directory of Peel's own user")
    if found.st_mode & 0o022:
        log.warning("%s: %s was writable by group or others; made it 0700", RUN_DIR_SETTING, run_dir)
        os.chmod(run_dir, 0o700)
    return run_dir


def check_snapshot(data: object, pid: int, gateway: str) -> str | None:
    """Why a published snapshot must not reach `/metrics`, or None when it may."""
    if not isinstance(data, dict):
        return "is not a JSON object"
    for key, kind in _TOP.items():
        if key in data and (not isinstance(data[key], kind) or isinstance(data[key], bool)):
            return f"{key!r} has the wrong type"
    for key in ("pid", "time", "metrics"):
        if key not in data:
            return f"{key!r} is missing"
    if data["pid"] != pid:
        return f"names pid {data['pid']}, not {pid}"
    if data.get("gateway") != gateway:
        return "belongs to another gateway"
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            if not (MIN_NUMBER <= value <= MAX_NUMBER):  # NaN fails this too
                return f"holds the number {value!r}, out of bounds"
        elif isinstance(value, str):
            if len(value) > MAX_STRING:
                return f"holds a string of {len(value)} characters"
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                return f"nests deeper than {MAX_DEPTH} levels"
            if isinstance(value, dict):
                if any(len(key) > MAX_STRING for key in value):
                    return f"holds a key longer than {MAX_STRING} characters"
                stack.extend((item, depth + 1) for item in value.values())
            else:
                stack.extend((item, depth + 1) for item in value)
        else:
            return f"holds a {type(value).__name__}"
    return None


# -- what is read from gateway/upstream/endpoints.py (contracts2.md H2), as protocols ------------------------


class _EndpointUrl(Protocol):
    @property
    def url(self) -> str: ...


class EndpointView(Protocol):
    @property
    def endpoint(self) -> _EndpointUrl: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def healthy(self) -> bool: ...
    @property
    def ejected_until(self) -> float: ...


class ServiceView(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def endpoints(self) -> Sequence[EndpointView]: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def ejections_total(self) -> int: ...
    def snapshot(self, now: float) -> dict[str, object]: ...


class UpstreamsView(Protocol):
    def services(self) -> Sequence[ServiceView]: ...


# -- one serving process ---------------------------------------------------------------------------


class _Totals:
    """Per-service counters kept monotonic across table swaps that drop and re-create a service."""

    def __init__(self) -> None:
        self.total: dict[str, int] = {}
        self._last: dict[str, int] = {}

    def update(self, current: Mapping[str, int]) -> dict[str, int]:
        for name, value in current.items():
            previous = self._last.get(name, 0)
            self.total[name] = self.total.get(name, 0) + (value - previous if value >= previous else value)
        self._last = dict(current)
        return dict(self.total)


class _SpanStats(Protocol):
    def stats(self) -> dict[str, int]: ...


class _Stripped(Protocol):
    @property
    def stripped(self) -> int: ...


class _Certificates(Protocol):
    def certificates(self) -> list[dict[str, Any]]: ...


class _EdgeCertificate(Protocol):
    @property
    def setting(self) -> str: ...
    @property
    def names(self) -> tuple[str, ...]: ...
    @property
    def not_after(self) -> datetime.datetime: ...


class _EdgeCertificates(Protocol):
    @property
    def certificates(self) -> Sequence[_EdgeCertificate]: ...


class _EdgeTls(Protocol):
    @property
    def certificates(self) -> _EdgeCertificates: ...


def certificate_facts(identity: _Certificates | None,
                      edge: Mapping[str, _EdgeTls]) -> list[dict[str, Any]]:
    """`metrics["certificates"]`: this gateway's identity certificate ({"identity", "not_after"})
    and the edge listeners' ({"listener", "name", "not_after"}), `not_after` in unix seconds."""
    facts = list(identity.certificates()) if identity is not None else []
    for listener, tls in edge.items():
        for cert in tls.certificates.certificates:
            facts.append({"listener": listener, "name": cert.names[0] if cert.names else cert.setting,
                          "not_after": cert.not_after.timestamp()})
    return facts


class ProcessState:
    """What one serving process publishes: its `Metrics`, its `Upstreams`, its access log's drops.

    `gateway` names the gateway (the lead passes the public listener's bind) so that two gateways
    sharing a run directory by mistake do not count each other. `clock` is the `Upstreams` clock
    (ejection deadlines are on it).
    """

    def __init__(self, metrics: Metrics, *, upstreams: UpstreamsView | None = None,
                 access_log: AccessLog | None = None, gateway: str = "", role: str = "worker",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.upstreams = upstreams
        self.access_log = access_log
        # the process's `Tracing` (its span export counts), when tracing is on
        self.tracing: _SpanStats | None = None
        # the data plane's beta filter (beta values stripped), where requests are served
        self.beta: _Stripped | None = None
        # this gateway's identity (the `gateway.identity.renewal.Renewer`) and edge TLS listeners
        # by name: their certificates' expiry is `peel_certificate_expiry_seconds`
        self.identity: _Certificates | None = None
        self.edge_tls: Mapping[str, _EdgeTls] = {}
        self.gateway = gateway
        self.role = role
        self.pid = os.getpid()
        self.started = time.time()
        self._clock = clock
        self._ejections = _Totals()

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy of the state (without "process"); call on the event loop."""
        now = self._clock()
        metrics = self.metrics.snapshot()
        upstreams: list[dict[str, Any]] = []
        services: dict[str, object] = {}
        ejections: dict[str, int] = {}
        for service in self.upstreams.services() if self.upstreams is not None else ():
            ejections[service.name] = service.ejections_total
            upstreams.append({"service": service.name, "in_flight": service.in_flight,
                              "pending": service.pending,
                              "endpoints": [{"url": e.endpoint.url, "in_flight": e.in_flight,
                                             "healthy": e.healthy, "ejected": e.ejected_until > now}
                                            for e in service.endpoints]})
            services[service.name] = service.snapshot(now)
        metrics["ejections"] = self._ejections.update(ejections)
        metrics["access_log_dropped"] = self.access_log.dropped if self.access_log is not None else 0
        metrics["beta_stripped"] = self.beta.stripped if self.beta is not None else 0
        metrics["certificates"] = certificate_facts(self.identity, self.edge_tls)
        if self.tracing is not None:
            metrics["spans"] = self.tracing.stats()
        return {"pid": self.pid, "gateway": self.gateway, "role": self.role, "time": time.time(),
                "started": self.started, "metrics": metrics, "upstreams": upstreams, "services": services}


def process_stats() -> dict[str, float | int | None]:
    """This process's resident memory, CPU seconds, open descriptors and start time, from /proc.

    Values that cannot be read (not Linux) are None and are left out of the metrics.
    """
    stats: dict[str, float | int | None] = {"resident_memory_bytes": None, "open_fds": None,
                                            "start_time_seconds": None}
    times = os.times()
    stats["cpu_seconds"] = times.user + times.system
    try:
        with open("/proc/self/stat", "rb") as f:
            # Fields after the command name, which may itself hold spaces and parentheses.
            fields = f.read().rpartition(b")")[2].split()
        ticks = os.sysconf("SC_CLK_TCK")
        stats["resident_memory_bytes"] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        stats["start_time_seconds"] = _boot_time() + int(fields[19]) / ticks
        stats["open_fds"] = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError, IndexError):
        pass
    return stats


_BOOT: list[float] = []


def _boot_time() -> float:
    if not _BOOT:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    _BOOT.append(float(line.split()[1]))
                    break
            else:
                raise ValueError("no btime in /proc/stat")
    return _BOOT[0]


class Publisher:
    """Writes `state` to `{run_dir}/proc-{pid}.json` every `interval` seconds, until cancelled.

    A failed write (full disk, run_dir not writable) is logged at most once a minute; the next
    interval tries again. `remove()` deletes the file on a clean exit.
    """

    def __init__(self, state: ProcessState, run_dir: str | os.PathLike[str], interval: float) -> None:
        self.state = state
        self.run_dir = Path(run_dir)
        self.interval = interval
        self.path = self.run_dir / f"proc-{state.pid}.json"
        self.writes = 0
        self._complained = -_COMPLAIN_EVERY
        # A cancelled `run` cannot stop the thread of a write in progress: `remove` and the write's
        # rename take this lock, and no write lands after `remove`, so no file outlives its process.
        self._lock = threading.Lock()
        self._removed = False

    async def run(self) -> None:
        """Publish until cancelled; the file is removed when the task ends."""
        try:
            while True:
                snapshot = self.state.snapshot()
                await asyncio.to_thread(self.write, snapshot)
                await asyncio.sleep(self.interval)
        finally:
            self.remove()

    def publish(self) -> None:
        """One synchronous publish (on the event loop thread: the snapshot is taken here)."""
        self.write(self.state.snapshot())

    def write(self, snapshot: dict[str, Any]) -> bool:
        """Add the process stats and write atomically. True when written; never raises OSError.

        The file is written under a name `mkstemp` picks (mode 0600, created exclusively, so no
        symlink is followed) and renamed over `path`.
        """
        snapshot["process"] = process_stats()
        tmp: str | None = None
        try:
            secure_run_dir(self.run_dir)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.run_dir)
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(snapshot, separators=(",", ":")).encode())
            with self._lock:
                if self._removed:
                    os.unlink(tmp)
                    return False
                os.replace(tmp, self.path)
        except (OSError, ConfigError) as exc:
            now = time.monotonic()
            if now - self._complained >= _COMPLAIN_EVERY:
                self._complained = now
                log.warning("cannot publish live state to %s: %s (the admin's /metrics lacks this "
                            "process until it works)", self.path, exc)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            return False
        self.writes += 1
        return True

    def remove(self) -> None:
        """Delete the file for good: a write still in flight no longer lands."""
        with self._lock:
            self._removed = True
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)


# -- the admin side --------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    except OSError:
        return False
    return True


class LiveView:
    """The merged live state of a gateway's serving processes, for `/metrics` and the admin API.

    `local` is the admin process's own `ProcessState` when it also serves (one process); the master
    of several workers passes None and sees only the workers' files. Reading is blocking (files):
    `/metrics` calls `render` in a thread; `service()` reads a handful of small files inline.
    Building one creates or checks `run_dir` (`secure_run_dir`): `peel serve` builds it at start,
    so a run directory of another user stops the gateway there, naming `server.run_dir`.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, interval: float,
                 local: ProcessState | None = None, gateway: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.run_dir = secure_run_dir(run_dir)
        self.interval = interval
        self.local = local
        self.gateway = gateway
        self._clock = clock
        self._complained: dict[str, float] = {}
        # (instance, leading?) of the process that competes for the fleet's leadership, set by
        # `peel serve` in that process: shown as `peel_leader{instance=...}`
        self.leader: tuple[str, Callable[[], bool]] | None = None

    def local_snapshot(self) -> dict[str, Any] | None:
        """The own process's state, copied; call on the event loop thread."""
        return self.local.snapshot() if self.local is not None else None

    def processes(self, local: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """`local` (given process stats here) plus every fresh file of a live pid of this gateway."""
        found: list[dict[str, Any]] = []
        if local is not None:
            local.setdefault("process", process_stats())
            found.append(local)
        own = os.getpid() if self.local is not None else None
        oldest = self._clock() - max(STALE_INTERVALS * self.interval, STALE_FLOOR)
        for pid, path in self._files():
            if pid == own:
                continue
            if not pid_alive(pid):
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)  # its writer is gone; nobody else removes it
                continue
            data = self._read(path)
            if data is None:
                continue
            why = check_snapshot(data, pid, self.gateway)
            if why is not None:
                if why != "belongs to another gateway":
                    self._complain(path, why)
                continue
            if data["time"] < oldest:
                continue
            found.append(data)
        return found

    def _read(self, path: Path) -> Any:
        """The decoded file, or None (logged) when it is not a small regular file of this user."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):  # removed between listing and reading
                self._complain(path, f"cannot be opened: {exc.strerror or exc}")
            return None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                self._complain(path, "is not a regular file of this user")
                return None
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            self._complain(path, f"is larger than {MAX_FILE_BYTES} bytes")
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            self._complain(path, "is not JSON")  # or half-written by hand: a publisher renames
            return None

    def _complain(self, path: Path, why: str) -> None:
        now = time.monotonic()
        key = f"{path}: {why}"
        if now - self._complained.get(key, -_COMPLAIN_EVERY) < _COMPLAIN_EVERY:
            return
        if len(self._complained) >= 1024:
            self._complained.clear()
        self._complained[key] = now
        log.warning("live state file %s ignored: it %s", path, why)

    def _files(self) -> Iterable[tuple[int, Path]]:
        try:
            names = os.listdir(self.run_dir)
        except OSError:
            return ()
        return [(int(m.group(1)), self.run_dir / name) for name in sorted(names)
                if (m := _FILE.match(name)) is not None]

    def render(self, local: dict[str, Any] | None = None) -> bytes:
        """The Prometheus text of all processes (blocking); `local` from `local_snapshot()`.

        A file that passed `check_snapshot` but still has a shape the renderer cannot read (a row
        too short, a string where a number goes) is left out and logged, not a 500.
        """
        processes = self.processes(local)
        leader = (self.leader[0], self.leader[1]()) if self.leader is not None else None
        try:
            return render(processes, leader=leader)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError):
            pass
        good = []
        for snap in processes:
            try:
                render([snap], admin_process=False)
            except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
                self._complain(self.run_dir / f"proc-{snap.get('pid')}.json",
                               f"cannot be rendered ({type(exc).__name__}: {exc})")
                continue
            good.append(snap)
        return render(good, leader=leader)

    def service(self, name: str) -> dict[str, Any] | None:
        """The service's live state summed over the processes, or None when none has it.

        Shape: the service snapshot's own fields combined (see `SUMMED`), `"endpoints"`: url ->
        that endpoint's fields combined the same way (`healthy` only when healthy in every process,
        `ejected` when ejected in any), `"processes"`: `[{"pid": ..., <that process's snapshot>}]`.
        """
        per_process: list[tuple[int, Mapping[str, Any]]] = []
        for snap in self.processes(self.local_snapshot()):
            found = (snap.get("services") or {}).get(name)
            if isinstance(found, Mapping):
                per_process.append((int(snap.get("pid", 0)), found))
        return merge_service(name, per_process) if per_process else None


def merge_service(name: str, per_process: Sequence[tuple[int, Mapping[str, Any]]]) -> dict[str, Any]:
    """Combine one service's snapshots from several processes (see `LiveView.service`)."""
    merged: dict[str, Any] = {}
    endpoints: dict[str, dict[str, Any]] = {}
    for _pid, snap in per_process:
        _combine(merged, {k: v for k, v in snap.items() if k not in ("endpoints", "name")})
        for url, endpoint in _endpoints(snap.get("endpoints")):
            _combine(endpoints.setdefault(url, {}), endpoint)
    merged.update(name=name, endpoints=endpoints,
                  processes=[{"pid": pid, **snap} for pid, snap in per_process])
    return merged


def _endpoints(value: object) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """Endpoint snapshots as (url, fields), whether given as a list of dicts or keyed by URL."""
    if isinstance(value, Mapping):
        return [(str(url), e) for url, e in value.items() if isinstance(e, Mapping)]
    if isinstance(value, list):
        return [(str(e.get("url", "")), {k: v for k, v in e.items() if k != "url"})
                for e in value if isinstance(e, Mapping)]
    return ()


def _combine(into: dict[str, Any], values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        old = into.get(key)
        if old is None:
            into[key] = value
        elif key == "state" and value in _STATES and old in _STATES:
            into[key] = max(old, value, key=_STATES.index)
        elif isinstance(value, bool) and isinstance(old, bool):
            into[key] = (old and value) if key == "healthy" else (old or value)
        elif isinstance(value, (int, float)) and isinstance(old, (int, float)) and not isinstance(old, bool):
            into[key] = old + value if key in SUMMED else max(old, value)
