"""bench/changes.py: every change a change run makes edits the table, in every round; each round is
compared with its own quiet run.

Until 2026-12-05 each round's `Changer` started again at change 0, so the second round of `put`
repeated the first round's edits and the store answered each with "nothing changed": half of the
`put` figures measured no change at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import bench.changes
from bench.changes import Changer, large_document, put_change, report_changes, round_ratios, route
from bench.run import ROOT, SEED_BASELINE
from routes.store import Store


def test_a_round_goes_on_where_the_one_before_stopped() -> None:
    seen: list[int] = []
    changer: Changer

    def change(n: int) -> None:
        seen.append(n)
        if len(seen) % 3 == 0:
            changer.halt.set()

    changer = Changer(change)
    changer.run()
    changer = Changer(change, changer.n)
    changer.run()
    assert seen == [0, 1, 2, 3, 4, 5]
    assert changer.n == 6


def test_every_put_replaces_its_route_with_something_else(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    class Answer:
        def __enter__(self) -> Answer:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def read(self) -> bytes:
            return b"{}"

    def urlopen(request: Any, timeout: float) -> Answer:
        sent.append((request.full_url, json.loads(request.data)))
        return Answer()

    monkeypatch.setattr(bench.changes.urllib.request, "urlopen", urlopen)
    change = put_change(9901, "token")
    for n in range(450):  # four and a half rounds' worth over the 100 routes it cycles through
        change(n)
    current = {f"r{i}": route(i) for i in range(100)}  # the table as large_document made it
    for url, body in sent:
        name = url.rsplit("/", 1)[1]
        assert body["name"] == name
        assert body != current[name], f"change of {name} repeats what the table holds"
        current[name] = body


def test_the_large_document_holds_the_routes_put_cycles_through() -> None:
    document = large_document(8080, 200)
    names = [r["name"] for r in document["routes"]]  # type: ignore[index, union-attr]
    assert names[:100] == [f"r{i}" for i in range(100)] and names[-1] == "all"


def test_a_baseline_store_takes_a_10000_route_document(tmp_path: Path) -> None:
    # The document goes on stdin: as an argument (until 2026-12-05) it was more than Linux lets one
    # argument hold, and `--baseline DIR --routes 10000` could not start.
    url = f"sqlite:///{tmp_path / 'base.db'}"
    document = large_document(8080, 10000)
    seeded = subprocess.run([sys.executable, "-c", SEED_BASELINE, url, "seed"], input=json.dumps(document),
                            capture_output=True, text=True, check=False, cwd=ROOT)
    assert seeded.returncode == 0, seeded.stderr
    store = Store(url)
    try:
        assert len(store.latest().document.routes) == 10000
    finally:
        store.close()


def test_each_round_is_compared_with_its_own_quiet_run() -> None:
    rows = {"quiet": [{"p99": 1.0}, {"p99": 0.8}, {"p99": 0.0}],
            "put": [{"p99": 2.0}, {"p99": 2.4}, {"p99": 1.0}]}
    assert round_ratios(rows, "put") == "2.00, 3.00, -"
    assert round_ratios(rows, "quiet") == ""


def test_the_control_run_is_reported_and_not_held_to_the_target(capsys: pytest.CaptureFixture[str]) -> None:
    def run(p99: float) -> dict[str, float]:
        return {"p50": 0.3, "p99": p99, "max": 3.0, "errors": 0.0, "changes": 10.0, "change_s": 0.3}

    rows = {"rss": [{"mib": 70.0}, {"mib": 75.0}], "quiet": [run(1.0)], "put": [run(1.5)],
            "apply": [run(1.8)], "apply-elsewhere": [run(2.4)]}
    report_changes(rows, 10000, 1, 8, 1500)
    out = capsys.readouterr().out
    assert "| apply-elsewhere | 0.30 | 2.40 |" in out
    assert "worst change-run p99 / quiet p99: 1.80 x (target <= 2 x: met)" in out
    assert "raise this one's p99 to 2.40 x" in out and "`apply` over it: 0.75 x" in out
