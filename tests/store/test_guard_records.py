"""The guard's samples in the store on SQLite and PostgreSQL: added per process and summed per
window, histograms merged bucket by bucket, old slices pruned; the window of the guard job read
from several processes' rows."""

from __future__ import annotations

from facade.guard_run import measure
from facade.window import SideWindow
from routes.model import Document
from routes.store import Store


def test_samples_add_up_per_process_and_window(store: Store) -> None:
    store.add_guard_samples("a:1", {("orders", "to", 100): (3, 1, {10: 3}),
                                    ("orders", "from", 100): (4, 0, {9: 4})})
    store.add_guard_samples("a:1", {("orders", "to", 100): (2, 0, {10: 1, 12: 1})})
    store.add_guard_samples("b:2", {("orders", "to", 101): (5, 2, {40: 5}),
                                    ("other", "to", 101): (7, 0, {1: 7})})
    rows = store.guard_window("orders", 100, 102)
    to = SideWindow.of((r, e, h) for side, r, e, h in rows if side == "to")
    assert (to.requests, to.errors, to.histogram) == (10, 3, {10: 4, 12: 1, 40: 5})
    assert sorted(r[0] for r in rows) == ["from", "to", "to"]
    assert store.guard_window("orders", 102, 200) == []
    assert store.prune_guard_samples(101) == 2
    assert {r[1] for r in store.guard_window("orders", 0, 10**10)} == {5}


def test_the_job_s_window_sums_every_gateway(store: Store) -> None:
    doc = Document.parse({
        "services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                     {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]}],
        "routes": [{"name": "orders", "match": {"path_prefix": "/orders"}, "service": "legacy",
                    "migration": {"to": "orders", "stage": "canary", "percent": 5,
                                  "guard": {"window": "3s"}}}]})
    store.commit(doc, actor="test", reason="guarded")
    route = store.latest().document.route("orders")
    assert route is not None
    for gateway in ("gw1:10", "gw2:20"):
        store.add_guard_samples(gateway, {("orders", "to", s): (10, 1, {30: 10}) for s in (96, 97, 98)})
    window = measure(store, route, 0.0, 100.5, 1.5)   # [96, 99)
    assert (window.start, window.end) == (96.0, 99.0)
    assert (window.to.requests, window.to.errors, window.from_.requests) == (60, 6, 0)
    assert window.to.p99_ms is not None and window.from_.p99_ms is None
