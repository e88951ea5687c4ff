"""`make bench BENCH_ARGS="--routes 10000 --changes"`: does a one-route change stall a large table?

Peel is started by bench/run.py with a table of `--routes` routes (`/r0` ... plus the catch-all `/`
to the origin). wrk offers a fixed load (`--changes-rate`, default 1,500 req/s over 50 connections,
paced as in the fixed-load runs) to `/`, four times per round:

- `quiet`: nothing changes;
- `put`: one route at a time is replaced by `PUT /api/v1/routes/{name}` (its prefix flips between
  `/rN` and `/rN-v2`), back to back with a 0.5 s pause, for the whole run;
- `apply`: `peel apply -f` of the whole document with one route changed, back to back, the same
  (the file is whole; the CLI sends the gateway the items that differ, `routes/patch.py`);
- `apply-elsewhere`, the control: the same `peel apply -f` changes, sent to a second Peel
  (`peel-control`, the same table, started by bench/run.py) that no load goes to. Whatever this run
  raises the p99 by is the machine's, not the serving process's: the CLI and the other gateway's
  work on the same cores. Not held to the target; it says how much of `apply`'s window is left to
  the serving process.

The report gives each run's p50, p99 and max, the errors, how many changes were committed, how long
a change took (median, as the client saw it) and the p99 of each change run over the quiet one:
DESIGN.md's target is no error and no p99 beyond 2 x the quiet one. RSS of the Peel process (all
workers) is sampled at the start and after the change runs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.run import Bench

CHANGE_RATE = 1500
KINDS = ("quiet", "put", "apply", "apply-elsewhere")  # the runs of a round, in order
TARGET_CHANGE_P99 = 2.0
PAUSE = 0.5  # seconds between two changes of one run


def large_document(origin: int, routes: int) -> dict[str, object]:
    """`routes - 1` routes `/rN` and the catch-all `all` (`/`), every one to the origin."""
    rows: list[dict[str, object]] = [route(i) for i in range(max(0, routes - 1))]
    rows.append({"name": "all", "match": {"path_prefix": "/"}, "service": "origin"})
    return {"services": [{"name": "origin", "endpoints": [f"http://127.0.0.1:{origin}"]}], "routes": rows}


def route(i: int, flipped: bool = False) -> dict[str, object]:
    prefix = f"/r{i}-v2" if flipped else f"/r{i}"
    return {"name": f"r{i}", "match": {"path_prefix": prefix}, "service": "origin"}


class Changer(threading.Thread):
    """Makes changes back to back until stopped; records how long each took.

    Change `n` is the `n`-th of its kind over the whole bench: a round starts at `start`, where the
    one before stopped (`self.n` after the run). Starting every round at 0 would repeat the first
    round's edits, which the store answers as "nothing changed" without a new version: the
    second round of `put` measured no change at all until 2026-12-05.
    """

    def __init__(self, change: Callable[[int], None], start: int = 0) -> None:
        super().__init__(daemon=True)
        self.change = change
        self.n = start
        self.took: list[float] = []
        self.failed: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            start = time.perf_counter()
            try:
                self.change(self.n)
            except Exception as exc:  # reported, not raised: the run goes on
                self.failed.append(str(exc))
            else:
                self.took.append(time.perf_counter() - start)
            self.n += 1
            self.halt.wait(PAUSE)


def put_change(admin: int, token: str) -> Callable[[int], None]:
    def change(n: int) -> None:
        body = json.dumps(route(n % 100, flipped=(n // 100) % 2 == 0)).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{admin}/api/v1/routes/r{n % 100}", data=body,
                                     method="PUT", headers={"Authorization": f"Bearer {token}",
                                                            "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
    return change


def apply_change(admin: int, token: str, origin: int, routes: int, directory: Path) -> Callable[[int], None]:
    """`peel apply -f` of the whole document with route `n % 100` flipped, as an operator runs it on a
    VM: from bytecode compiled once (pip compiles an install's; a checkout run with
    PYTHONDONTWRITEBYTECODE, as CI and this sandbox are, compiled every module the CLI imports at
    every apply: 0.05-0.1 s of CPU more each, an apply 0.38-0.39 s instead of 0.34). One apply of
    the document as stored (a change of nothing) compiles it before the runs."""
    path = directory / "apply.json"  # JSON is YAML too, and quick to write
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(directory / "cli-bytecode")

    def apply(document: dict[str, object]) -> None:
        path.write_text(json.dumps(document))
        subprocess.run([sys.executable, "-m", "gateway.cli", "apply", "-f", str(path),
                        "--admin", f"http://127.0.0.1:{admin}", "--token", token],
                       check=True, capture_output=True, timeout=120, env=env)

    def change(n: int) -> None:
        document = large_document(origin, routes)
        rows = document["routes"]
        assert isinstance(rows, list)
        rows[n % 100] = route(n % 100, flipped=n % 2 == 0)
        apply(document)

    apply(large_document(origin, routes))
    return change


def measure_changes(bench: Bench, pid: int, reps: int, seconds: int, rate: int
                    ) -> dict[str, list[dict[str, float]]]:
    from bench.run import CONNS, CONTROL, pacing_script, process_rss_mib, wrk

    script = pacing_script(bench.dir, rate, CONNS)
    port, admin, token = bench.ports["peel"], bench.ports["peel-admin"], bench.tokens["peel"]
    origin = bench.ports["direct"]
    rows: dict[str, list[dict[str, float]]] = {}
    rows["rss"] = [{"mib": process_rss_mib(pid)[0]}]
    wrk(port, "/", CONNS, 2)  # warm-up
    work = Path(tempfile.mkdtemp(dir=bench.dir))
    makers = {"put": put_change(admin, token),
              "apply": apply_change(admin, token, origin, bench.routes, work),
              "apply-elsewhere": apply_change(bench.ports[f"{CONTROL}-admin"], bench.tokens[CONTROL],
                                              origin, bench.routes, Path(tempfile.mkdtemp(dir=bench.dir)))}
    made = dict.fromkeys(makers, 0)  # changes of each kind so far: every change edits the table
    for rnd in range(reps):
        print(f"changes round {rnd + 1}/{reps} ...", file=sys.stderr, flush=True)
        for kind in KINDS:
            changer = Changer(makers[kind], made[kind]) if kind != "quiet" else None
            if changer is not None:
                changer.start()
            result = wrk(port, "/", CONNS, seconds, script=script)
            if changer is not None:
                changer.halt.set()
                changer.join()
                made[kind] = changer.n
                result["changes"] = float(len(changer.took))
                result["change_s"] = statistics.median(changer.took) if changer.took else float("nan")
                result["change_errors"] = float(len(changer.failed))
                if changer.failed:
                    print(f"  {kind}: {len(changer.failed)} changes failed, first: {changer.failed[0]}",
                          file=sys.stderr)
            rows.setdefault(kind, []).append(result)
    rows["rss"].append({"mib": process_rss_mib(pid)[0]})
    return rows


def round_ratios(rows: dict[str, list[dict[str, float]]], kind: str) -> str:
    """Each round's p99 of `kind` over the same round's quiet p99: how far the rounds spread (at 1,500
    req/s for 8 s, the p99 is the 120th slowest request of 12,000, and one run's moves by a third)."""
    if kind == "quiet":
        return ""
    return ", ".join(f"{r['p99'] / q['p99']:.2f}" if q["p99"] else "-"
                     for r, q in zip(rows[kind], rows["quiet"], strict=False))


def report_changes(rows: dict[str, list[dict[str, float]]], routes: int, reps: int, seconds: int,
                   rate: int) -> None:
    def med(kind: str, key: str) -> float:
        return statistics.median(r.get(key, float("nan")) for r in rows[kind])

    print(f"\n## A change to a {routes:,}-route table at a fixed {rate:,} req/s "
          f"({reps} rounds x {seconds} s per run, medians)\n")
    print("| run | p50 ms | p99 ms | max ms | errors | changes | one change took s | p99 / quiet | "
          "each round's p99 / its quiet p99 |")
    print("|---|---|---|---|---|---|---|---|---|")
    quiet = med("quiet", "p99")
    for kind in KINDS:
        ratio = med(kind, "p99") / quiet if quiet else float("nan")
        changes = "" if kind == "quiet" else f"{med(kind, 'changes'):.0f}"
        took = "" if kind == "quiet" else f"{med(kind, 'change_s'):.2f}"
        errors = sum(r["errors"] for r in rows[kind])
        print(f"| {kind} | {med(kind, 'p50'):.2f} | {med(kind, 'p99'):.2f} | {med(kind, 'max'):.1f} | "
              f"{errors:.0f} | {changes} | {took} | {ratio:.2f} x | {round_ratios(rows, kind)} |")
    worst = max(med(k, "p99") for k in ("put", "apply")) / quiet if quiet else float("nan")
    verdict = "met" if worst <= TARGET_CHANGE_P99 else "NOT met"
    print(f"\nworst change-run p99 / quiet p99: {worst:.2f} x (target <= {TARGET_CHANGE_P99:.0f} x: "
          f"{verdict}); RSS {rows['rss'][0]['mib']:.1f} MiB at start, {rows['rss'][-1]['mib']:.1f} MiB "
          f"after the changes")
    elsewhere = med("apply-elsewhere", "p99")
    machine = elsewhere / quiet if quiet else float("nan")
    own = med("apply", "p99") / elsewhere if elsewhere else float("nan")
    print(f"the control: the same applies sent to another gateway raise this one's p99 to {machine:.2f} x "
          f"(the machine's share of an apply's window, not held to the target); `apply` over it: "
          f"{own:.2f} x (the serving process's own share)")
