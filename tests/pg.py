"""A throwaway PostgreSQL server for tests: real binaries, a temp data dir, a free loopback port.

    with running_postgres() as server:          # or the `pg_server` / `pg_url` fixtures below
        url = server.create_database()          # postgresql+psycopg://postgres@127.0.0.1:PORT/t_...

The server binaries come from `pg_config --bindir`, `/usr/lib/postgresql/*/bin` (newest first) or
`PATH`. PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` system
user (else `nobody`) and initdb/pg_ctl run through `runuser` (or `setpriv`). Authentication is
`trust` on loopback only; durability is switched off because the data is thrown away.

When the binaries or the driver (psycopg) are missing the fixtures skip with the reason, except in
CI (environment `CI` set to true, as `.ci/run` does), where PostgreSQL is part of the set-up and a
test that cannot run is a failure; when they are present but the server does not come up, that is
a failure, with the server log in the message.

To use the fixtures in a test package, import them into its conftest.py:
`from tests.pg import pg_server, pg_url  # noqa: F401`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "postgres"
START_TIMEOUT = 60.0
_SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "log_min_messages": "warning",
}


class PostgresUnavailable(Exception):
    """PostgreSQL cannot be run here (no binaries, no user to run them as)."""


@dataclass(frozen=True, slots=True)
class PostgresServer:
    """A running throwaway server; `url()` and `create_database()` give SQLAlchemy URLs."""

    host: str
    port: int
    user: str
    root: Path

    def url(self, database: str = "postgres", host: str | None = None) -> str:
        """The URL of `database`, through `host` (one of the addresses it listens on)."""
        return f"postgresql+psycopg://{self.user}@{host or self.host}:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server (fast: sessions are ended), keeping its data; `start()` brings it back."""
        done = _pg_ctl(self.root, "-m", "fast", "-w", "stop")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed: {done.stderr.strip()}")

    def start(self) -> None:
        """Start a stopped server again on the same port and addresses."""
        done = _pg_ctl(self.root, "-l", str(self.root / "server.log"), "-w", "-t",
                       str(int(START_TIMEOUT)), "-o", f"-p {self.port}", "start")
        if done.returncode != 0 or not _wait_ready(self.host, self.port,
                                                   time.monotonic() + START_TIMEOUT):
            raise RuntimeError(f"PostgreSQL did not start again: {done.stderr.strip()}\n"
                               f"{_log_tail(self.root / 'server.log')}")

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh, empty database and return its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # name is ours: a literal, no injection
        return self.url(name)


def _pg_ctl(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable("pg_ctl not found")
    prefix, _ = _run_as()
    return subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(root / "data"), *args],
                          cwd=root, capture_output=True, text=True, timeout=START_TIMEOUT)


def find_bindir() -> Path | None:
    """The directory holding `initdb`, `pg_ctl` and `postgres`, or None."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version,
                                           reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for d in candidates:
        if all(os.access(d / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _run_as() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs a program as the cluster's owner, and that owner (None: us)."""
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        if shutil.which("runuser"):
            return ["runuser", "-u", name, "--"], user
        if shutil.which("setpriv"):
            return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
                    "--"], user
        raise PostgresUnavailable("running as root and neither runuser nor setpriv is installed")
    raise PostgresUnavailable("running as root and there is no 'postgres' or 'nobody' user to own "
                              "the cluster")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _wait_ready(host: str, port: int, deadline: float) -> bool:
    import psycopg

    while time.monotonic() < deadline:
        try:
            with psycopg.connect(host=host, port=port, user=SUPERUSER, dbname="postgres",
                                 connect_timeout=2):
                return True
        except psycopg.OperationalError:
            time.sleep(0.05)  # polling a condition (server accepting) with a deadline
    return False


@contextlib.contextmanager
def running_postgres(listen: Sequence[str] = (), clients: Sequence[str] = ()
                     ) -> Iterator[PostgresServer]:
    """Start a throwaway server; stop it and delete its files on exit.

    It listens on 127.0.0.1 and the addresses in `listen` (they must exist on this host), and
    trusts connections from loopback and from the networks in `clients` (CIDR), e.g. network
    namespaces reaching it through a veth pair.

    Raises `PostgresUnavailable` when it cannot run here, `RuntimeError` when it fails to start.
    """
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found "
                                  "via pg_config, /usr/lib/postgresql/*/bin or PATH")
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise PostgresUnavailable("psycopg is not installed (pip install 'psycopg[binary]')") from exc
    prefix, owner = _run_as()
    root = Path(tempfile.mkdtemp(prefix="peel-pg-"))
    data, sockets, log = root / "data", root / "sock", root / "server.log"
    sockets.mkdir()
    if owner is not None:
        for path in (root, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        # cwd: the owner may not be allowed into our working directory
        return subprocess.run([*prefix, *args], cwd=root, capture_output=True, text=True,
                              timeout=START_TIMEOUT)

    started = False
    try:
        init = run(str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust", "-E",
                   "UTF8", "--locale=C", "--no-sync")
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        addresses = ",".join(["127.0.0.1", *listen])
        settings = "".join(f"{k} = {v}\n" for k, v in
                           {**_SERVER_SETTINGS, "listen_addresses": f"'{addresses}'"}.items())
        settings += f"unix_socket_directories = '{sockets}'\n"
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(settings)
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write("".join(f"host all all {network} trust\n" for network in clients))
        # the OS picks the port; another process could take it before postgres binds, so retry
        for _attempt in range(3):
            port = _free_port()
            start = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t",
                        str(int(START_TIMEOUT)), "-o", f"-p {port}", "start")
            if start.returncode == 0:
                started = True
                break
        if not started:
            raise RuntimeError(f"PostgreSQL did not start: {start.stderr.strip()}\n{_log_tail(log)}")
        if not _wait_ready("127.0.0.1", port, time.monotonic() + START_TIMEOUT):
            raise RuntimeError(f"PostgreSQL did not accept connections\n{_log_tail(log)}")
        yield PostgresServer("127.0.0.1", port, SUPERUSER, root)
    finally:
        if started:
            stop = run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
            if stop.returncode != 0:
                _kill_postmaster(data)
        shutil.rmtree(root, ignore_errors=True)


def _kill_postmaster(data: Path) -> None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGQUIT)


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the tests run in CI (`CI` set to true, 1 or yes, as CI services and `.ci/run` do)."""
    return environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@contextlib.contextmanager
def postgres_or_skip() -> Iterator[PostgresServer]:
    """`running_postgres()`, skipping the test (with the reason) when PostgreSQL cannot run here;
    in CI that is a failure instead, so a missing driver or binary cannot pass as a green run."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_postgres())
        except PostgresUnavailable as exc:
            if in_ci():
                pytest.fail(f"PostgreSQL tests cannot run in CI: {exc}", pytrace=False)
            pytest.skip(f"PostgreSQL tests need a server: {exc}")
        yield server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole test session."""
    with postgres_or_skip() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's server."""
    return pg_server.create_database()
