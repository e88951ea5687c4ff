"""The primary's latency with and without a shadow: `peel serve` (one worker) in front of nginx.

    .venv/bin/python bench/shadow.py [--rate 1000] [--seconds 8] [--reps 3] [--percent 20]

Three routes of one migration each, `from` and `to` both nginx answering a 200-byte JSON body:

| route | what it measures |
|---|---|
| `/legacy` | stage legacy: `from` answers, no copy (the baseline) |
| `/shadow` | stage shadow at `--percent`: `from` answers, a copy goes to a healthy `to` and is compared |
| `/hanging` | stage shadow at `--percent` to a `to` that accepts connections and never answers |

Each round runs a paced `wrk -t1 -c50` at `--rate` req/s (`bench/run.py`'s pacing: each connection a
Poisson source) against each route in turn; the table shows the medians over `--reps` rounds and
the shadow counts the admin API reports. It reports, never asserts: the figures go into
docs/verification.md. Every process is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import fetch, free_port, pacing_script, stop_on_sigterm, wait_until, wrk
from routes.model import Document
from routes.store import Store

BODY = json.dumps({"id": 1234, "name": "widget", "price": 10.5, "currency": "EUR",
                   "tags": ["a", "b", "c"], "stock": {"warehouse": "north", "count": 17},
                   "description": "x" * 60})
NGINX = """worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/nginx.err warn;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path {d}/ob; proxy_temp_path {d}/op; fastcgi_temp_path {d}/of;
  uwsgi_temp_path {d}/ou; scgi_temp_path {d}/os;
  server {{ listen 127.0.0.1:{from_port} backlog=4096; listen 127.0.0.1:{to_port} backlog=4096;
    location / {{ default_type application/json; return 200 '{body}'; }} }} }}
"""
ROUTES = ("legacy", "shadow", "hanging")


def document(from_port: int, to_port: int, hang_port: int, percent: float) -> dict[str, object]:
    services = [{"name": "from", "endpoints": [f"http://127.0.0.1:{from_port}"]},
                {"name": "to", "endpoints": [f"http://127.0.0.1:{to_port}"]},
                {"name": "hang", "endpoints": [f"http://127.0.0.1:{hang_port}"]}]
    shadow = {"percent": percent, "compare": {"ignore": {"paths": ["$.id"]}}}
    return {"services": services, "routes": [
        {"name": "legacy", "match": {"path_prefix": "/legacy"}, "service": "from",
         "migration": {"to": "to", "stage": "legacy"}},
        {"name": "shadow", "match": {"path_prefix": "/shadow"}, "service": "from",
         "migration": {"to": "to", "stage": "shadow", "shadow": shadow}},
        {"name": "hanging", "match": {"path_prefix": "/hanging"}, "service": "from",
         "migration": {"to": "hang", "stage": "shadow", "shadow": {**shadow, "timeout": "5s"}}},
    ]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=1000, help="offered load, req/s (default 1000)")
    ap.add_argument("--seconds", type=int, default=8, help="per run (default 8)")
    ap.add_argument("--reps", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--percent", type=float, default=20, help="shadow sampling (default 20)")
    args = ap.parse_args(argv)
    stop_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="peel-bench-shadow-"))
    procs: list[subprocess.Popen[bytes]] = []
    # `to` for /hanging: a listening socket nobody accepts on (connections wait in the backlog).
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(4096)
    try:
        from_port, to_port, port, admin = free_port(), free_port(), free_port(), free_port()
        (work / "nginx.conf").write_text(NGINX.format(d=work, from_port=from_port, to_port=to_port,
                                                      body=BODY))
        with open(work / "nginx.log", "wb") as out:
            procs.append(subprocess.Popen(["nginx", "-c", str(work / "nginx.conf")], stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        url = f"sqlite:///{work / 'peel.db'}"
        store = Store(url)
        try:
            store.upgrade()
            store.commit(Document.parse(document(from_port, to_port, hang.getsockname()[1],
                                                 args.percent)), actor="bench", reason="bench")
            token = store.create_token("bench")
        finally:
            store.close()
        (work / "peel.toml").write_text(
            f'[database]\nurl = "{url}"\n[listeners.public]\nbind = "127.0.0.1:{port}"\n'
            f'[listeners.admin]\nbind = "127.0.0.1:{admin}"\n'
            f'[server]\nworkers = 1\nsnapshot_path = "{work / "snapshot.json"}"\n'
            f'run_dir = "{work / "run"}"\n[access_log]\ntarget = "{work / "access.log"}"\n'
            '[tracing]\nenabled = false\n[facade]\ncounts_interval = 1.0\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
        with open(work / "peel.log", "wb") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config",
                                           str(work / "peel.toml")], stdout=out, stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True))
        wait_until("peel answering", lambda: fetch(port, "/legacy") == BODY.encode(), 60, procs)
        script = pacing_script(work, args.rate, 50)
        for route in ROUTES:  # warm up: connections, pools, lanes
            wrk(port, f"/{route}", 50, 2, script=script)
        rows: dict[str, list[dict[str, float]]] = {r: [] for r in ROUTES}
        for _ in range(args.reps):
            for route in ROUTES:
                rows[route].append(wrk(port, f"/{route}", 50, args.seconds, script=script))
        time.sleep(2.5)  # a report: let the last counts flush (a figure, not a synchronisation)
        print(f"\npaced wrk -t1 -c50 at {args.rate} req/s, {args.seconds} s x {args.reps} rounds, "
              f"shadow {args.percent:g} %; medians:\n")
        print(f"{'route':10} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>7}  shadow")
        for route in ROUTES:
            med = {k: statistics.median(r[k] for r in rows[route]) for k in ("rps", "p50", "p90", "p99")}
            errors = sum(r["errors"] for r in rows[route])
            request = urllib.request.Request(f"http://127.0.0.1:{admin}/api/v1/migrations/{route}/shadow",
                                             headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=10) as answer:
                s = json.load(answer)["shadow"]
            shadow = "-" if route == "legacy" else \
                (f"pairs {s['pairs']}, mismatched {s['mismatched']}, dropped {s['dropped']}, "
                 f"failed {s['failed']}")
            print(f"{route:10} {med['rps']:8.0f} {med['p50']:8.2f} {med['p90']:8.2f} {med['p99']:8.2f} "
                  f"{errors:7.0f}  {shadow}")
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        hang.close()
        print(f"\nlogs: {work}")


if __name__ == "__main__":
    sys.exit(main())
