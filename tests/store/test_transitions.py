"""Migration transitions and traffic counts in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from routes.errors import PreconditionFailed
from routes.model import Document
from routes.store import Store, Transition

DOC = Document.parse({
    "services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                 {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]}],
    "routes": [{"name": "orders", "match": {"path_prefix": "/orders"}, "service": "legacy",
                "migration": {"to": "orders", "stage": "canary", "percent": 10}}]})


def test_a_transition_is_committed_with_its_config_version(store: Store) -> None:
    info = store.commit(DOC, actor="alice", reason="ten percent",
                        transitions=[Transition("orders", "shift", "legacy", "canary", 1000)])
    [row] = store.transitions("orders")
    assert (row.route, row.action, row.from_stage, row.to_stage, row.share) == \
        ("orders", "shift", "legacy", "canary", 1000)
    assert (row.actor, row.reason, row.config_version, row.created_at) == \
        ("alice", "ten percent", info.version, info.created_at)
    assert row.to_dict()["percent"] == 10
    assert store.last_transitions() == {"orders": row}


def test_a_refused_commit_records_no_transition(store: Store) -> None:
    store.commit(DOC, actor="a", reason="r")
    with pytest.raises(PreconditionFailed):
        store.commit(DOC, actor="a", reason="r", expected=0,
                     transitions=[Transition("orders", "promote", "canary", "migrated", 1000)])
    assert store.transitions() == []
    assert store.latest_version() == 1


def test_history_is_newest_first_and_per_route(store: Store) -> None:
    for i, action in enumerate(("start", "shift", "promote")):
        store.commit(DOC, actor="a", reason=str(i), transitions=[Transition("orders", action, None, "x", 0)])
    store.commit(DOC, actor="a", reason="other",
                 transitions=[Transition("users", "start", None, "legacy", 0)])
    assert [t.action for t in store.transitions("orders")] == ["promote", "shift", "start"]
    assert [t.route for t in store.transitions()] == ["users", "orders", "orders", "orders"]
    last = store.last_transitions()
    assert {r: t.action for r, t in last.items()} == {"orders": "promote", "users": "start"}


def test_traffic_counts_add_up_over_instances_from_a_version_on(store: Store) -> None:
    store.add_traffic("gw-1", {("orders", 3): (1, 2, 3, 4), ("orders", 5): (10, 0, 0, 0)})
    store.add_traffic("gw-1", {("orders", 5): (1, 1, 0, 0)})
    store.add_traffic("gw-2", {("orders", 6): (0, 0, 0, 7), ("users", 6): (100, 0, 0, 0)})
    store.add_traffic("gw-2", {})
    assert store.traffic_since("orders", 5) == (11, 1, 0, 7)
    assert store.traffic_since("orders", 0) == (12, 3, 3, 11)
    assert store.traffic_since("orders", 7) == (0, 0, 0, 0)
