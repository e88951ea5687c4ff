"""Two gateways in two network namespaces on one real PostgreSQL (issue 13 item 5, the e2e proof).

Each gateway is a real `peel serve` in its own network namespace, joined to this host by a veth
pair: it reaches PostgreSQL (on this host) only through that link, as a gateway on another machine
would, and the tests reach its listeners at its namespace's address. Each namespace runs its own
upstream on 127.0.0.1, so one route table serves in both.

- a change made through one gateway's admin API is served by the other within 1 s (the poll
  interval is 30 s: only LISTEN/NOTIFY can do it);
- PostgreSQL stopped: both keep serving the last good table and stay ready; started again, a
  change made through the other gateway reaches both, and one leads again;
- the leader killed (SIGKILL): the other leads within a few seconds.

Needs root, `ip` (iproute2), PostgreSQL's server binaries and psycopg: skipped with the reason
elsewhere, required in CI (CI=true), where `.ci/run` installs iproute2 and postgresql.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.pg import PostgresServer, find_bindir, in_ci, running_postgres
from tests.sockets.conftest import ROOT, wait_for
from tests.sockets.fleet_harness import apply, document, leader_gauge, polling, propagate, stamp
from tests.sockets.serve_harness import PeelServe

UPSTREAM_PORT = 8081
UPSTREAM = f"http://127.0.0.1:{UPSTREAM_PORT}"  # the same address in every namespace


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    if shutil.which("ip") is None:
        return "needs ip (apt-get install iproute2)"
    if find_bindir() is None:
        return "needs PostgreSQL's server binaries (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "needs psycopg (pip install 'psycopg[binary]')"
    return None


REASON = missing()
if REASON and in_ci():
    raise RuntimeError(f"tests/e2e/test_fleet_netns.py must run in CI: {REASON}")
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""),
              pytest.mark.timeout(600), pytest.mark.postgres]


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass(frozen=True)
class Namespace:
    """A network namespace linked to this host: `host_ip` on this side, `ip` inside."""

    name: str
    link: str  # the host's end of the veth pair
    host_ip: str
    ip: str
    network: str


def free_network() -> ipaddress.IPv4Network:
    """A /23 under 10.213.0.0/16 that no address or route of this host touches."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    used += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    start = os.getpid() % 120
    for n in range(120):
        third = 2 * ((start + n) % 120) + 4
        if f"10.213.{third}." not in used and f"10.213.{third + 1}." not in used:
            return ipaddress.IPv4Network(f"10.213.{third}.0/23")
    raise AssertionError("no free 10.213.x.0/23 network for the namespaces")


@contextlib.contextmanager
def namespaces(count: int) -> Iterator[list[Namespace]]:
    made: list[Namespace] = []
    tag = os.getpid() % 100000
    subnets = list(free_network().subnets(new_prefix=24))
    try:
        for i in range(count):
            net = subnets[i]
            hosts = list(net.hosts())
            ns = Namespace(f"peel-e2e-{tag}-{i}", f"pe{tag}x{i}", str(hosts[0]), str(hosts[1]), str(net))
            ip("netns", "add", ns.name)
            made.append(ns)
            ip("link", "add", ns.link, "type", "veth", "peer", "name", f"pe{tag}y{i}")
            ip("link", "set", f"pe{tag}y{i}", "netns", ns.name)
            ip("addr", "add", f"{ns.host_ip}/24", "dev", ns.link)
            ip("link", "set", ns.link, "up")
            ip("-n", ns.name, "addr", "add", f"{ns.ip}/24", "dev", f"pe{tag}y{i}")
            ip("-n", ns.name, "link", "set", f"pe{tag}y{i}", "up")
            ip("-n", ns.name, "link", "set", "lo", "up")
        yield made
    finally:
        for ns in made:
            subprocess.run(["ip", "link", "del", ns.link], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)


@dataclass
class NsPeel(PeelServe):
    """`peel serve` run inside network namespace `netns`, its listeners on `host` there."""

    netns: str = ""
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        super().__post_init__()
        text = self.config.read_text()
        for port in (self.public_port, self.admin_port):
            text = text.replace(f'"127.0.0.1:{port}"', f'"{self.host}:{port}"')
        self.config.write_text(text)

    def start(self, *, wait: bool = True) -> NsPeel:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-m", "gateway.cli", "serve",
                 "--config", str(self.config)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            wait_for(self.ready, 60, f"peel serve in {self.netns} to be ready (log: {self.log})")
        return self

    def get(self, target: str, *, port: int | None = None, timeout: float = 10,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        import http.client

        conn = http.client.HTTPConnection(self.host, port or self.public_port, timeout=timeout)
        try:
            conn.request("GET", target, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def admin_get(self, path: str, token: str, *, timeout: float = 10) -> tuple[int, bytes]:
        status, _, body = self.get(path, port=self.admin_port, timeout=timeout,
                                   headers={"Authorization": f"Bearer {token}"})
        return status, body


@dataclass
class Site:
    """The namespaces, each with its upstream, and PostgreSQL on this host reachable from both."""

    namespaces: list[Namespace]
    postgres: PostgresServer


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    content = tmp_path_factory.mktemp("upstream")
    (content / "p").write_text("upstream\n")
    upstreams: list[subprocess.Popen[bytes]] = []
    with namespaces(2) as spaces:
        try:
            for ns in spaces:
                upstreams.append(subprocess.Popen(
                    ["ip", "netns", "exec", ns.name, sys.executable, "-m", "http.server",
                     str(UPSTREAM_PORT), "--bind", "127.0.0.1", "--directory", str(content)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            with running_postgres(listen=[ns.host_ip for ns in spaces],
                                  clients=[ns.network for ns in spaces]) as server:
                yield Site(spaces, server)
        finally:
            for upstream in upstreams:
                upstream.terminate()
                upstream.wait(30)


@contextlib.contextmanager
def gateways(site: Site, tmp: Path, *, poll_interval: float) -> Iterator[tuple[NsPeel, NsPeel, str]]:
    """A fresh database with one table (stamp 1) and an admin token, and one gateway per namespace,
    each connecting to PostgreSQL through its own link; yields them and the token."""
    from routes.model import Document
    from routes.store import Store

    database = site.postgres.create_database()
    store = Store(database)
    try:
        store.upgrade()
        token = store.create_token("e2e")
        store.commit(Document.parse(document(UPSTREAM, 1)), actor="test", reason="e2e")
    finally:
        store.close()
    name = database.rsplit("/", 1)[1]
    peers: list[NsPeel] = []
    try:
        for i, ns in enumerate(site.namespaces):
            (tmp / f"ns{i}").mkdir()
            peel = NsPeel(tmp / f"ns{i}", url=site.postgres.url(name, host=ns.host_ip),
                          netns=ns.name, host=ns.ip)
            peers.append(polling(peel, poll_interval).start())
        yield peers[0], peers[1], token
    finally:
        for peel in peers:
            if peel.process is not None:
                peel.stop()


def one_leader(peers: tuple[NsPeel, ...], token: str) -> bool:
    return sorted(leader_gauge(p, token) or 0 for p in peers) == [0, 1]


def test_a_change_through_one_gateway_is_served_by_the_other_within_a_second(
        site: Site, tmp_path: Path) -> None:
    with gateways(site, tmp_path, poll_interval=30) as (a, b, token):
        assert stamp(a) == stamp(b) == "1"
        # through a, then through b, and so on; timed until both serve it
        seconds = [propagate([a, b], (a, b)[i % 2], token, UPSTREAM, i) for i in range(2, 22)]
        print("commit -> served by both gateways (two namespaces), seconds:",
              sorted(round(x, 3) for x in seconds))
        assert max(seconds) < 1.0, seconds


def test_postgres_stopped_both_keep_serving_then_converge_when_it_returns(
        site: Site, tmp_path: Path) -> None:
    with gateways(site, tmp_path, poll_interval=0.25) as (a, b, token):
        wait_for(lambda: one_leader((a, b), token), 30, "one leader")
        assert stamp(a) == stamp(b) == "1"
        site.postgres.stop()
        try:
            for peel in (a, b):
                wait_for(lambda p=peel: "store unreachable" in p.log.read_text(), 30,  # type: ignore[misc]
                         f"{peel.netns} to notice the store is gone")
            # nobody leads without the database; everyone keeps serving the last good table
            wait_for(lambda: [leader_gauge(p, token) for p in (a, b)] == [0, 0], 30,
                     "the leader to stop leading")
            for _ in range(10):
                assert stamp(a) == stamp(b) == "1"
                assert a.ready() and b.ready()
        finally:
            site.postgres.start()

        def applied() -> bool:
            try:
                apply(b, token, document(UPSTREAM, 2), reason="back")
            except AssertionError:  # the store not usable yet: 503 from the admin API
                return False
            return True

        wait_for(applied, 60, "the admin API to take a change again")
        wait_for(lambda: stamp(a) == stamp(b) == "2", 15, "both gateways to serve version 2")
        wait_for(lambda: one_leader((a, b), token), 30, "one leader again")


def test_the_leader_killed_the_other_leads_within_seconds(site: Site, tmp_path: Path) -> None:
    with gateways(site, tmp_path, poll_interval=30) as (a, b, token):
        wait_for(lambda: one_leader((a, b), token), 30, "exactly one leader")
        leader, other = sorted((a, b), key=lambda p: -(leader_gauge(p, token) or 0))
        assert leader.process is not None
        os.killpg(leader.process.pid, signal.SIGKILL)
        leader.process.wait(10)
        killed = time.monotonic()
        wait_for(lambda: leader_gauge(other, token) == 1, 30, f"{other.netns} to lead")
        took = time.monotonic() - killed
        print(f"the leader killed -> the other leads after {took:.2f} s")
        assert took < 10, took
        assert "leading the fleet" in other.log.read_text()
