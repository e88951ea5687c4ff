"""The dependency graph's edges in the store, on SQLite and PostgreSQL: deltas of several processes
added to the same minute, summed from a minute on (histograms too), pruned by age."""

from __future__ import annotations

from routes.store import Store

KEY = ("outbound", "spiffe://peel.internal/svc/orders", "payments")


def row(requests: int, errors: int, *histogram: int) -> list[int]:
    return [requests, errors, *histogram]


def test_deltas_add_up_per_process_and_minute_and_sum_over_processes(store: Store) -> None:
    store.add_edges("a:1", 600, {KEY: row(3, 1, 2, 1, 0)})
    store.add_edges("a:1", 600, {KEY: row(2, 0, 0, 1, 1)})          # the same row, added to
    store.add_edges("b:7", 600, {KEY: row(5, 2, 5, 0, 0)})          # another gateway
    store.add_edges("a:1", 660, {KEY: row(1, 0, 0, 0, 1),
                                 ("public", "external", "orders"): row(4, 0, 4)})
    assert store.count_edges() == 4
    assert store.edges_since(600) == [
        ("outbound", "spiffe://peel.internal/svc/orders", "payments", 11, 3, [7, 2, 2]),
        ("public", "external", "orders", 4, 0, [4]),
    ]
    assert store.edges_since(660) == [
        ("outbound", "spiffe://peel.internal/svc/orders", "payments", 1, 0, [0, 0, 1]),
        ("public", "external", "orders", 4, 0, [4]),
    ]
    assert store.edges_since(720) == []


def test_old_minutes_are_pruned(store: Store) -> None:
    store.add_edges("a:1", 60, {KEY: row(1, 0, 1)})
    store.add_edges("a:1", 120, {KEY: row(1, 0, 1)})
    assert store.prune_edges(120) == 1
    assert store.edges_since(0) == [(*KEY, 1, 0, [1])]
