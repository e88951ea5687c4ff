"""The added latency of the local east-west hop (issue 14's benchmark), against a direct call and
against nginx doing the same two hops, in one run.

    .venv/bin/python bench/eastwest.py [--rate 1000] [--seconds 8] [--reps 3]

The "app" is nginx answering "hello" (bench/run.py's origin). Each round runs a paced `wrk -t1 -c50`
at `--rate` req/s (bench/run.py's pacing: each connection a Poisson source) against each target in
turn, targets interleaved so machine drift hits them alike:

- direct: wrk -> app;
- nginx: wrk -> nginx (hop 1) -> nginx (hop 2) -> app, plain HTTP between the hops (keep-alive);
- nginx mTLS: the same, hop 1 -> hop 2 over mutual TLS with the Peel CA's certificates (session
  reuse, keep-alive);
- peel: wrk -> sidecar A's outbound listener (Host: orders-plain) -> sidecar B2's inbound listener
  (permissive), plain HTTP between them -> app;
- peel mTLS: wrk -> sidecar A's outbound listener (Host: orders) -> sidecar B's inbound listener
  (strict: mTLS, authorization by identity) -> app.

Three `peel serve --role sidecar` processes on loopback, one SQLite store, identities issued by a
test CA (what `peel join` leaves); access log on, tracing at its default sampling exported to a sink
on the app, metrics on, as bench/run.py runs Peel. nginx has one worker per hop; nginx's hop 1 does
not check hop 2's certificate name (nginx checks DNS names, the certificate holds a SPIFFE URI), so it
does less than Peel, which checks the peer's identity.

Prints the medians over `--reps` rounds of p50/p90/p99 and the added p50/p99 over the direct call. It
reports, never asserts: the figures go into bench/README.md and docs/east-west.md. Every process is
stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import NGINX_ORIGIN, free_port, pacing_script, stop_on_sigterm, wait_until, wrk
from gateway.identity.ca import CertificateAuthority
from routes.model import Document
from routes.store import Store
from tests.sockets.test_mtls import write_identity

TD = "peel.internal"
TARGETS = ("direct", "nginx", "nginx mTLS", "peel", "peel mTLS")
NGINX_HOPS = """worker_processes 1; daemon off; pid {d}/hops.pid; error_log {d}/hops.err warn;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path {d}/hb; proxy_temp_path {d}/hp; fastcgi_temp_path {d}/hf;
  uwsgi_temp_path {d}/hu; scgi_temp_path {d}/hs;
  upstream app {{ server 127.0.0.1:{app}; keepalive 64; }}
  upstream hop2 {{ server 127.0.0.1:{hop2}; keepalive 64; }}
  upstream hop2tls {{ server 127.0.0.1:{hop2tls}; keepalive 64; }}
  server {{ listen 127.0.0.1:{hop1} backlog=4096;
    location / {{ proxy_pass http://hop2; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host $host; }} }}
  server {{ listen 127.0.0.1:{hop1tls} backlog=4096;
    location / {{ proxy_pass https://hop2tls; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host $host;
      proxy_ssl_certificate {client}/cert.pem; proxy_ssl_certificate_key {client}/key.pem;
      proxy_ssl_session_reuse on; }} }}
  server {{ listen 127.0.0.1:{hop2} backlog=4096;
    location / {{ proxy_pass http://app; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host $host; }} }}
  server {{ listen 127.0.0.1:{hop2tls} ssl backlog=4096;
    ssl_certificate {server}/cert.pem; ssl_certificate_key {server}/key.pem;
    ssl_client_certificate {server}/bundle.pem; ssl_verify_client on; ssl_verify_depth 3;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;
    location / {{ proxy_pass http://app; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host $host; }} }} }}
"""


def answers(port: int, host: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host})
        response = conn.getresponse()
        return response.status == 200 and response.read() == b"hello"
    except OSError:
        return False
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=1000, help="offered load, req/s (default 1000)")
    ap.add_argument("--seconds", type=int, default=8, help="per run (default 8)")
    ap.add_argument("--reps", type=int, default=3, help="rounds (default 3)")
    args = ap.parse_args(argv)
    stop_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="peel-bench-eastwest-"))
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], log: str, env: dict[str, str] | None = None) -> None:
        with open(work / log, "wb") as out:
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, env=env, start_new_session=True))

    try:
        ca, _ = CertificateAuthority.init(work / "ca", TD, now=datetime.now(UTC))
        ids = {name: write_identity(ca, work / name / "identity", name)
               for name in ("client", "orders", "orders-plain")}
        app, hop1, hop2, hop1tls, hop2tls = (free_port() for _ in range(5))
        (work / "16k.txt").write_text("x" * 16384)
        (work / "origin.conf").write_text(NGINX_ORIGIN.format(d=work, port=app))
        (work / "hops.conf").write_text(NGINX_HOPS.format(
            d=work, app=app, hop1=hop1, hop2=hop2, hop1tls=hop1tls, hop2tls=hop2tls,
            client=ids["client"].directory, server=ids["orders"].directory))
        for name in ("origin", "hops"):
            spawn(["nginx", "-c", str(work / f"{name}.conf")], f"{name}.log")

        outbound, inbound, inbound_plain = free_port(), free_port(), free_port()
        url = f"sqlite:///{work / 'peel.db'}"
        store = Store(url)
        try:
            store.upgrade()
            store.commit(Document.parse({
                "services": [
                    {"name": "orders", "endpoints": [f"https://127.0.0.1:{inbound}"],
                     "identity": f"spiffe://{TD}/svc/orders"},
                    {"name": "orders-plain", "endpoints": [f"http://127.0.0.1:{inbound_plain}"]}],
                "routes": [{"name": "orders", "match": {"hosts": ["orders"]}, "service": "orders",
                            "authorization": {"allow_from": ["client"]}}]}),
                actor="bench", reason="bench: east-west")
        finally:
            store.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
        sidecars = {
            "client": f'[listeners.outbound]\nbind = "127.0.0.1:{outbound}"\n',
            "orders": (f'[listeners.outbound]\nenabled = false\n[listeners.inbound]\n'
                       f'bind = "127.0.0.1:{inbound}"\nmtls = "strict"\napp = "http://127.0.0.1:{app}"\n'),
            "orders-plain": (f'[listeners.outbound]\nenabled = false\n[listeners.inbound]\n'
                             f'bind = "127.0.0.1:{inbound_plain}"\nmtls = "permissive"\n'
                             f'app = "http://127.0.0.1:{app}"\n'),
        }
        for name, listeners in sidecars.items():
            config = work / name / "peel.toml"
            config.write_text(
                f'[database]\nurl = "{url}"\n[server]\nrole = "sidecar"\n'
                f'snapshot_path = "{work / name / "snapshot.json"}"\nrun_dir = "{work / name / "run"}"\n'
                f'{listeners}[identity]\nstate_dir = "{ids[name].directory}"\n'
                f'[access_log]\ntarget = "{work / name / "access.log"}"\n'
                f'[tracing]\nendpoint = "http://127.0.0.1:{app}/v1/traces"\n')
            spawn([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)], f"{name}.log",
                  env=env)

        ports = {"direct": (app, "app"), "nginx": (hop1, "orders"), "nginx mTLS": (hop1tls, "orders"),
                 "peel": (outbound, "orders-plain"), "peel mTLS": (outbound, "orders")}
        for target, (port, host) in ports.items():
            wait_until(f"{target} answering", lambda p=port, h=host: answers(p, h), 60, procs)  # type: ignore[misc]
        paced = pacing_script(work, args.rate, 50)
        scripts = {}
        for target, (_, host) in ports.items():
            scripts[target] = work / f"{target.replace(' ', '-')}.lua"
            scripts[target].write_text(paced.read_text() + f'wrk.headers["Host"] = "{host}"\n')
        for target, (port, _) in ports.items():  # warm up: connections, pools, sessions
            wrk(port, "/", 50, 2, script=scripts[target])
        rows: dict[str, list[dict[str, float]]] = {t: [] for t in TARGETS}
        for _ in range(args.reps):
            for target in TARGETS:
                rows[target].append(wrk(ports[target][0], "/", 50, args.seconds, script=scripts[target]))
        print(f"\npaced wrk -t1 -c50 at {args.rate} req/s, {args.seconds} s x {args.reps} rounds; medians "
              f"(ms); added = minus direct:\n")
        print(f"{'target':11} {'req/s':>7} {'p50':>7} {'p90':>7} {'p99':>7} {'added p50':>10} "
              f"{'added p99':>10} {'errors':>7}")
        direct = {k: statistics.median(r[k] for r in rows["direct"]) for k in ("p50", "p99")}
        for target in TARGETS:
            med = {k: statistics.median(r[k] for r in rows[target]) for k in ("rps", "p50", "p90", "p99")}
            errors = sum(r["errors"] for r in rows[target])
            print(f"{target:11} {med['rps']:7.0f} {med['p50']:7.2f} {med['p90']:7.2f} {med['p99']:7.2f} "
                  f"{med['p50'] - direct['p50']:10.2f} {med['p99'] - direct['p99']:10.2f} {errors:7.0f}")
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        print(f"\nlogs: {work}")


if __name__ == "__main__":
    sys.exit(main())
