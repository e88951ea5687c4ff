#!/usr/bin/env python3
"""`make bench`: Peel against nginx (1 worker) and the bare origin, on this machine, in one run.

    python bench/run.py [--seconds 8] [--reps 3] [--workers 1] [--bodies hello,16k] [--no-match]
                        [--telemetry on|off|tracing|metrics] [--paced 4000]

Starts an nginx origin ("hello", 5 bytes, at `/`; 16 KiB at `/16k`), nginx with one worker as the
reference proxy, and `peel serve` with `--workers` workers (temp dir: settings, an upgraded SQLite
store holding one route `/` → the origin, access log on to a file, tracing at its default sampling
exporting to a sink on the origin and metrics on, as DESIGN.md asks; `--telemetry off` turns
tracing and metrics off to measure what they cost). Then `wrk -t1` at 1 and 50
connections, and at 50 connections paced to a fixed offered load (`--paced`, where p99 is compared
with nginx's), against each target, targets interleaved within each round so machine drift hits them
alike, and prints the medians of `--reps` rounds with the ratios to nginx and to the direct origin,
then the headline figures against DESIGN.md's targets. Finally `bench/match.py --quick` (match time
against table size) when it exists. See bench/README.md for how to read the output.

Needs nginx and wrk: installed with apt-get when missing and running as root. Every process this
script starts is stopped by its PID (its process group) at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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
# DESIGN.md's performance targets, per worker, as ratios in one run.
TARGET_THROUGHPUT = 0.25
TARGET_ADDED_P50_MS = 0.2
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


class BenchError(Exception):
    """The benchmark cannot run or its result would be meaningless; the message says why."""


def need(tool: str) -> None:
    """Make sure `tool` is on PATH, installing its Debian package when root."""
    if shutil.which(tool):
        return
    if os.geteuid() != 0:
        raise BenchError(f"{tool} is missing; install it (Debian: apt-get install {tool}) or run as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", tool]
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=False).returncode != 0:
        # A fresh machine has no package lists yet.
        subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL, check=True)
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
    if not shutil.which(tool):
        raise BenchError(f"apt-get installed no {tool}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fetch(port: int, path: str) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            body: bytes = r.read()
            return body
    except OSError:
        return None


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


def wrk(port: int, path: str, conns: int, seconds: int, *, script: Path | None = None) -> dict[str, float]:
    """One wrk run; `script` a Lua file (the pacing one for a fixed offered load)."""
    extra = ["-s", str(script)] if script is not None else []
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", *extra,
                          f"http://127.0.0.1:{port}{path}"],
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
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50": ms("50%"), "p90": ms("90%"),
            "p99": ms("99%"), "errors": float(errors)}


def pacing_script(directory: Path, rate: int, conns: int) -> Path:
    """A wrk script offering `rate` requests a second over `conns` connections: wrk's `delay()`
    waits before each request, drawn from an exponential distribution (each connection a Poisson
    source of `rate / conns`), so the connections do not fall into step and send in bursts.
    Latency is timed from the send, without the wait."""
    path = directory / "paced.lua"
    path.write_text(f"math.randomseed(os.time())\nlocal mean = {1000 * conns / rate:.3f}\n"
                    "function delay()\n  return math.floor(-mean * math.log(1 - math.random()) + 0.5)\nend\n")
    return path


def process_rss_mib(pid: int) -> tuple[float, float]:
    """(total, largest single process) RSS of `pid` and its descendants, in MiB."""
    pids, todo = set(), [pid]
    while todo:
        p = todo.pop()
        pids.add(p)
        with contextlib.suppress(OSError):  # the process may have exited meanwhile
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    sizes = []
    for p in pids:
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
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    def spawn(self, argv: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.dir / log, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env)
        self.procs.append(proc)
        return proc

    def start_nginx(self) -> None:
        self.ports["direct"], self.ports["nginx"] = free_port(), free_port()
        (self.dir / "16k.txt").write_text("x" * 16384)
        (self.dir / "origin.conf").write_text(NGINX_ORIGIN.format(d=self.dir, port=self.ports["direct"]))
        (self.dir / "proxy.conf").write_text(NGINX_PROXY.format(d=self.dir, port=self.ports["nginx"],
                                                                origin=self.ports["direct"]))
        for name in ("origin", "proxy"):
            self.spawn(["nginx", "-c", str(self.dir / f"{name}.conf")], f"{name}.log")
        for target in ("direct", "nginx"):
            wait_until(f"nginx ({target}) answering", self.answers(self.ports[target]), 15, self.procs)

    def start_peel(self) -> subprocess.Popen[bytes]:
        self.ports["peel"], admin = free_port(), free_port()
        url = f"sqlite:///{self.dir / 'peel.db'}"
        config = self.dir / "peel.toml"
        config.write_text(
            f'[database]\nurl = "{url}"\n\n'
            f'[listeners.public]\nbind = "127.0.0.1:{self.ports["peel"]}"\n\n'
            f'[listeners.admin]\nbind = "127.0.0.1:{admin}"\n\n'
            f'[server]\nworkers = {self.workers}\ngrace_period = 2.0\n'
            f'snapshot_path = "{self.dir / "snapshot.json"}"\nrun_dir = "{self.dir / "run"}"\n\n'
            f'[access_log]\ntarget = "{self.dir / "access.log"}"\n\n'
            + (f'[tracing]\nendpoint = "http://127.0.0.1:{self.ports["direct"]}/v1/traces"\n'
               if self.telemetry in ("on", "tracing") else '[tracing]\nenabled = false\n')
            + ('' if self.telemetry in ("on", "metrics") else '[metrics]\nenabled = false\n'))
        store = Store(url)
        try:
            store.upgrade()
            document = Document.parse({
                "services": [{"name": "origin", "endpoints": [f"http://127.0.0.1:{self.ports['direct']}"]}],
                "routes": [{"name": "all", "match": {"path_prefix": "/"}, "service": "origin"}]})
            store.commit(document, actor="bench", reason="bench: everything to the origin")
        finally:
            store.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
        peel = self.spawn([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                          "peel.log", env=env)
        wait_until("peel serve answering / from the origin", self.answers(self.ports["peel"]), 60,
                   self.procs)
        return peel

    @staticmethod
    def answers(port: int) -> Callable[[], bool]:
        return lambda: fetch(port, "/") == b"hello"

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


def measure(bench: Bench, peel_pid: int, bodies: list[str], reps: int, seconds: int, paced: int
            ) -> tuple[dict[tuple[str, str, int], list[dict[str, float]]], list[tuple[float, float]]]:
    """Rows keyed (body, target, connections), and (body, target, PACED) for the fixed-load runs."""
    rows: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    script = pacing_script(bench.dir, paced, CONNS) if paced else None
    rss: list[tuple[float, float]] = []
    for body in bodies:
        for target in TARGETS:  # warm-up: connections, caches, the upstream pool
            wrk(bench.ports[target], PATHS[body], CONNS, 2)
    for rnd in range(reps):
        print(f"round {rnd + 1}/{reps} ...", file=sys.stderr, flush=True)
        for body in bodies:
            for target in TARGETS:
                result = wrk(bench.ports[target], PATHS[body], CONNS, seconds)
                if target == "peel":
                    sample = process_rss_mib(peel_pid)
                    result["rss"] = sample[0]
                    rss.append(sample)
                rows.setdefault((body, target, CONNS), []).append(result)
                rows.setdefault((body, target, 1), []).append(
                    wrk(bench.ports[target], PATHS[body], 1, max(3, seconds // 2)))
                if script is not None:
                    rows.setdefault((body, target, PACED), []).append(
                        wrk(bench.ports[target], PATHS[body], CONNS, max(3, seconds // 2), script=script))
    return rows, rss


def report(rows: dict[tuple[str, str, int], list[dict[str, float]]], rss: list[tuple[float, float]],
           bodies: list[str], reps: int, seconds: int, workers: int, paced: int) -> None:
    def med(key: tuple[str, str, int], name: str) -> float:
        return statistics.median(r[name] for r in rows[key])

    print(f"\n### Peel ({workers} worker{'s' if workers > 1 else ''}) vs nginx (1 worker) vs direct: "
          f"{reps} interleaved rounds, wrk -t1, {seconds} s each, {os.cpu_count()} cores\n")
    print(f"| body | target | req/s c{CONNS} | p50 ms | p99 ms | errors | c1 p50 ms | c1 p99 ms | "
          "RSS MiB | x nginx | x direct |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for body in bodies:
        for target in TARGETS:
            key, c1 = (body, target, CONNS), (body, target, 1)
            rps = med(key, "rps")
            errors = sum(r["errors"] for k in (key, c1, (body, target, PACED)) for r in rows.get(k, []))
            mem = f"{max(r['rss'] for r in rows[key]):.1f}" if target == "peel" else "-"
            print(f"| {body} | {target} | {rps:,.0f} | {med(key, 'p50'):.3f} | {med(key, 'p99'):.3f} | "
                  f"{errors:.0f} | {med(c1, 'p50'):.3f} | {med(c1, 'p99'):.3f} | {mem} | "
                  f"{rps / med((body, 'nginx', CONNS), 'rps'):.3f} | "
                  f"{rps / med((body, 'direct', CONNS), 'rps'):.3f} |")
    if paced:
        print(f"\nAt a fixed offered load of {paced:,} req/s (wrk -c{CONNS}, each connection paced):\n")
        print("| body | target | req/s | p50 ms | p90 ms | p99 ms |")
        print("|---|---|---|---|---|---|")
        for body in bodies:
            for target in TARGETS:
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
        print(f"{body}: throughput per worker {ratio:.3f} x nginx (target ≥ {TARGET_THROUGHPUT}: "
              f"{verdict(ratio >= TARGET_THROUGHPUT)}); added c1 p50 over direct {added:.3f} ms "
              f"(target ≤ {TARGET_ADDED_P50_MS}: {verdict(added <= TARGET_ADDED_P50_MS)}); {tail}")
    if rss:
        total = max(t for t, _ in rss)
        largest = max(one for _, one in rss)
        print(f"peel peak RSS under load: {total:.1f} MiB in all processes, {largest:.1f} MiB in the "
              f"largest (target ≤ {TARGET_RSS_MIB:.0f} per worker: {verdict(largest <= TARGET_RSS_MIB)})")
    errors = sum(r["errors"] for k, rs in rows.items() if k[1] == "peel" for r in rs)
    if errors:
        print(f"peel errors during the run: {errors:.0f} (non-2xx answers and socket errors)")


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
    ap.add_argument("--telemetry", choices=("on", "off", "tracing", "metrics"), default="on",
                    help="on (default): tracing at its default sampling, exporting OTLP/HTTP to a "
                         "sink, and metrics; off: both disabled, to measure their cost; tracing or "
                         "metrics: only that one")
    ap.add_argument("--paced", type=int, default=PACED_RATE, metavar="REQ_PER_S",
                    help=f"offered load of the fixed-load runs, where p99 is compared (default "
                         f"{PACED_RATE}; 0 skips them)")
    args = ap.parse_args(argv)
    bodies = [b for b in args.bodies.split(",") if b]
    unknown = [b for b in bodies if b not in PATHS]
    if unknown or not bodies:
        ap.error(f"--bodies takes hello and/or 16k, not {args.bodies!r}")
    if args.seconds < 1 or args.reps < 1 or args.workers < 1:
        ap.error("--seconds, --reps and --workers must be at least 1")
    if args.paced < 0:
        ap.error("--paced must be a rate in requests a second, or 0")

    d = Path(tempfile.mkdtemp(prefix="peel-bench-"))
    os.chmod(d, 0o755)  # nginx workers run as an unprivileged user and must read 16k.txt
    bench = Bench(d, args.workers, telemetry=args.telemetry)
    keep_logs = False
    try:
        need("nginx")
        need("wrk")
        bench.start_nginx()
        peel = bench.start_peel()
        for body in bodies:
            got = fetch(bench.ports["peel"], PATHS[body])
            if got is None or len(got) != SIZES[body]:
                raise BenchError(f"peel answered {PATHS[body]} with {None if got is None else len(got)} "
                                 f"bytes, not {SIZES[body]}")
        rows, rss = measure(bench, peel.pid, bodies, args.reps, args.seconds, args.paced)
        report(rows, rss, bodies, args.reps, args.seconds, args.workers, args.paced)
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
