"""The leader's clean-up of traffic counts (`compact_traffic`), on SQLite and PostgreSQL: rows of
processes that are gone are rolled up with every sum kept, rows no status reads any more dropped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from routes.migration_records import ROLLUP_INSTANCE
from routes.schema import traffic_counts
from routes.store import Store, Transition
from tests.store.test_transitions import DOC


def rows(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(traffic_counts)) or 0)


def age(store: Store, instance: str, by: timedelta) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(traffic_counts).where(traffic_counts.c.instance == instance)
                     .values(updated_at=datetime.now(UTC) - by))


def test_rows_of_gone_processes_roll_up_and_every_sum_stays(store: Store) -> None:
    store.add_traffic("gw:1", {("orders", 3): (1, 2, 3, 4), ("orders", 5): (10, 0, 0, 0)})
    store.add_traffic("gw:2", {("orders", 5): (1, 1, 0, 0), ("users", 6): (100, 0, 0, 0)})
    store.add_traffic("gw:3", {("orders", 5): (7, 0, 0, 0)})  # alive: written just now
    age(store, "gw:1", timedelta(hours=2))
    age(store, "gw:2", timedelta(hours=2))
    before = [store.traffic_since(r, v) for r in ("orders", "users") for v in (0, 4, 5, 6)]
    assert rows(store) == 5
    rolled, dropped = store.compact_traffic(datetime.now(UTC) - timedelta(hours=1))
    assert (rolled, dropped) == (4, 0)
    # orders@3, orders@5 and users@6 under the roll-up, plus gw:3's live row
    assert rows(store) == 4
    assert [store.traffic_since(r, v) for r in ("orders", "users") for v in (0, 4, 5, 6)] == before
    # a second round of the same process's rows adds into the same roll-up row
    store.add_traffic("gw:4", {("orders", 5): (2, 0, 0, 0)})
    age(store, "gw:4", timedelta(hours=2))
    assert store.compact_traffic(datetime.now(UTC) - timedelta(hours=1)) == (1, 0)
    assert rows(store) == 4
    assert store.traffic_since("orders", 5) == (20, 1, 0, 0)
    with store.engine.connect() as conn:
        instances = set(conn.scalars(select(traffic_counts.c.instance)))
    assert instances == {ROLLUP_INSTANCE, "gw:3"}


def test_rows_below_a_routes_newest_transition_are_dropped(store: Store) -> None:
    store.commit(DOC, actor="a", reason="start", transitions=[Transition("orders", "start", None,
                                                                          "legacy", 0)])
    info = store.commit(DOC, actor="a", reason="shift",
                        transitions=[Transition("orders", "shift", "legacy", "canary", 1000)])
    store.add_traffic("gw:1", {("orders", info.version - 1): (0, 50, 0, 0),
                               ("orders", info.version): (3, 4, 0, 0),
                               ("users", 1): (9, 0, 0, 0)})  # no transition: kept
    status_reads = store.traffic_since("orders", info.version)
    assert store.compact_traffic(datetime.now(UTC) - timedelta(hours=1)) == (0, 1)
    assert rows(store) == 2
    assert store.traffic_since("orders", info.version) == status_reads == (3, 4, 0, 0)
    assert store.traffic_since("users", 0) == (9, 0, 0, 0)


def test_the_roll_up_takes_at_most_a_batch_per_call(store: Store) -> None:
    store.add_traffic("gw:1", {("orders", v): (1, 0, 0, 0) for v in range(1, 6)})
    age(store, "gw:1", timedelta(hours=2))
    idle = datetime.now(UTC) - timedelta(hours=1)
    assert store.compact_traffic(idle, batch=3) == (3, 0)
    assert store.compact_traffic(idle, batch=3) == (2, 0)
    assert store.compact_traffic(idle, batch=3) == (0, 0)
    assert store.traffic_since("orders", 0) == (5, 0, 0, 0)
