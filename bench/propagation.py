"""Commit -> served by every gateway: several real `peel serve` on one real PostgreSQL.

    .venv/bin/python bench/propagation.py [--gateways 3] [--commits 100] [--poll-interval 30]

Starts a throwaway PostgreSQL (tests/pg.py: server binaries needed), an echo upstream and
`--gateways` gateways, then makes `--commits` changes, each through the next gateway's admin API
(`POST /api/v1/config/apply`), and times from sending the change until every gateway serves it
(each gateway polled by its own client thread). Polling is set to `--poll-interval` seconds (30 by
default), so what is measured is LISTEN/NOTIFY. Prints p50, p99 and max. docs/fleet.md keeps the
figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.pg import running_postgres
from tests.sockets.fleet_harness import document, fleet, p99, propagate
from tests.sockets.serve_harness import PeelServe
from tests.sockets.upstreams import ScriptedUpstream


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--commits", type=int, default=100)
    parser.add_argument("--poll-interval", type=float, default=30.0)
    args = parser.parse_args()
    echo = ScriptedUpstream()
    echo.start()
    try:
        with running_postgres() as server, tempfile.TemporaryDirectory(prefix="peel-fleet-") as tmp:
            url = server.create_database()
            seed = PeelServe(Path(tmp), url=url)
            token = seed.upgrade_with_token("bench")
            seed.commit(document(echo.url, 1))
            gateways = fleet(Path(tmp), url, args.gateways, poll_interval=args.poll_interval)
            try:
                for peel in gateways:
                    peel.start()
                seconds = [propagate(gateways, gateways[i % len(gateways)], token, echo.url, i + 2)
                           for i in range(args.commits)]
            finally:
                for peel in gateways:
                    if peel.process is not None:
                        peel.stop()
    finally:
        echo.stop()
    ms = [s * 1000 for s in seconds]
    print(f"{args.gateways} gateways, {args.commits} commits, poll_interval {args.poll_interval} s: "
          f"commit -> served by all: p50 {statistics.median(ms):.1f} ms, p99 {p99(ms):.1f} ms, "
          f"max {max(ms):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
