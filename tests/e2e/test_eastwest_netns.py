"""East-west between three "VMs" (issue 14's Proof, e2e tier): monolith, orders and payments, each a
network namespace on one bridge, each running its app and a `peel serve --role sidecar`, plus a
control plane on this host (a `peel serve` gateway with its admin API and the CA, on a real
PostgreSQL that every sidecar reaches over the bridge).

- identities: `peel ca init`, `peel join-token create` per service, each sidecar `peel join`s from
  its namespace;
- the monolith's app, unchanged, calls orders through `HTTP_PROXY=http://127.0.0.1:15001` (passing
  its user header as it always did); orders' app calls payments by name through its outbound
  listener and passes `traceparent`/`baggage` on, as an instrumented app does;
- the call chain answers; every hop between namespaces carries the caller's certificate identity,
  and a plaintext connection to a strict inbound listener is refused;
- one trace spans every hop (an OTLP receiver on this host);
- the control plane's graph (`GET /api/v1/graph`, `peel graph`) shows the edges, and the monolith's
  undeclared call to payments is marked unexpected;
- a beta user (`X-User: ada`, decided at the monolith's sidecar, the edge of the call) reaches the
  new orders (orders-v2) and, through the carried `baggage`, the new payments (payments-v2), whose
  canary sends everyone else to the old one. The new sides run beside the old ones on their VMs
  (a second app and sidecar with their own identity).

Needs root, `ip` (iproute2), PostgreSQL's server binaries and psycopg, like
tests/e2e/test_fleet_netns.py (whose namespace helpers this reuses): skipped with the reason
elsewhere, required in CI.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.access_log import records
from tests.e2e.test_fleet_netns import REASON, free_network, ip
from tests.fakes.tls import TestCA
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.pg import in_ci, running_postgres
from tests.sockets.conftest import ROOT, wait_for
from tests.sockets.serve_harness import PeelServe
from tests.sockets.test_tls import TlsPeel

if REASON and in_ci():
    raise RuntimeError(f"tests/e2e/test_eastwest_netns.py must run in CI: {REASON}")
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""),
              pytest.mark.timeout(400), pytest.mark.postgres]

TD = "peel.internal"
OUTBOUND, INBOUND = 15001, 15443   # the first sidecar of a VM
OUTBOUND_V2, INBOUND_V2 = 15002, 15444  # the new version's sidecar beside it
APP, APP_V2 = 9000, 9001

APP_SCRIPT = '''
import json, os, sys, urllib.error, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME, PORT, CALLS = sys.argv[1], int(sys.argv[2]), sys.argv[3]
PASS_ON = os.environ["PASS_ON"].split(",")  # the headers this app passes on to its own calls


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        answer = {"app": NAME, "path": self.path,
                  "headers": {k.lower(): v for k, v in self.headers.items()}}
        status = 200
        if CALLS != "-":
            headers = {h: self.headers[h] for h in PASS_ON if self.headers.get(h)}
            request = urllib.request.Request("http://" + CALLS + self.path, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:  # HTTP_PROXY
                    answer["called"] = json.loads(response.read())
            except urllib.error.HTTPError as error:
                status, answer["called"] = 502, {"status": error.code, "body": error.read().decode()}
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
'''


@dataclass(frozen=True)
class Vm:
    """A network namespace on the bridge, at `ip`."""

    name: str
    netns: str
    ip: str


@contextlib.contextmanager
def bridged(names: list[str]) -> Iterator[tuple[str, str, dict[str, Vm]]]:
    """Namespaces on one bridge of this host: yields (this host's address, the network, the VMs)."""
    net = next(free_network().subnets(new_prefix=24))
    hosts = [str(h) for h in net.hosts()]
    tag = os.getpid() % 100000
    bridge = f"pb{tag}"
    made: list[str] = []
    links: list[str] = []
    try:
        ip("link", "add", bridge, "type", "bridge")
        links.append(bridge)
        ip("addr", "add", f"{hosts[0]}/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        vms: dict[str, Vm] = {}
        for i, name in enumerate(names):
            vm = Vm(name, f"peel-ew-{tag}-{name}", hosts[10 + i])
            ip("netns", "add", vm.netns)
            made.append(vm.netns)
            outer, inner = f"pb{tag}h{i}", f"pb{tag}n{i}"
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            links.append(outer)
            ip("link", "set", outer, "master", bridge)
            ip("link", "set", outer, "up")
            ip("link", "set", inner, "netns", vm.netns)
            ip("-n", vm.netns, "addr", "add", f"{vm.ip}/24", "dev", inner)
            ip("-n", vm.netns, "link", "set", inner, "up")
            ip("-n", vm.netns, "link", "set", "lo", "up")
            vms[name] = vm
        yield hosts[0], str(net), vms
    finally:
        for link in reversed(links):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        for netns in made:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PEEL_") and "proxy" not in k.lower()}


def in_netns(vm: Vm, *args: str, env: dict[str, str] | None = None, expect: int | None = 0
             ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", "netns", "exec", vm.netns, *args], cwd=ROOT, env=env or clean_env(),
                          capture_output=True, text=True, timeout=60)
    if expect is not None:
        assert done.returncode == expect, (args, done.stdout, done.stderr)
    return done


def peel(*args: str, vm: Vm | None = None, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway.cli", *args]
    if vm is not None:
        return in_netns(vm, *command, expect=expect)
    done = subprocess.run(command, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60)
    if expect is not None:
        assert done.returncode == expect, (args, done.stdout, done.stderr)
    return done


def listening(pid: int, port: int) -> bool:
    """Whether the network namespace of process `pid` has a TCP listener on `port` (no subprocess)."""
    try:
        rows = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A" for r in rows)


@dataclass
class NsSidecar(PeelServe):
    """`peel serve --role sidecar` in `vm`'s namespace; ready once its listeners listen there."""

    vm: Vm | None = None
    ports: tuple[int, ...] = ()

    def start(self, *, wait: bool = True) -> NsSidecar:
        assert self.vm is not None
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.vm.netns, sys.executable, "-m", "gateway.cli", "serve",
                 "--role", "sidecar", "--config", str(self.config)],
                cwd=ROOT, env=clean_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            wait_for(self.up, 90, f"the sidecar in {self.vm.name} (log: {self.log})")
        return self

    def up(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"peel serve exited with {self.process.returncode}:\n"
                                 + self.log.read_text())
        return all(listening(self.process.pid, p) for p in self.ports)

    def access(self) -> list[dict[str, Any]]:
        return records(self.tmp / "access.log")


class Receiver(OtlpReceiver):
    """tests/otlp_receiver.py's receiver, listening on `host` (the bridge) instead of loopback."""

    def listen_on(self, host: str) -> Receiver:
        handler = self._server.RequestHandlerClass
        self._server.server_close()
        self._server = ThreadingHTTPServer((host, 0), handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.port = int(self._server.server_address[1])
        self.url = f"http://{host}:{self.port}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver",
                                        daemon=True)
        return self


@dataclass
class Fleet:
    tmp: Path
    vms: dict[str, Vm]
    control: PeelServe
    cafile: Path  # the CA of the control plane's admin certificate
    token: str
    sidecars: dict[str, NsSidecar]
    receiver: Receiver
    apps: list[subprocess.Popen[bytes]] = field(default_factory=list)


def document(vms: dict[str, Vm]) -> dict[str, Any]:
    def service(name: str, vm: str, port: int) -> dict[str, Any]:
        return {"name": name, "endpoints": [f"https://{vms[vm].ip}:{port}"],
                "identity": f"spiffe://{TD}/svc/{name}"}
    return {
        "services": [service("orders", "orders", INBOUND), service("orders-v2", "orders", INBOUND_V2),
                     service("payments", "payments", INBOUND),
                     service("payments-v2", "payments", INBOUND_V2)],
        "routes": [
            # the edge of the call (the monolith's sidecar) decides: beta users to orders-v2
            {"name": "orders", "match": {"hosts": ["orders"]}, "service": "orders",
             "migration": {"to": "orders-v2", "stage": "canary", "percent": 0,
                           "beta": {"header": "X-User", "allow": ["ada"]}},
             "authorization": {"allow_from": ["monolith"]}},
            # a 0 % canary: only a side carried from the edge sends anyone to payments-v2
            {"name": "payments", "match": {"hosts": ["payments"]}, "service": "payments",
             "migration": {"to": "payments-v2", "stage": "canary", "percent": 0},
             "authorization": {"allow_from": ["orders", "orders-v2"]}},
        ]}


def sidecar(tmp: Path, vm: Vm, name: str, url: str, receiver: Receiver, *, outbound: int,
            inbound: int | None, app: int | None, edge: bool = False) -> NsSidecar:
    directory = tmp / name
    directory.mkdir()
    settings = (f'role = "sidecar"\n[listeners.outbound]\nbind = "127.0.0.1:{outbound}"\n'
                f'[identity]\nstate_dir = "{directory / "identity"}"\ntrust_domain = "{TD}"\n'
                f'[tracing]\nsample_ratio = 1.0\nendpoint = "{receiver.url}"\nservice_name = "{name}"\n'
                '[facade]\ncounts_interval = 0.5\n')
    if edge:  # the local app's user header is believed for the beta list
        settings += 'trusted_networks = ["127.0.0.1/32"]\n'
    if inbound is not None:
        settings += (f'[listeners.inbound]\nbind = "{vm.ip}:{inbound}"\nmtls = "strict"\n'
                     f'app = "http://127.0.0.1:{app}"\n')
    node = NsSidecar(directory, url=url, extra_settings=settings, vm=vm)
    node.ports = (outbound,) if inbound is None else (outbound, inbound)
    return node


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("eastwest")
    (tmp / "app.py").write_text(APP_SCRIPT)
    with contextlib.ExitStack() as stack:
        host, network, vms = stack.enter_context(bridged(["monolith", "orders", "payments"]))
        postgres = stack.enter_context(running_postgres(listen=[host], clients=[network]))
        receiver = Receiver().listen_on(host)
        stack.enter_context(receiver)
        database = postgres.create_database()
        url = postgres.url(database.rsplit("/", 1)[1], host=host)

        # the control plane: CA, admin API on the bridge, the document
        peel("ca", "init", "--dir", str(tmp / "ca"), "--trust-domain", TD)
        # its admin API over TLS on the bridge (`peel join` sends a token only over https)
        site = TestCA()
        (tmp / "cp").mkdir()
        pair = site.issue(tmp / "admin", ["admin.example"], ips=["127.0.0.1", host])
        cafile = site.pem_path(tmp)
        tls = f'tls_certificates = [{{cert = "{pair.cert}", key = "{pair.key}"}}]'
        control = TlsPeel(tmp / "cp", admin=tls, admin_bind="0.0.0.0", admin_ca=cafile,
                          extra=f'[identity]\nca_dir = "{tmp / "ca"}"\n')
        text = control.config.read_text()
        control.config.write_text(text.replace(f'url = "{control.url}"', f'url = "{url}"'))
        control.url = url
        token = control.upgrade_with_token()
        control.commit(document(vms))
        control.start()
        stack.callback(control.stop)
        admin = f"https://{host}:{control.admin_port}"

        nodes = {
            "monolith": sidecar(tmp, vms["monolith"], "monolith", url, receiver, outbound=OUTBOUND,
                                inbound=None, app=None, edge=True),
            "orders": sidecar(tmp, vms["orders"], "orders", url, receiver, outbound=OUTBOUND,
                              inbound=INBOUND, app=APP),
            "orders-v2": sidecar(tmp, vms["orders"], "orders-v2", url, receiver, outbound=OUTBOUND_V2,
                                 inbound=INBOUND_V2, app=APP_V2),
            "payments": sidecar(tmp, vms["payments"], "payments", url, receiver, outbound=OUTBOUND,
                                inbound=INBOUND, app=APP),
            "payments-v2": sidecar(tmp, vms["payments"], "payments-v2", url, receiver,
                                   outbound=OUTBOUND_V2, inbound=INBOUND_V2, app=APP_V2),
        }
        for name, node in nodes.items():
            assert node.vm is not None
            secret = peel("join-token", "create", "--service", name, "--config", str(control.config))
            done = peel("join", "--token", secret.stdout.strip(), "--control", admin, "--cacert",
                        str(cafile), "--config", str(node.config), vm=node.vm)
            assert f"spiffe://{TD}/svc/{name}" in done.stdout
        for node in nodes.values():
            node.start(wait=False)
            stack.callback(node.stop)

        # the apps: (vm, name, port, calls, proxy port, headers passed on)
        fleet = Fleet(tmp, vms, control, cafile, token, nodes, receiver)
        for vm, name, port, calls, proxy, pass_on in (
                ("monolith", "monolith", APP, "orders", OUTBOUND, "X-User"),
                ("orders", "orders", APP, "payments", OUTBOUND, "traceparent,tracestate,baggage"),
                ("orders", "orders-v2", APP_V2, "payments", OUTBOUND_V2, "traceparent,tracestate,baggage"),
                ("payments", "payments", APP, "-", OUTBOUND, "-"),
                ("payments", "payments-v2", APP_V2, "-", OUTBOUND_V2, "-")):
            env = clean_env()
            env.update(http_proxy=f"http://127.0.0.1:{proxy}", HTTP_PROXY=f"http://127.0.0.1:{proxy}",
                       PASS_ON=pass_on)
            fleet.apps.append(subprocess.Popen(
                ["ip", "netns", "exec", vms[vm].netns, sys.executable, str(tmp / "app.py"), name,
                 str(port), calls], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        try:
            for node in nodes.values():
                assert node.vm is not None
                wait_for(node.up, 120, f"the sidecar {node.tmp.name} (log: {node.log})")
            for app in fleet.apps:
                wait_for(lambda a=app: listening(a.pid, APP) or listening(a.pid, APP_V2),  # type: ignore[misc]
                         60, "the apps to listen")
            yield fleet
        finally:
            for app in fleet.apps:
                app.terminate()
                app.wait(30)


def call(host: str, port: int, target: str, headers: dict[str, str] | None = None,
         timeout: float = 60) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def checkout(fleet: Fleet, path: str, user: str) -> dict[str, Any]:
    """The monolith's app, called from outside its VM; its answer (with the whole chain)."""
    status, body = call(fleet.vms["monolith"].ip, APP, path, {"X-User": user})
    assert status == 200, body
    answer = json.loads(body)
    assert isinstance(answer, dict)
    return answer


def chain(answer: dict[str, Any]) -> list[str]:
    names = []
    while answer:
        names.append(answer["app"])
        answer = answer.get("called") or {}
    return names


def test_the_call_chain_crosses_every_vm_with_mtls_and_a_beta_user_stays_new(fleet: Fleet) -> None:
    # everyone else: the old orders and the old payments (both canaries at 0 %)
    answer = checkout(fleet, "/checkout/bob", "bob")
    assert chain(answer) == ["monolith", "orders", "payments"], answer
    # ada is on the beta list at the edge: the new orders, and through baggage the new payments
    answer = checkout(fleet, "/checkout/ada", "ada")
    assert chain(answer) == ["monolith", "orders-v2", "payments-v2"], answer
    orders_saw, payments_saw = answer["called"]["headers"], answer["called"]["called"]["headers"]
    assert "peel-side=to" in orders_saw["baggage"] and "peel-side=to" in payments_saw["baggage"]
    assert orders_saw["host"] == "orders" and payments_saw["host"] == "payments"
    # the monolith's app never sent trace headers: its sidecar started the trace, the others continued it
    assert orders_saw["traceparent"].split("-")[1] == payments_saw["traceparent"].split("-")[1]

    # each inbound listener saw the caller's certificate identity (the hop was mTLS)
    def peer(name: str, path: str) -> str | None:
        lines = [line for line in fleet.sidecars[name].access() if line["path"] == path]
        return lines[-1]["peer"] if lines else None
    for name, path, caller in (("orders", "/checkout/bob", "monolith"),
                               ("payments", "/checkout/bob", "orders"),
                               ("orders-v2", "/checkout/ada", "monolith"),
                               ("payments-v2", "/checkout/ada", "orders-v2")):
        wait_for(lambda n=name, p=path: peer(n, p) is not None, 30,  # type: ignore[misc]
                 f"{name}'s access log line")
        assert peer(name, path) == f"spiffe://{TD}/svc/{caller}"


def test_a_plaintext_connection_to_a_strict_inbound_listener_is_refused(fleet: Fleet) -> None:
    for vm, port in (("orders", INBOUND), ("payments", INBOUND), ("payments", INBOUND_V2)):
        status, body = call(fleet.vms[vm].ip, port, "/checkout/eve", {"Host": "payments"})
        assert status == 403 and json.loads(body)["code"] == "mtls-required", (vm, port, body)
    # from inside another VM too, where an app would try it
    program = ("import http.client\n"
               f"c = http.client.HTTPConnection('{fleet.vms['payments'].ip}', {INBOUND}, timeout=30)\n"
               "c.request('GET', '/x', headers={'Host': 'payments'})\n"
               "r = c.getresponse(); print(r.status, r.read().decode())\n")
    done = in_netns(fleet.vms["monolith"], sys.executable, "-c", program)
    assert done.stdout.startswith("403") and "mtls-required" in done.stdout, done.stdout


def test_one_trace_spans_every_hop(fleet: Fleet) -> None:
    answer = checkout(fleet, "/checkout/trace-ada", "ada")
    assert chain(answer) == ["monolith", "orders-v2", "payments-v2"], answer
    trace_id = answer["called"]["called"]["headers"]["traceparent"].split("-")[1]

    def whole(spans: list[ReceivedSpan]) -> bool:
        mine = [s for s in spans if s.trace_id == trace_id]
        return {(s.resource.get("service.name"), s.kind) for s in mine} >= {
            (name, kind) for name in ("monolith", "orders-v2", "payments-v2")
            for kind in ("server", "client")}
    fleet.receiver.wait_for(whole, 60)
    spans = fleet.receiver.trace(trace_id)
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_id]
    # one root (the monolith sidecar's server span) and every other span's parent is in the trace
    assert len(roots) == 1 and roots[0].resource["service.name"] == "monolith", roots
    assert all(s.parent_id in ids for s in spans if s.parent_id), [(s.name, s.parent_id) for s in spans]
    by_service = {s.resource["service.name"] for s in spans}
    assert by_service == {"monolith", "orders-v2", "payments-v2"}, by_service


def graph(fleet: Fleet) -> dict[tuple[str, str], dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(fleet.cafile))
    conn = http.client.HTTPSConnection("127.0.0.1", fleet.control.admin_port, timeout=30, context=context)
    try:
        conn.request("GET", "/api/v1/graph?window=5m", headers={"Authorization": f"Bearer {fleet.token}"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200, body
    return {(e["source"], e["destination"]): e for e in json.loads(body)["edges"]}


def test_the_graph_shows_the_edges_and_an_undeclared_call_is_unexpected(fleet: Fleet) -> None:
    checkout(fleet, "/checkout/bob", "bob")
    checkout(fleet, "/checkout/ada", "ada")
    # the monolith's VM calls payments, which no allow_from declares: payments' sidecar refuses it
    program = ("import urllib.request, urllib.error\n"
               "try:\n    urllib.request.urlopen('http://payments/undeclared', timeout=30)\n"
               "except urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())\n")
    env = clean_env()
    env.update(http_proxy=f"http://127.0.0.1:{OUTBOUND}", HTTP_PROXY=f"http://127.0.0.1:{OUTBOUND}")
    done = in_netns(fleet.vms["monolith"], sys.executable, "-c", program, env=env)
    assert done.stdout.startswith("403") and "forbidden" in done.stdout.lower(), done.stdout
    wanted = {("monolith", "orders"), ("monolith", "orders-v2"), ("orders", "payments"),
              ("orders-v2", "payments-v2"), ("monolith", "payments")}
    wait_for(lambda: wanted <= set(graph(fleet)), 30, "every edge in the control plane's graph")
    edges = graph(fleet)
    for pair in wanted - {("monolith", "payments")}:
        assert edges[pair]["expected"] is True, edges[pair]
        # the caller's sidecar saw it on its outbound listener, the callee's on its inbound one
        assert sorted(edges[pair]["observed_by"]) == ["inbound", "outbound"], edges[pair]
        assert edges[pair]["identity"] == f"spiffe://{TD}/svc/{pair[0]}"
    assert edges[("monolith", "payments")]["expected"] is False
    # `peel graph` against the control plane says so, and exits 1 while an edge is unexpected
    env = clean_env()
    env.update(PEEL_ADMIN_URL=f"https://127.0.0.1:{fleet.control.admin_port}", PEEL_ADMIN_TOKEN=fleet.token,
               PEEL_ADMIN_CA=str(fleet.cafile))
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "graph", "--window", "5m"], env=env,
                          cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    rows = {tuple(line.split()[:2]): line for line in done.stdout.splitlines()}
    assert rows[("monolith", "payments")].endswith("UNEXPECTED"), done.stdout
    assert rows[("orders-v2", "payments-v2")].split()[-1] == "yes", done.stdout

