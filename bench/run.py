#!/usr/bin/env python3
"""`make bench`: Peel against nginx (1 worker) and the bare origin, on this machine, in one run.

    python bench/run.py [--seconds 8] [--reps 3] [--workers 1] [--bodies hello,16k] [--no-match]
                        [--telemetry on|off|tracing|metrics|unsampled] [--paced 4000]
                        [--baseline DIR] [--floor] [--browser]
                        [--tls [--tls-clients 4]] [--routes N [--changes [--changes-rate 1500]]]
                        [--profile FILE | --perf FILE]

Starts an nginx origin ("hello", 5 bytes, at `/`; 16 KiB at `/16k`), nginx with one worker as the
reference proxy, and `peel serve` with `--workers` workers (temp dir: settings, an upgraded SQLite
store holding one route `/` → the origin, access log on to a file, tracing at its default sampling
exporting to a sink on the origin and metrics on, as DESIGN.md asks; `--telemetry off` turns
tracing and metrics off to measure what they cost, `unsampled` keeps both with `sample_ratio = 0`:
trace ids and headers, no spans). Then `wrk -t1` at 1 and 50
connections, and at 50 connections paced to a fixed offered load (`--paced`, where p99 is compared
with nginx's), against each target, targets interleaved within each round so machine drift hits them
alike, and prints the medians of `--reps` rounds with the ratios to nginx and to the direct origin,
then the headline figures against DESIGN.md's targets. Finally `bench/match.py --quick` (match time
against table size) when it exists. See bench/README.md for how to read the output.

`--baseline DIR` adds a fourth target, `peel-base`: DIR is another checkout of Peel (a `git worktree`
of an older commit), started with the same settings, store content and telemetry as `peel`, with
cwd=DIR and PYTHONPATH=DIR so DIR's packages shadow the editable install (checked before it starts),
by DIR's own virtualenv when it has one (`make native` in DIR: the baseline then runs its own
compiled data path, a build matching its sources) and by this interpreter otherwise (where the
data path's sources differ, the baseline then runs interpreted: a build serves one tree). The report
says which data path each Peel ran. It is interleaved with the others in every round, and the report
adds its rows and the ratios peel / peel-base: the before/after comparison a change on the request
path reports.

`--browser` sends every request with a desktop browser's head (`BROWSER_HEADERS`: User-Agent,
Accept, Accept-Language, Accept-Encoding, Connection, a Cookie, four more; about 480 bytes) instead
of wrk's single Host line, to nginx and Peel alike: the head a gateway in front of a monolith's web
pages reads, where the per-field work (the edge's checks, the upstream head) counts ten times over.

`--floor` adds the target `relay`: bench/relay.py, a byte relay on uvloop (a connection to the
origin per client connection, each side's bytes written to the other as they arrive, nothing
parsed), interleaved like the others, with its CPU a request: the floor any Python forwarder on this
loop pays, so the report can say how much of Peel's CPU is its own work.

`--tls` measures HTTPS instead: a test CA and one server certificate (bench/tls_certs.py) in the temp
dir, nginx listening with `ssl` and Peel with `tls_certificates`, both with that certificate and key,
TLS 1.2 and 1.3, session tickets on, both proxying to the same plain-HTTP origin. Per round and per
target: `wrk -t1 -c50 https://...` (keep-alive: steady-state HTTPS throughput), then full and resumed
handshakes a second with `openssl s_time -new` / `-reuse`, for TLS 1.2 and for TLS 1.3, from
`--tls-clients` s_time processes at once; the report gives each against nginx, and the HTTPS
throughput per worker against the 0.25 x nginx aim.

`--routes N` fills both Peels' stores with N routes (N - 1 of them `/rN`, then the catch-all `/`),
for the RSS and throughput of a large table. With `--changes`, instead of the runs above,
bench/changes.py measures whether a one-route change stalls that table: p99 at a fixed load with no
change, with `PUT /api/v1/routes/{name}` changes and with `peel apply -f` changes (see its docstring).

Every `peel serve` runs with the Python settings of `deploy/vm/peel.service` (`PYTHONOPTIMIZE=2`,
no bytecode written), its bytecode compiled ahead of time into `build/bytecode` as `install.sh`
compiles it into a release (gateway/core/bytecode.py): what is measured is what a VM runs.

`--profile FILE` runs no comparison: it samples `peel` with py-spy during one c50 run per body and
prints where the CPU went by layer (bench/profile.py). `--perf FILE` does the same with `perf
record`, which names the compiled request path's functions (bench/perf.py): the profile to quote
when `make native` built the data path.

Needs nginx and wrk (and openssl for --tls): installed with apt-get when missing and running as
root. Every process this script starts is stopped by its PID (its process group) at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import perf, profile  # noqa: E402
from bench.changes import CHANGE_RATE, large_document, measure_changes, report_changes  # noqa: E402
from bench.tls_certs import BenchCerts, make_certs  # noqa: E402
from routes.model import Document  # noqa: E402
from routes.store import Store  # noqa: E402

CONNS = 50
PACED = -CONNS  # row key of the runs at a fixed offered load (50 connections, paced)
# The fixed offered load where tail latency is compared: well under what every target sustains on a
# 2-core machine, so the p99 shows each proxy's own stalls, not the length of a saturated queue.
PACED_RATE = 4000
PATHS = {"hello": "/", "16k": "/16k"}
SIZES = {"hello": 5, "16k": 16384}
TARGETS = ("direct", "nginx", "peel")
BASE = "peel-base"  # the --baseline checkout, a fourth target
FLOOR = "relay"  # --floor: bench/relay.py, a raw byte relay on uvloop
CONTROL = "peel-control"  # --changes: a second Peel with the same table, which no load is sent to
# DESIGN.md's performance targets, per worker, as ratios in one run (throughput by body).
TARGET_THROUGHPUT = {"hello": 0.35, "16k": 0.5}
# the HTTPS throughput's aim (issue 12), both bodies
TARGET_HTTPS_THROUGHPUT = 0.25
TARGET_ADDED_P50_MS = 0.15
TARGET_P99_RATIO = 3.0
TARGET_RSS_MIB = 60.0

NGINX_ORIGIN = """worker_processes 1; daemon off; pid {d}/origin.pid; error_log {d}/origin.err warn;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path {d}/ob; proxy_temp_path {d}/op; fastcgi_temp_path {d}/of;
  uwsgi_temp_path {d}/ou; scgi_temp_path {d}/os;
  server {{ listen 127.0.0.1:{port} backlog=4096;
    location = / {{ default_type text/plain; return 200 "hello"; }}
    location = /v1/traces {{ return 200; }}
    location = /16k {{ default_type text/plain; alias {d}/16k.txt; }}
    location / {{ default_type text/plain; return 200 "hello"; }} }} }}
"""
NGINX_PROXY = """worker_processes 1; daemon off; pid {d}/proxy.pid; error_log {d}/proxy.err warn;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path {d}/pb; proxy_temp_path {d}/pp; fastcgi_temp_path {d}/pf;
  uwsgi_temp_path {d}/pu; scgi_temp_path {d}/ps;
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port} backlog=4096;
    location / {{ proxy_pass http://origin; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host $host; }} }} }}
"""
# --tls: the same proxy, listening with TLS. The protocols, the TLS 1.2 ciphers and resumption are
# Peel's (docs/tls.md): 1.2 and 1.3, ECDHE with AES-GCM or ChaCha20, a session cache and tickets.
NGINX_TLS_PROXY = NGINX_PROXY.replace(
    "listen 127.0.0.1:{port} backlog=4096;",
    "listen 127.0.0.1:{port} ssl backlog=4096;\n"
    "    ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;\n"
    "    ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20; ssl_prefer_server_ciphers on;\n"
    "    ssl_session_cache shared:SSL:10m; ssl_session_timeout 1h; ssl_session_tickets on;")
TLS_VERSIONS = ("1.2", "1.3")
HANDSHAKES = ("new", "reuse")  # s_time's -new (full handshakes) and -reuse (resumed)
# --browser: the field lines a desktop browser sends with a page request (Firefox on Linux), besides
# the Host wrk sends: what a gateway in front of a monolith's web pages reads, where wrk's own
# request is a single Host line.
BROWSER_HEADERS = (
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    "Accept-Language: en-US,en;q=0.5",
    "Accept-Encoding: gzip, deflate, br, zstd",
    "Connection: keep-alive",
    "Cookie: session=3f1c0a9e6b7d4e2f8a5c1b0d9e7f6a3c; theme=dark",
    "Upgrade-Insecure-Requests: 1",
    "Sec-Fetch-Dest: document",
    "Sec-Fetch-Mode: navigate",
    "Sec-Fetch-Site: none",
)
# s_time -www PATH sends "GET PATH HTTP/1.0\r\n\r\n": no Host, which nginx passes on empty and the
# origin answers 400, while Peel proxies a 200. This "path" completes an HTTP/1.1 request with a
# Host and `Connection: close` (the rest of s_time's line becomes a header), so both proxy a 200.
WWW_REQUEST = "/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Bench:"


class BenchError(Exception):
    """The benchmark cannot run or its result would be meaningless; the message says why."""


def route_document(origin: int, routes: int = 1) -> dict[str, object]:
    """What both Peels' stores hold: the route `all` (`/`) to the origin, after `routes - 1` others."""
    return large_document(origin, routes)


REASON = "bench: everything to the origin"
# Run by the baseline's interpreter environment, so its own schema and store code fill its store.
# The document comes on stdin: with --routes 10000 it is about a megabyte, more than one argument
# may hold (Linux's MAX_ARG_STRLEN, 128 KiB).
SEED_BASELINE = """import json, sys
from routes.model import Document
from routes.store import Store
store = Store(sys.argv[1])
try:
    store.upgrade()
    store.commit(Document.parse(json.load(sys.stdin)), actor="bench", reason=sys.argv[2])
finally:
    store.close()
"""
WHERE = "import gateway, routes; print(gateway.__file__); print(routes.__file__)"
# The unit `peel serve` runs under in production, whose Python settings the bench applies, and the
# directory its ahead-of-time bytecode goes to here (install.sh: the release's `pycache`).
UNIT = ROOT / "deploy" / "vm" / "peel.service"
BYTECODE = ROOT / "build" / "bytecode"
# gateway/core/bytecode.py run as a file, by whichever interpreter a target runs on: a baseline
# checkout may predate the module
RUN_FILE = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def service_environment(unit: Path = UNIT, pycache: Path = BYTECODE) -> dict[str, str]:
    """The PYTHON* variables of the unit's `Environment=` lines, PYTHONPYCACHEPREFIX pointed at
    `pycache`: the bench runs `peel serve` as systemd does on a VM (optimized bytecode, compiled
    ahead of time, none written at start)."""
    found: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            for item in shlex.split(line.removeprefix("Environment=")):
                key, _, value = item.partition("=")
                if key.startswith("PYTHON"):
                    found[key] = value
    if "PYTHONPYCACHEPREFIX" in found:
        found["PYTHONPYCACHEPREFIX"] = str(pycache)
    return found


def compile_bytecode(python: str, env: dict[str, str], cwd: Path | None, pycache: Path = BYTECODE) -> None:
    """What install.sh does for a release, for the interpreter and packages of one target."""
    done = subprocess.run([python, "-c", RUN_FILE, str(ROOT / "gateway" / "core" / "bytecode.py"),
                           str(pycache)], env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode == 1:  # some file did not compile: that module compiles at start, as on a VM
        print(f"bytecode: {done.stdout.strip()} {done.stderr.strip()}", flush=True)
    elif done.returncode != 0:
        raise BenchError(f"compiling the bytecode for {python} failed: {done.stderr.strip()}")


def data_path(log: Path) -> str:
    """What `peel serve` said at start about its data path (compiled or interpreted, and why)."""
    for line in log.read_text(errors="replace").splitlines():
        found = line.find("data path ")
        if found >= 0:
            return line[found:]
    return "data path: not said in its log"


def baseline_python(root: Path) -> str:
    """The interpreter the baseline runs on: DIR/.venv's when there is one, else this one."""
    own = root / ".venv" / "bin" / "python"
    return str(own) if own.exists() else sys.executable


def baseline_env(root: Path) -> dict[str, str]:
    """This environment without PEEL_ settings, with `root`'s packages first on the import path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
    env["PYTHONPATH"] = str(root)
    return env


def check_baseline(root: Path) -> None:
    """Fail unless `gateway` and `routes` import from `root` under `baseline_env(root)`, not from
    the editable install of this checkout."""
    out = subprocess.run([baseline_python(root), "-c", WHERE], cwd=root, env=baseline_env(root),
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise BenchError(f"--baseline {root}: importing gateway and routes failed: {out.stderr.strip()}")
    for file in out.stdout.split():
        if not Path(file).resolve().is_relative_to(root.resolve()):
            raise BenchError(f"--baseline {root}: the baseline would import {file}, not {root}'s code")


def stop_on_sigterm() -> None:
    """Make a SIGTERM (a CI job's timeout, `kill`) stop a bench as Ctrl-C does, through its `finally`
    that stops nginx, Peel and wrk: by default it ended Python at once and left them running."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def need(tool: str, package: str | None = None) -> None:
    """Make sure `tool` is on PATH, installing its Debian package (`package`, else named as the
    tool) when root."""
    if shutil.which(tool):
        return
    package = package or tool
    if os.geteuid() != 0:
        raise BenchError(f"{tool} is missing; install it (Debian: apt-get install {package}) or run as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=False).returncode != 0:
        # A fresh machine has no package lists yet.
        subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL, check=True)
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
    if not shutil.which(tool):
        raise BenchError(f"apt-get installed no {tool}")


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never one this run handed out before (the kernel may
    give two binds in a row the same ephemeral port once the first socket is closed)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def fetch(port: int, path: str, tls: BenchCerts | None = None) -> bytes | None:
    """GET over HTTP, or over HTTPS verifying the server certificate against `tls.ca`."""
    scheme = "https" if tls is not None else "http"
    context = ssl.create_default_context(cafile=str(tls.ca)) if tls is not None else None
    try:
        with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}{path}", timeout=5, context=context) as r:
            body: bytes = r.read()
            return body
    except OSError:
        return None


def served_certificate(port: int, tls: BenchCerts) -> bytes:
    """The DER certificate a TLS handshake with the target gets (verified against the test CA)."""
    context = ssl.create_default_context(cafile=str(tls.ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as conn:
        der = conn.getpeercert(binary_form=True)
    if der is None:
        raise BenchError(f"no certificate from 127.0.0.1:{port}")
    return der


def wait_until(what: str, ready: Callable[[], bool], seconds: float,
               procs: list[subprocess.Popen[bytes]]) -> None:
    """Poll `ready()` until true; fail on a deadline or when one of `procs` has exited."""
    deadline = time.monotonic() + seconds
    while not ready():
        for p in procs:
            if p.poll() is not None:
                raise BenchError(f"{what}: {p.args!r} exited with status {p.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not happen within {seconds:.0f} s")
        time.sleep(0.05)


def wrk(port: int, path: str, conns: int, seconds: int, *, script: Path | None = None,
        scheme: str = "http", headers: Sequence[str] = ()) -> dict[str, float]:
    """One wrk run; `script` a Lua file (the pacing one for a fixed offered load); `headers` field
    lines sent with every request besides wrk's Host (`BROWSER_HEADERS` for `--browser`)."""
    extra = ["-s", str(script)] if script is not None else []
    for line in headers:
        extra += ["-H", line]
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", *extra,
                          f"{scheme}://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    errors += sum(int(x) for x in sock.groups()) if sock else 0
    latency = re.search(r"^\s*Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out, re.M)
    worst = float(latency.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[latency.group(2)] \
        if latency else float("nan")
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50": ms("50%"), "p90": ms("90%"),
            "p99": ms("99%"), "max": worst, "errors": float(errors)}


def s_time(port: int, version: str, mode: str, seconds: int, clients: int) -> dict[str, float]:
    """Handshakes a second: `clients` `openssl s_time` processes at once against the target, each for
    `seconds`, TLS `version` only; `mode` "new" (every connection a full handshake) or "reuse" (every
    connection resumes the session of the one before). TLS 1.2: the handshake alone. TLS 1.3 sends
    its session tickets after the handshake and s_time only reads them when it fetches a page, so with
    1.3 each connection also sends `GET /` (WWW_REQUEST) and reads the answer to the close (for -new
    too, so both count the same work). The rate is the sum over clients of connections / own wall time
    (s_time stops on a whole second of the clock, so its own timings are coarse and CPU-only);
    "resumed" the share of connections s_time saw resumed; "errors" the clients that failed."""
    argv = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", f"-{mode}",
            "-tls1_2" if version == "1.2" else "-tls1_3", "-time", str(seconds)]
    argv += ["-www", WWW_REQUEST] if version == "1.3" else []
    results: list[tuple[float, int, int, int]] = []  # wall s, connections, resumed, return code

    def one() -> None:
        start = time.monotonic()
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        wall = time.monotonic() - start
        count = re.search(r"^(\d+) connections in [\d.]+s;", out.stdout, re.M)
        marks = re.search(r"^starting\n([^\n]*)$", out.stdout, re.M)  # one character a connection
        results.append((wall, int(count.group(1)) if count else 0,
                        marks.group(1).count("r") if marks else 0, out.returncode))

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(n for _, n, _, _ in results)
    return {"hps": sum(n / wall for wall, n, _, _ in results),
            "resumed": sum(r for _, _, r, _ in results) / total if total else 0.0,
            "errors": float(sum(1 for _, n, _, rc in results if rc != 0 or n == 0)),
            "connections": float(total)}


def pacing_script(directory: Path, rate: int, conns: int) -> Path:
    """A wrk script offering `rate` requests a second over `conns` connections: wrk's `delay()`
    waits before each request, drawn from an exponential distribution (each connection a Poisson
    source of `rate / conns`), so the connections do not fall into step and send in bursts.
    Latency is timed from the send, without the wait."""
    path = directory / "paced.lua"
    path.write_text(f"math.randomseed(os.time())\nlocal mean = {1000 * conns / rate:.3f}\n"
                    "function delay()\n  return math.floor(-mean * math.log(1 - math.random()) + 0.5)\nend\n")
    return path


def process_tree(pid: int) -> set[int]:
    """`pid` and its descendants."""
    pids, todo = set(), [pid]
    while todo:
        p = todo.pop()
        pids.add(p)
        with contextlib.suppress(OSError):  # the process may have exited meanwhile
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return pids


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of `pid` and its descendants so far (all their threads), in seconds."""
    ticks = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def process_rss_mib(pid: int) -> tuple[float, float]:
    """(total, largest single process) RSS of `pid` and its descendants, in MiB."""
    sizes = []
    for p in process_tree(pid):
        try:
            m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
        except OSError:
            continue
        sizes.append(int(m.group(1)) / 1024 if m else 0.0)
    return sum(sizes), max(sizes, default=0.0)


@dataclass
class Bench:
    """The processes of one run and the temp dir they live in."""

    dir: Path
    workers: int
    # "on": tracing (default sampling, exported to the origin's /v1/traces sink) and metrics;
    # "off": neither; "tracing" or "metrics": only that one
    telemetry: str = "on"
    baseline: Path | None = None  # --baseline: another checkout, started as the target BASE
    tls: BenchCerts | None = None  # --tls: nginx and the Peels listen with TLS, with this certificate
    routes: int = 1  # --routes: how many routes the stores hold
    floor: bool = False  # --floor: bench/relay.py as the target FLOOR
    tokens: dict[str, str] = field(default_factory=dict)  # an admin token of each Peel (--changes)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def targets(self) -> tuple[str, ...]:
        return TARGETS + ((BASE,) if self.baseline is not None else ()) + ((FLOOR,) if self.floor else ())

    def start_relay(self) -> subprocess.Popen[bytes]:
        """Start bench/relay.py as the target FLOOR, relaying to the origin."""
        self.ports[FLOOR] = free_port()
        relay = self.spawn([sys.executable, str(Path(__file__).with_name("relay.py")),
                            str(self.ports[FLOOR]), str(self.ports["direct"])], f"{FLOOR}.log")
        wait_until(f"{FLOOR} answering", self.answers(self.ports[FLOOR]), 15, self.procs)
        return relay

    def spawn(self, argv: list[str], log: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with open(self.dir / log, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env, cwd=cwd)
        self.procs.append(proc)
        return proc

    def start_nginx(self) -> None:
        self.ports["direct"], self.ports["nginx"] = free_port(), free_port()
        (self.dir / "16k.txt").write_text("x" * 16384)
        (self.dir / "origin.conf").write_text(NGINX_ORIGIN.format(d=self.dir, port=self.ports["direct"]))
        proxy = NGINX_PROXY if self.tls is None else NGINX_TLS_PROXY
        tls = {} if self.tls is None else {"cert": self.tls.cert, "key": self.tls.key}
        (self.dir / "proxy.conf").write_text(proxy.format(d=self.dir, port=self.ports["nginx"],
                                                          origin=self.ports["direct"], **tls))
        for name in ("origin", "proxy"):
            self.spawn(["nginx", "-c", str(self.dir / f"{name}.conf")], f"{name}.log")
        wait_until("nginx (direct) answering", self.answers(self.ports["direct"]), 15, self.procs)
        wait_until("nginx answering", self.answers(self.ports["nginx"], self.tls), 15, self.procs)

    def start_peel(self, name: str = "peel") -> subprocess.Popen[bytes]:
        """Start `peel serve` as target `name`: this checkout for "peel", the baseline for BASE
        (same settings but for its ports and files, same store content, its own code and schema)."""
        root = self.baseline if name == BASE else None
        files = "" if name == "peel" else f"{name}-"  # the peel target's file names are unchanged
        self.ports[name], admin = free_port(), free_port()
        self.ports[f"{name}-admin"] = admin
        url = f"sqlite:///{self.dir / f'{name}.db'}"
        config = self.dir / f"{name}.toml"
        config.write_text(
            f'[database]\nurl = "{url}"\n\n'
            f'[listeners.public]\nbind = "127.0.0.1:{self.ports[name]}"\n'
            + ('' if self.tls is None else
               f'tls_certificates = [{{cert = "{self.tls.cert}", key = "{self.tls.key}"}}]\n')
            + '\n'
            f'[listeners.admin]\nbind = "127.0.0.1:{admin}"\n\n'
            f'[server]\nworkers = {self.workers}\ngrace_period = 2.0\n'
            f'snapshot_path = "{self.dir / f"{files}snapshot.json"}"\n'
            f'run_dir = "{self.dir / f"{files}run"}"\n\n'
            f'[access_log]\ntarget = "{self.dir / f"{files}access.log"}"\n\n'
            + (f'[tracing]\nendpoint = "http://127.0.0.1:{self.ports["direct"]}/v1/traces"\n'
               + ('sample_ratio = 0.0\n' if self.telemetry == "unsampled" else '')
               if self.telemetry in ("on", "tracing", "unsampled") else '[tracing]\nenabled = false\n')
            + ('' if self.telemetry in ("on", "metrics", "unsampled") else '[metrics]\nenabled = false\n'))
        document = route_document(self.ports["direct"], self.routes)
        if root is None:
            store = Store(url)
            try:
                store.upgrade()
                store.commit(Document.parse(document), actor="bench", reason=REASON)
                self.tokens[name] = store.create_token("bench")
            finally:
                store.close()
            env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
        else:
            env = baseline_env(root)
            seeded = subprocess.run([baseline_python(root), "-c", SEED_BASELINE, url, REASON],
                                    input=json.dumps(document), cwd=root, env=env, capture_output=True,
                                    text=True, check=False)
            if seeded.returncode != 0:
                raise BenchError(f"filling the {BASE} store with {root}'s code failed: "
                                 f"{seeded.stderr.strip()}")
        python = sys.executable if root is None else baseline_python(root)
        compile_bytecode(python, env, root)
        peel = self.spawn([python, "-m", "gateway.cli", "serve", "--config", str(config)],
                          f"{name}.log", env={**env, **service_environment()}, cwd=root)
        wait_until(f"{name} serve answering / from the origin", self.answers(self.ports[name], self.tls),
                   60, self.procs)
        print(f"{name}: {data_path(self.dir / f'{name}.log')}", flush=True)
        return peel

    @staticmethod
    def answers(port: int, tls: BenchCerts | None = None) -> Callable[[], bool]:
        return lambda: fetch(port, "/", tls) == b"hello"

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def measure(bench: Bench, pids: dict[str, int], bodies: list[str], reps: int, seconds: int, paced: int,
            headers: Sequence[str] = ()
            ) -> tuple[dict[tuple[str, str, int], list[dict[str, float]]], list[tuple[float, float]]]:
    """Rows keyed (body, target, connections), and (body, target, PACED) for the fixed-load runs;
    `pids` the Peel targets' processes, whose RSS is sampled after each c50 run (returned: peel's);
    `headers` sent with every request (`wrk`)."""
    rows: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    script = pacing_script(bench.dir, paced, CONNS) if paced else None
    rss: list[tuple[float, float]] = []
    for body in bodies:
        for target in bench.targets:  # warm-up: connections, caches, the upstream pool
            wrk(bench.ports[target], PATHS[body], CONNS, 2, headers=headers)
    for rnd in range(reps):
        print(f"round {rnd + 1}/{reps} ...", file=sys.stderr, flush=True)
        for body in bodies:
            for target in round_order(bench.targets, rnd):
                cpu = process_cpu_seconds(pids[target]) if target in pids else 0.0
                result = wrk(bench.ports[target], PATHS[body], CONNS, seconds, headers=headers)
                if target in pids:
                    # the CPU a request costs the proxy: its processes' CPU time over the requests
                    # of the run (all its threads: the access-log writer, the exporters)
                    served = result["rps"] * seconds
                    result["cpu_us"] = (process_cpu_seconds(pids[target]) - cpu) * 1e6 / max(1.0, served)
                    sample = process_rss_mib(pids[target])
                    result["rss"] = sample[0]
                    if target == "peel":
                        rss.append(sample)
                rows.setdefault((body, target, CONNS), []).append(result)
                rows.setdefault((body, target, 1), []).append(
                    wrk(bench.ports[target], PATHS[body], 1, max(3, seconds // 2), headers=headers))
                if script is not None:
                    rows.setdefault((body, target, PACED), []).append(
                        wrk(bench.ports[target], PATHS[body], CONNS, max(3, seconds // 2), script=script,
                            headers=headers))
    return rows, rss


def round_order(targets: tuple[str, ...], rnd: int) -> tuple[str, ...]:
    """The order of `targets` in round `rnd`: as given, but peel and peel-base change places every
    other round, so neither always runs first (the machine's speed drifts within a round too)."""
    if rnd % 2 == 0 or "peel" not in targets or BASE not in targets:
        return targets
    swap = {"peel": BASE, BASE: "peel"}
    return tuple(swap.get(target, target) for target in targets)


def paired_ratio(now: list[float], before: list[float]) -> float:
    """The median of the rounds' own ratios, now / before: each pair ran minutes apart at most, so
    the drift between rounds cancels out of it (the medians' ratio keeps it)."""
    return statistics.median(a / b for a, b in zip(now, before, strict=True) if b)


def report(rows: dict[tuple[str, str, int], list[dict[str, float]]], rss: list[tuple[float, float]],
           bodies: list[str], reps: int, seconds: int, workers: int, paced: int,
           targets: tuple[str, ...], baseline: Path | None = None) -> None:
    """The tables and the verdicts of the runs of `targets` (`Bench.targets`)."""

    def med(key: tuple[str, str, int], name: str) -> float:
        return statistics.median(r[name] for r in rows[key])

    base = f" vs {BASE} ({baseline})" if baseline is not None else ""
    print(f"\n### Peel ({workers} worker{'s' if workers > 1 else ''}){base} vs nginx (1 worker) vs direct: "
          f"{reps} interleaved rounds, wrk -t1, {seconds} s each, {os.cpu_count()} cores\n")
    print(f"| body | target | req/s c{CONNS} | p50 ms | p99 ms | errors | c1 p50 ms | c1 p99 ms | "
          "RSS MiB | CPU us/req | x nginx | x direct |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for body in bodies:
        for target in targets:
            key, c1 = (body, target, CONNS), (body, target, 1)
            rps = med(key, "rps")
            errors = sum(r["errors"] for k in (key, c1, (body, target, PACED)) for r in rows.get(k, []))
            mem = f"{max(r['rss'] for r in rows[key]):.1f}" if "rss" in rows[key][0] else "-"
            cpu = f"{med(key, 'cpu_us'):.1f}" if "cpu_us" in rows[key][0] else "-"
            print(f"| {body} | {target} | {rps:,.0f} | {med(key, 'p50'):.3f} | {med(key, 'p99'):.3f} | "
                  f"{errors:.0f} | {med(c1, 'p50'):.3f} | {med(c1, 'p99'):.3f} | {mem} | {cpu} | "
                  f"{rps / med((body, 'nginx', CONNS), 'rps'):.3f} | "
                  f"{rps / med((body, 'direct', CONNS), 'rps'):.3f} |")
    if paced:
        print(f"\nAt a fixed offered load of {paced:,} req/s (wrk -c{CONNS}, each connection paced):\n")
        print("| body | target | req/s | p50 ms | p90 ms | p99 ms |")
        print("|---|---|---|---|---|---|")
        for body in bodies:
            for target in targets:
                key = (body, target, PACED)
                print(f"| {body} | {target} | {med(key, 'rps'):,.0f} | {med(key, 'p50'):.3f} | "
                      f"{med(key, 'p90'):.3f} | {med(key, 'p99'):.3f} |")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print()
    for body in bodies:
        ratio = med((body, "peel", CONNS), "rps") / med((body, "nginx", CONNS), "rps") / workers
        added = med((body, "peel", 1), "p50") - med((body, "direct", 1), "p50")
        saturated = med((body, "peel", CONNS), "p99") / med((body, "nginx", CONNS), "p99")
        if paced:
            p99 = med((body, "peel", PACED), "p99") / med((body, "nginx", PACED), "p99")
            tail = (f"c{CONNS} p99 at {paced:,} req/s {p99:.2f} x nginx (target ≤ {TARGET_P99_RATIO:.0f}: "
                    f"{verdict(p99 <= TARGET_P99_RATIO)}; saturated: {saturated:.2f} x)")
        else:
            tail = f"c{CONNS} p99 saturated {saturated:.2f} x nginx (not compared with the target)"
        print(f"{body}: throughput per worker {ratio:.3f} x nginx (target ≥ {TARGET_THROUGHPUT[body]}: "
              f"{verdict(ratio >= TARGET_THROUGHPUT[body])}); added c1 p50 over direct {added:.3f} ms "
              f"(target ≤ {TARGET_ADDED_P50_MS}: {verdict(added <= TARGET_ADDED_P50_MS)}); {tail}")
    if FLOOR in targets:
        for body in bodies:
            relay, peel = med((body, FLOOR, CONNS), "cpu_us"), med((body, "peel", CONNS), "cpu_us")
            print(f"{body}: the floor (bench/relay.py, a byte relay on uvloop) "
                  f"{med((body, FLOOR, CONNS), 'rps') / med((body, 'nginx', CONNS), 'rps'):.3f} x nginx "
                  f"at {relay:.1f} us of CPU a request; Peel {peel:.1f} us, {peel - relay:.1f} us of its "
                  f"own work above the floor")
    if rss:
        total = max(t for t, _ in rss)
        largest = max(one for _, one in rss)
        print(f"peel peak RSS under load: {total:.1f} MiB in all processes, {largest:.1f} MiB in the "
              f"largest (target ≤ {TARGET_RSS_MIB:.0f} per worker: {verdict(largest <= TARGET_RSS_MIB)})")
    for peel in ("peel", BASE) if baseline is not None else ("peel",):
        errors = sum(r["errors"] for k, rs in rows.items() if k[1] == peel for r in rs)
        if errors:
            print(f"{peel} errors during the run: {errors:.0f} (non-2xx answers and socket errors)")
    if baseline is not None:
        compare_baseline(rows, bodies, paced, baseline)


def compare_baseline(rows: dict[tuple[str, str, int], list[dict[str, float]]], bodies: list[str],
                     paced: int, baseline: Path) -> None:
    """peel against peel-base, measure by measure: the medians, both against nginx, peel / peel-base."""
    def med(body: str, target: str, conns: int, name: str) -> float:
        return statistics.median(r[name] for r in rows[(body, target, conns)])

    print(f"\n### peel (this checkout) against {BASE} ({baseline}), medians of the same rounds\n")
    print("(paired: the median of each round's own peel / peel-base; the two change places every other "
          "round)\n")
    print(f"| body | measure | peel | {BASE} | peel x nginx | {BASE} x nginx | peel / {BASE} | paired | "
          "peel is |")
    print("|---|---|---|---|---|---|---|---|---|")
    measures = [(f"req/s c{CONNS}", CONNS, "rps", True), (f"CPU us per request c{CONNS}", CONNS, "cpu_us",
                                                          False),
                (f"c{CONNS} p50 ms", CONNS, "p50", False),
                (f"c{CONNS} p99 ms", CONNS, "p99", False), ("c1 p50 ms", 1, "p50", False),
                ("c1 p99 ms", 1, "p99", False)]
    if paced:
        measures.append((f"p99 ms at {paced:,} req/s", PACED, "p99", False))
    for body in bodies:
        for label, conns, name, higher_is_better in measures:
            now, before = med(body, "peel", conns, name), med(body, BASE, conns, name)
            ratio = now / before
            paired = paired_ratio([r[name] for r in rows[(body, "peel", conns)]],
                                  [r[name] for r in rows[(body, BASE, conns)]])
            change = (paired - 1) * 100 if higher_is_better else (1 - paired) * 100
            verdict = f"{abs(change):.1f}% {'better' if change >= 0 else 'worse'}"
            if name == "cpu_us":  # nginx's CPU is not sampled
                against = "- | -"
            else:
                nginx = med(body, "nginx", conns, name)
                against = f"{now / nginx:.3f} | {before / nginx:.3f}"
            print(f"| {body} | {label} | {now:,.3f} | {before:,.3f} | {against} | {ratio:.3f} | "
                  f"{paired:.3f} | {verdict} |")
    now_rss = max(r["rss"] for k, rs in rows.items() if k[1] == "peel" and k[2] == CONNS for r in rs)
    base_rss = max(r["rss"] for k, rs in rows.items() if k[1] == BASE and k[2] == CONNS for r in rs)
    print(f"\npeak RSS under load, all processes: peel {now_rss:.1f} MiB, {BASE} {base_rss:.1f} MiB "
          f"(peel / {BASE} {now_rss / base_rss:.3f})")


TlsRows = dict[tuple[str, str, str], list[dict[str, float]]]


def measure_tls(bench: Bench, pids: dict[str, int], bodies: list[str], reps: int, seconds: int,
                clients: int) -> TlsRows:
    """--tls: rows keyed (target, "https", body) for wrk over HTTPS and (target, version, mode) for
    s_time; nginx and the Peels in turn within each round, like the plain runs."""
    rows: TlsRows = {}
    targets = [t for t in bench.targets if t != "direct"]  # the origin speaks plain HTTP
    handshake_seconds = max(1, seconds // 2)
    for body in bodies:
        for target in targets:  # warm-up: connections, caches, the upstream pool
            wrk(bench.ports[target], PATHS[body], CONNS, 2, scheme="https")
    for rnd in range(reps):
        print(f"round {rnd + 1}/{reps} ...", file=sys.stderr, flush=True)
        for target in targets:
            port = bench.ports[target]
            for body in bodies:
                result = wrk(port, PATHS[body], CONNS, seconds, scheme="https")
                if target in pids:
                    result["rss"] = process_rss_mib(pids[target])[0]
                rows.setdefault((target, "https", body), []).append(result)
            for version in TLS_VERSIONS:
                for mode in HANDSHAKES:
                    rows.setdefault((target, version, mode), []).append(
                        s_time(port, version, mode, handshake_seconds, clients))
    return rows


def report_tls(rows: TlsRows, bodies: list[str], reps: int, seconds: int, workers: int, clients: int,
               baseline: Path | None = None) -> None:
    targets = ("nginx", "peel") + ((BASE,) if baseline is not None else ())

    def med(key: tuple[str, str, str], name: str) -> float:
        return statistics.median(r[name] for r in rows[key])

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    base = f" and {BASE} ({baseline})" if baseline is not None else ""
    print(f"\n### HTTPS: Peel ({workers} worker{'s' if workers > 1 else ''}){base} vs nginx (1 worker), "
          f"the same ECDSA P-256 certificate, TLS 1.2 + 1.3, session tickets on: {reps} interleaved "
          f"rounds, {os.cpu_count()} cores\n")
    print(f"wrk -t1 -c{CONNS}, {seconds} s, keep-alive (steady-state HTTPS, TLS 1.3):\n")
    print(f"| body | target | req/s c{CONNS} | p50 ms | p99 ms | errors | RSS MiB | x nginx |")
    print("|---|---|---|---|---|---|---|---|")
    for body in bodies:
        for target in targets:
            key = (target, "https", body)
            rps = med(key, "rps")
            errors = sum(r["errors"] for r in rows[key])
            mem = f"{max(r['rss'] for r in rows[key]):.1f}" if target != "nginx" else "-"
            print(f"| {body} | {target} | {rps:,.0f} | {med(key, 'p50'):.3f} | {med(key, 'p99'):.3f} | "
                  f"{errors:.0f} | {mem} | {rps / med(('nginx', 'https', body), 'rps'):.3f} |")
    print(f"\nHandshakes a second, {clients} openssl s_time clients at once, {max(1, seconds // 2)} s each "
          "(TLS 1.2: the handshake alone; TLS 1.3: the handshake and one GET / answered 200, as 1.3's "
          "tickets come after the handshake):\n")
    print("| TLS | target | full hs/s | x nginx | resumed hs/s | x nginx | resumed % | failed clients |")
    print("|---|---|---|---|---|---|---|---|")
    for version in TLS_VERSIONS:
        for target in targets:
            full, again = med((target, version, "new"), "hps"), med((target, version, "reuse"), "hps")
            share = min(r["resumed"] for r in rows[(target, version, "reuse")]) * 100
            failed = sum(r["errors"] for mode in HANDSHAKES for r in rows[(target, version, mode)])
            nginx_full = med(("nginx", version, "new"), "hps")
            nginx_again = med(("nginx", version, "reuse"), "hps")
            print(f"| {version} | {target} | {full:,.0f} | {full / nginx_full:.3f} | {again:,.0f} | "
                  f"{again / nginx_again:.3f} | {share:.1f} | {failed:.0f} |")
    print()
    for body in bodies:
        ratio = med(("peel", "https", body), "rps") / med(("nginx", "https", body), "rps") / workers
        print(f"{body}: HTTPS throughput per worker {ratio:.3f} x nginx (aim ≥ {TARGET_HTTPS_THROUGHPUT}: "
              f"{verdict(ratio >= TARGET_HTTPS_THROUGHPUT)})")
    shares = {v: min(r["resumed"] for r in rows[("peel", v, "reuse")]) for v in TLS_VERSIONS}
    print("peel session resumption: " + ", ".join(f"TLS {v} {shares[v] * 100:.1f}% of -reuse connections "
                                                   "resumed" for v in TLS_VERSIONS)
          + f" (on: {verdict(all(x >= 0.99 for x in shares.values()))}); handshakes a second x nginx: "
          + ", ".join(f"TLS {v} full {med(('peel', v, 'new'), 'hps') / med(('nginx', v, 'new'), 'hps'):.3f}"
                      f" resumed {med(('peel', v, 'reuse'), 'hps') / med(('nginx', v, 'reuse'), 'hps'):.3f}"
                      for v in TLS_VERSIONS))
    for target in targets:
        errors = sum(r["errors"] for k, rs in rows.items() if k[0] == target for r in rs)
        if errors:
            print(f"{target} errors during the run: {errors:.0f} (non-2xx answers, socket errors, failed "
                  "s_time clients)")


def run_match() -> int:
    script = ROOT / "bench" / "match.py"
    if not script.exists():
        print("\n(bench/match.py is not there yet: no match-cost figures)")
        return 0
    print("\n### match cost against table size (bench/match.py --quick)\n", flush=True)
    return subprocess.run([sys.executable, str(script), "--quick"], check=False).returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=8, help="wrk duration of each c50 run (default 8)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds; medians are quoted (default 3)")
    ap.add_argument("--workers", type=int, default=1, help="peel serve workers (default 1)")
    ap.add_argument("--bodies", default="hello,16k", help="hello (5 B) and/or 16k (default both)")
    ap.add_argument("--no-match", action="store_true", help="skip bench/match.py")
    ap.add_argument("--telemetry", choices=("on", "off", "tracing", "metrics", "unsampled"), default="on",
                    help="on (default): tracing at its default sampling, exporting OTLP/HTTP to a "
                         "sink, and metrics; off: both disabled, to measure their cost; tracing or "
                         "metrics: only that one; unsampled: both, with sample_ratio = 0 (what the "
                         "sampled requests cost)")
    ap.add_argument("--paced", type=int, default=PACED_RATE, metavar="REQ_PER_S",
                    help=f"offered load of the fixed-load runs, where p99 is compared (default "
                         f"{PACED_RATE}; 0 skips them)")
    ap.add_argument("--tls", action="store_true",
                    help="measure HTTPS instead: nginx and Peel with the same test certificate; HTTPS "
                         "throughput (wrk) and full and resumed handshakes a second (openssl s_time), "
                         "TLS 1.2 and 1.3 (--paced does not apply)")
    ap.add_argument("--tls-clients", type=int, default=4, metavar="N",
                    help="--tls: openssl s_time processes run at once for the handshake rates (default 4)")
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help=f"another checkout of Peel (e.g. a git worktree of an older commit), run as a "
                         f"fourth target, {BASE}, with the same settings, interleaved, and compared")
    ap.add_argument("--profile", type=Path, metavar="FILE",
                    help="instead of the runs, sample peel with py-spy during one c50 run per body: "
                         "folded stacks to FILE (FILE.16k for 16k), a summary by layer printed "
                         "(bench/profile.py)")
    ap.add_argument("--perf", type=Path, metavar="FILE",
                    help="instead of the runs, sample peel with perf during one c50 run per body: "
                         "perf data to FILE (FILE.16k for 16k), a summary by compiled function "
                         "printed (bench/perf.py)")
    ap.add_argument("--browser", action="store_true",
                    help="every request carries a browser's head (ten more field lines, "
                         "BROWSER_HEADERS) instead of wrk's Host line alone")
    ap.add_argument("--floor", action="store_true",
                    help="add a fifth target, relay: bench/relay.py, a raw byte relay on uvloop (what "
                         "any Python forwarder pays), measured in the same rounds")
    ap.add_argument("--routes", type=int, default=1, metavar="N",
                    help="routes in the Peels' stores (default 1: only the catch-all)")
    ap.add_argument("--changes", action="store_true",
                    help="measure instead whether one-route changes (PUT and peel apply) stall the "
                         "--routes table at a fixed load (bench/changes.py)")
    ap.add_argument("--changes-rate", type=int, default=CHANGE_RATE, metavar="REQ_PER_S",
                    help=f"--changes: the fixed offered load (default {CHANGE_RATE})")
    args = ap.parse_args(argv)
    stop_on_sigterm()
    bodies = [b for b in args.bodies.split(",") if b]
    headers = BROWSER_HEADERS if args.browser else ()
    unknown = [b for b in bodies if b not in PATHS]
    if unknown or not bodies:
        ap.error(f"--bodies takes hello and/or 16k, not {args.bodies!r}")
    if args.seconds < 1 or args.reps < 1 or args.workers < 1:
        ap.error("--seconds, --reps and --workers must be at least 1")
    if args.tls_clients < 1:
        ap.error("--tls-clients must be at least 1")
    if args.routes < 1 or args.changes_rate < 1:
        ap.error("--routes and --changes-rate must be at least 1")
    if args.changes and (args.tls or args.baseline is not None):
        ap.error("--changes measures one Peel over plain HTTP: not with --tls or --baseline")
    if args.profile is not None and args.perf is not None:
        ap.error("--profile and --perf each sample peel: one at a time")
    if args.floor and (args.tls or args.changes or args.profile is not None or args.perf is not None):
        ap.error("--floor adds a plain-HTTP target to the comparison: not with --tls, --changes, "
                 "--profile or --perf")
    if args.browser and (args.tls or args.changes):
        ap.error("--browser applies to the plain-HTTP comparison and --profile/--perf: not with "
                 "--tls or --changes")
    if args.paced < 0:
        ap.error("--paced must be a rate in requests a second, or 0")
    baseline: Path | None = args.baseline.resolve() if args.baseline is not None else None
    packages = ("gateway", "routes")
    if baseline is not None and not all((baseline / pkg / "__init__.py").is_file() for pkg in packages):
        ap.error(f"--baseline {args.baseline}: not a checkout of Peel (no gateway/ and routes/ packages)")

    d = Path(tempfile.mkdtemp(prefix="peel-bench-"))
    os.chmod(d, 0o755)  # nginx workers run as an unprivileged user and must read 16k.txt
    bench = Bench(d, args.workers, telemetry=args.telemetry, baseline=baseline, routes=args.routes,
                  floor=args.floor)
    keep_logs = False
    try:
        if baseline is not None:
            check_baseline(baseline)
        need("nginx")
        need("wrk")
        if args.perf is not None:
            need("perf", "linux-perf")
        if args.tls:
            need("openssl")
            bench.tls = make_certs(d)
        bench.start_nginx()
        print("peel serve runs as deploy/vm/peel.service runs it: "
              + " ".join(f"{k}={v}" for k, v in service_environment().items()), flush=True)
        pids = {name: bench.start_peel(name).pid for name in bench.targets if name in ("peel", BASE)}
        if bench.floor:
            pids[FLOOR] = bench.start_relay().pid
        for name in pids:
            for body in bodies:
                got = fetch(bench.ports[name], PATHS[body], bench.tls)
                if got is None or len(got) != SIZES[body]:
                    raise BenchError(f"{name} answered {PATHS[body]} with "
                                     f"{None if got is None else len(got)} bytes, not {SIZES[body]}")
        if args.changes:
            bench.start_peel(CONTROL)
            change_rows = measure_changes(bench, pids["peel"], args.reps, args.seconds, args.changes_rate)
            report_changes(change_rows, args.routes, args.reps, args.seconds, args.changes_rate)
            return 0
        sampled = args.profile if args.profile is not None else args.perf
        if sampled is not None:
            sampler = profile.record if args.profile is not None else perf.record
            for body in bodies:
                wrk(bench.ports["peel"], PATHS[body], CONNS, 2, headers=headers)  # warm-up
                out = sampled if body == bodies[0] else sampled.with_name(f"{sampled.name}.{body}")
                print(f"-- {body}: wrk -t1 -c{CONNS} {args.seconds} s, sampled into {out}")
                load = functools.partial(wrk, bench.ports["peel"], PATHS[body], CONNS, args.seconds,
                                         headers=headers)
                print(sampler(pids["peel"], out, args.seconds, lambda load=load: print(load())))
            return 0
        if bench.tls is not None:
            served = {name: served_certificate(bench.ports[name], bench.tls) for name in ("nginx", *pids)}
            if len(set(served.values())) != 1:
                raise BenchError("nginx and Peel do not serve the same certificate")
            tls_rows = measure_tls(bench, pids, bodies, args.reps, args.seconds, args.tls_clients)
            report_tls(tls_rows, bodies, args.reps, args.seconds, args.workers, args.tls_clients, baseline)
        else:
            if headers:
                print(f"every request carries a browser's head: Host and {len(headers)} more field "
                      "lines (--browser)", flush=True)
            rows, rss = measure(bench, pids, bodies, args.reps, args.seconds, args.paced, headers)
            report(rows, rss, bodies, args.reps, args.seconds, args.workers, args.paced, bench.targets,
                   baseline)
    except (BenchError, subprocess.CalledProcessError) as exc:
        keep_logs = True
        print(f"bench: {exc} (logs kept in {d})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        bench.stop()
        if not keep_logs:
            shutil.rmtree(d, ignore_errors=True)
    return 0 if args.no_match else run_match()

if __name__ == "__main__":
    sys.exit(main())
