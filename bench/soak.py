#!/usr/bin/env python3
"""`make soak`: Peel's memory over a long run under a varied load, against DESIGN.md's "no growth
over a 10-minute soak".

    python bench/soak.py [--minutes 10] [--workers 1] [--change-every 5] [--sample-every 5]

Starts the same processes as `make bench` (an nginx origin, `peel serve` with the access log,
tracing and metrics on; see bench/run.py), then runs one `wrk -t1 -c50` for the whole soak with a
script that varies every request: unique request ids and query strings, paths of many shapes, 1 KiB
POST bodies, 16 KiB answers, and one request in twenty carrying a sampled W3C trace context (so
spans are built and exported). Meanwhile a new config version is committed to the store every
`--change-every` seconds (a route added, edited or removed in turn), so route tables are swapped
under load all along, and `/metrics` is scraped every ten seconds.

Peel's resident memory (every process: the largest, and the total) is sampled every
`--sample-every` seconds. The first minute is warm-up (pools, caches, the allocator's arenas);
growth is the median of the last minute minus the median of the minute after warm-up, and the
slope a least-squares fit over everything after warm-up. The verdict is "no growth" when the growth
stays within GROWTH_ALLOWED_MIB: a leak of even one small object per request (several hundred
thousand requests a minute) shows far above it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import Bench, BenchError, need, process_rss_mib, stop_on_sigterm

from routes.model import Document
from routes.store import Store

GROWTH_ALLOWED_MIB = 1.0
WARM_UP = 60.0

SCRIPT = """
math.randomseed(os.time())
local n = 0
local body = string.rep("x", 1024)
local shapes = {"/", "/orders/%d", "/api/v1/items/%d/detail", "/static/app.%d.js", "/a/b/c/d/%d"}
local function hex(words)
  local out = {}
  for i = 1, words do out[i] = string.format("%08x", math.random(1, 0x7fffffff)) end
  return table.concat(out)
end
function request()
  n = n + 1
  local headers = {["X-Request-Id"] = "soak-" .. n}
  local kind = n % 20
  if kind == 0 then
    headers["traceparent"] = "00-" .. hex(4) .. "-" .. hex(2) .. "-01"
    return wrk.format("GET", "/?traced=" .. n, headers)
  elseif kind == 1 then
    headers["Content-Type"] = "application/octet-stream"
    return wrk.format("POST", "/upload?n=" .. n, headers, body)
  elseif kind == 2 then
    return wrk.format("GET", "/16k", headers)
  end
  local shape = shapes[(n % #shapes) + 1]
  return wrk.format("GET", string.format(shape, n) .. "?q=" .. n, headers)
end
"""


def documents(origin: str) -> list[Document]:
    """The config versions committed in turn: routes added, edited and removed."""
    base = {"services": [{"name": "origin", "endpoints": [origin]},
                         {"name": "spare", "endpoints": [origin]}]}
    catch_all = {"name": "all", "match": {"path_prefix": "/"}, "service": "origin"}
    variants = [
        [catch_all],
        [catch_all, {"name": "orders", "match": {"path_prefix": "/orders"}, "service": "spare"}],
        [catch_all, {"name": "orders", "match": {"path_prefix": "/orders"}, "service": "spare",
                     "rewrite": {"request_headers": {"set": {"x-soak": "1"}}}},
         {"name": "api", "match": {"path_prefix": "/api/v1"}, "service": "origin",
          "retries": {"attempts": 3}}],
        [catch_all, {"name": "api", "match": {"path_prefix": "/api/v1"}, "service": "spare"}],
    ]
    return [Document.parse({**base, "routes": routes}) for routes in variants]


class Changer(threading.Thread):
    """Commits the next document every `every` seconds until stopped."""

    def __init__(self, url: str, origin: str, every: float) -> None:
        super().__init__(name="soak-changer", daemon=True)
        self.url = url
        self.docs = documents(origin)
        self.every = every
        self.stop = threading.Event()
        self.committed = 0
        self.failed: list[str] = []

    def run(self) -> None:
        store = Store(self.url)
        try:
            while not self.stop.wait(self.every):
                try:
                    store.commit(self.docs[self.committed % len(self.docs)], actor="soak",
                                 reason=f"soak change {self.committed + 1}")
                    self.committed += 1
                except Exception as exc:  # reported at the end, never silently
                    self.failed.append(f"{type(exc).__name__}: {exc}")
        finally:
            store.close()


def scrape(admin_port: int, token: str) -> bool:
    request = urllib.request.Request(f"http://127.0.0.1:{admin_port}/metrics",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            answer.read()
            return bool(answer.status == 200)
    except OSError:
        return False


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB), in MiB a minute."""
    if len(samples) < 2:
        return 0.0
    xs, ys = [t for t, _ in samples], [m for _, m in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def admin_port_of(config: Path) -> int:
    text = config.read_text()
    section = text[text.index("[listeners.admin]"):]
    return int(section.split('bind = "127.0.0.1:', 1)[1].split('"', 1)[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    ap.add_argument("--workers", type=int, default=1, help="peel serve workers (default 1)")
    ap.add_argument("--change-every", type=float, default=5.0, metavar="SECONDS",
                    help="commit a new config version this often (default 5; 0: never)")
    ap.add_argument("--sample-every", type=float, default=5.0, metavar="SECONDS",
                    help="RSS sampling period (default 5)")
    args = ap.parse_args(argv)
    stop_on_sigterm()
    if args.minutes * 60 < 2 * WARM_UP + 60:
        ap.error(f"--minutes must leave a minute after {WARM_UP:.0f} s of warm-up and the first "
                 "measured minute (at least 3)")
    if args.workers < 1 or args.sample_every <= 0 or args.change_every < 0:
        ap.error("--workers must be at least 1, --sample-every positive, --change-every not negative")

    d = Path(tempfile.mkdtemp(prefix="peel-soak-"))
    d.chmod(0o755)
    bench = Bench(d, args.workers)
    changer: Changer | None = None
    try:
        need("nginx")
        need("wrk")
        bench.start_nginx()
        peel = bench.start_peel()
        url = f"sqlite:///{d / 'peel.db'}"
        store = Store(url)
        token = store.create_token("soak")
        store.close()
        admin = admin_port_of(d / "peel.toml")
        origin = f"http://127.0.0.1:{bench.ports['direct']}"
        script = d / "soak.lua"
        script.write_text(SCRIPT)
        seconds = int(args.minutes * 60)
        load = subprocess.Popen(["wrk", "-t1", "-c50", f"-d{seconds}s", "-s", str(script), "--latency",
                                 f"http://127.0.0.1:{bench.ports['peel']}/"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if args.change_every:
            changer = Changer(url, origin, args.change_every)
            changer.start()
        start = time.monotonic()
        samples: list[tuple[float, float, float]] = []  # (seconds, largest, total)
        scrapes = failed_scrapes = 0
        next_scrape = 0.0
        print(f"soak: {args.minutes:g} min, samples every {args.sample_every:g} s "
              f"(logs in {d})", file=sys.stderr, flush=True)
        while load.poll() is None:
            now = time.monotonic() - start
            total, largest = process_rss_mib(peel.pid)
            samples.append((now, largest, total))
            if now >= next_scrape:
                scrapes += 1
                failed_scrapes += not scrape(admin, token)
                next_scrape = now + 10.0
            if len(samples) % max(1, round(60 / args.sample_every)) == 0:
                print(f"  {now / 60:5.1f} min: {largest:6.1f} MiB largest, {total:6.1f} MiB total",
                      file=sys.stderr, flush=True)
            time.sleep(args.sample_every)
        out = load.communicate()[0]
        if changer is not None:
            changer.stop.set()
            changer.join(10)
        if load.returncode != 0:
            raise BenchError(f"wrk failed: {out[-500:]}")
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"soak: {exc} (logs kept in {d})", file=sys.stderr)
        return 1
    finally:
        if changer is not None:
            changer.stop.set()
        bench.stop()

    report(samples, out, changer, scrapes, failed_scrapes, args)
    return 0


def report(samples: list[tuple[float, float, float]], wrk_out: str, changer: Changer | None,
           scrapes: int, failed_scrapes: int, args: argparse.Namespace) -> None:
    measured = [(t, largest) for t, largest, _ in samples if t >= WARM_UP]
    end = measured[-1][0]
    first = [m for t, m in measured if t < WARM_UP + 60]
    last = [m for t, m in measured if t >= end - 60]
    growth = statistics.median(last) - statistics.median(first)
    slope = slope_per_minute(measured)
    requests = next((line.split()[0] for line in wrk_out.splitlines() if "requests in" in line), "?")
    rps = next((line.split()[1] for line in wrk_out.splitlines() if line.startswith("Requests/sec")), "?")
    non2xx = next((line.split(":")[1].strip() for line in wrk_out.splitlines()
                   if line.startswith("Non-2xx")), "0")
    sock = next((line.strip() for line in wrk_out.splitlines() if "Socket errors" in line), "")
    print(f"\n### Soak: {args.minutes:g} min, {args.workers} worker{'s' if args.workers > 1 else ''}, "
          f"wrk -t1 -c50 with a varied script\n")
    print(f"- requests: {requests} ({rps} req/s), non-2xx: {non2xx}{'; ' + sock if sock else ''}")
    if changer is not None:
        failed = f"; failed: {'; '.join(changer.failed[:3])}" if changer.failed else ""
        print(f"- config versions committed under load: {changer.committed} "
              f"(every {args.change_every:g} s){failed}")
    print(f"- /metrics scrapes: {scrapes}, failed: {failed_scrapes}")
    print("\n| minute | largest process MiB | all processes MiB |\n|---|---|---|")
    for minute in range(int(samples[-1][0] // 60) + 1):
        window = [(largest, total) for t, largest, total in samples if minute * 60 <= t < (minute + 1) * 60]
        if window:
            print(f"| {minute + 1} | {statistics.median(w[0] for w in window):.1f} | "
                  f"{statistics.median(w[1] for w in window):.1f} |")
    verdict = "no growth: met" if growth <= GROWTH_ALLOWED_MIB else "GROWING: MISSED"
    print(f"\nlargest process after warm-up: {statistics.median(first):.1f} MiB in the first minute, "
          f"{statistics.median(last):.1f} in the last; growth {growth:+.2f} MiB, slope "
          f"{slope:+.3f} MiB/min, peak {max(m for _, m in measured):.1f} MiB "
          f"(allowed growth ≤ {GROWTH_ALLOWED_MIB:g} MiB: {verdict})")


if __name__ == "__main__":
    sys.exit(main())
