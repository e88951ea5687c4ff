"""The service registry in the store (both backends): registration, heartbeats, expiry by TTL, the
stamp gateways poll, and the watcher serving registered endpoints beside the document's."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from routes.compiler import compile_document
from routes.errors import RuleError
from routes.holder import TableHolder
from routes.model import Document
from routes.registry import Registration
from routes.store import Store
from routes.table import RouteTable
from routes.watcher import Watcher

ORDERS = "spiffe://peel.internal/svc/orders"
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
DOC = {"services": [{"name": "orders", "endpoints": ["http://10.0.0.7:9000"]},
                    {"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]}],
       "routes": [{"name": "all", "match": {"path_prefix": "/"}, "service": "legacy"}]}


def test_register_refresh_and_expire(store: Store) -> None:
    first = store.register_endpoint("orders", "https://10.0.2.15:15443/", ORDERS,
                                    ttl=timedelta(seconds=30), now=T0)
    assert first.url == "https://10.0.2.15:15443" and first.expires_at == T0 + timedelta(seconds=30)
    assert [r.url for r in store.registrations(now=T0)] == ["https://10.0.2.15:15443"]
    # a heartbeat moves the expiry, keeps the first registration time, and is one row
    later = T0 + timedelta(seconds=20)
    again = store.register_endpoint("orders", "https://10.0.2.15:15443", ORDERS,
                                    ttl=timedelta(seconds=30), now=later)
    assert again.registered_at == T0 and again.expires_at == later + timedelta(seconds=30)
    assert len(store.registrations(now=later, expired=True)) == 1
    # not refreshed: gone from the live list after its TTL, still listed as expired until pruned
    gone = later + timedelta(seconds=31)
    assert store.registrations(now=gone) == []
    assert [r.live(gone) for r in store.registrations(now=gone, expired=True)] == [False]
    # a registration an hour after the expiry takes the old row away
    store.register_endpoint("orders", "https://10.0.2.16:15443", ORDERS, now=gone + timedelta(hours=1))
    assert [r.url for r in store.registrations(now=gone, expired=True)] == ["https://10.0.2.16:15443"]
    assert store.prune_registry(now=gone + timedelta(days=1), after=timedelta(seconds=0)) == 1
    assert store.registrations(now=gone, expired=True) == []


def test_refusals_name_the_field(store: Store) -> None:
    with pytest.raises(RuleError) as info:
        store.register_endpoint("orders", "http://10.0.2.15:15443", ORDERS)
    assert info.value.field == "endpoint"
    with pytest.raises(RuleError) as info:
        store.register_endpoint("orders", "https://10.0.2.15:15443", "spiffe://peel.internal/svc/billing")
    assert info.value.field == "identity"
    with pytest.raises(RuleError) as info:
        store.register_endpoint("orders", "https://10.0.2.15:15443", ORDERS, ttl=timedelta(days=1))
    assert info.value.field == "ttl"
    assert store.registrations() == []


def test_the_stamp_moves_on_changes_and_expiry_but_not_on_heartbeats(store: Store) -> None:
    empty = store.registry_stamp(now=T0)
    store.register_endpoint("orders", "https://10.0.2.15:15443", ORDERS, now=T0)
    one = store.registry_stamp(now=T0)
    assert one != empty
    store.register_endpoint("orders", "https://10.0.2.15:15443", ORDERS, now=T0 + timedelta(seconds=5))
    assert store.registry_stamp(now=T0 + timedelta(seconds=5)) == one
    store.register_endpoint("orders", "https://10.0.2.16:15443", ORDERS, now=T0 + timedelta(seconds=6))
    two = store.registry_stamp(now=T0 + timedelta(seconds=6))
    assert two != one
    # the first expires (refreshed at +5 s, 30 s TTL) while the second lives on
    assert store.registry_stamp(now=T0 + timedelta(seconds=36)) not in (one, two)
    assert store.deregister_endpoint("orders", "https://10.0.2.16:15443")
    assert not store.deregister_endpoint("orders", "https://10.0.2.16:15443")


def test_the_registry_poll_says_when_the_first_live_registration_expires(store: Store) -> None:
    assert store.registry_poll(now=T0) == (store.registry_stamp(now=T0), None)
    store.register_endpoint("orders", "https://10.0.2.15:15443", ORDERS, now=T0)
    store.register_endpoint("orders", "https://10.0.2.16:15443", ORDERS, now=T0 + timedelta(seconds=6))
    stamp, first = store.registry_poll(now=T0 + timedelta(seconds=6))
    assert stamp == store.registry_stamp(now=T0 + timedelta(seconds=6))
    assert first == T0 + timedelta(seconds=30)  # the default 30 s TTL
    # once the first has expired, the second is the next
    assert store.registry_poll(now=T0 + timedelta(seconds=31))[1] == T0 + timedelta(seconds=36)


def test_the_watch_poll_is_the_latest_version_and_the_registry_poll_in_one(store: Store) -> None:
    """A watcher's first read, one statement: the latest config version (0 before any commit) and
    the registry's stamp and first expiry, each as asked alone."""
    assert store.watch_poll(now=T0) == (0, store.registry_stamp(now=T0), None)
    store.commit(Document.parse(DOC), actor="t", reason="one")
    store.register_endpoint("orders", "https://10.0.2.15:15443", ORDERS, now=T0)
    store.commit(Document.parse(DOC).replace_items(delete_routes=("all",)), actor="t", reason="two")
    later = T0 + timedelta(seconds=6)
    assert store.latest_version() == 2
    assert store.watch_poll(now=later) == (2, *store.registry_poll(now=later))
    assert store.watch_poll(now=later)[2] == T0 + timedelta(seconds=30)
    # nothing live: the version is still read (the aggregate row is there with no registration)
    assert store.watch_poll(now=T0 + timedelta(minutes=5)) == (2, store.registry_stamp(
        now=T0 + timedelta(minutes=5)), None)


def test_the_watcher_serves_registered_endpoints_and_follows_them(store: Store, tmp_path: Path) -> None:
    store.commit(Document.parse(DOC), actor="t", reason="one")
    holder = TableHolder()
    watcher = Watcher(store, holder, interval=600, snapshot=tmp_path / "snap.json")

    async def main() -> None:
        assert await watcher.refresh_async()
        assert [e.url for e in holder.table.services["orders"].endpoints] == ["http://10.0.0.7:9000"]
        assert not await watcher.refresh_async()  # nothing moved
        store.register_endpoint("orders", "https://10.0.2.15:15443", ORDERS)
        store.register_endpoint("payments", "https://10.0.3.9:15443", "spiffe://peel.internal/svc/payments")
        assert await watcher.refresh_async()  # same config version, new registry: a new table
        assert holder.table is not None and holder.table.version == 1
        orders = holder.table.services["orders"].endpoints
        assert [(e.url, e.tls.identity if e.tls else None) for e in orders] == [
            ("http://10.0.0.7:9000", None), ("https://10.0.2.15:15443", ORDERS)]
        payments = holder.table.services["payments"].endpoints
        assert [(e.url, e.tls and e.tls.identity) for e in payments] == [
            ("https://10.0.3.9:15443", "spiffe://peel.internal/svc/payments")]
        assert not await watcher.refresh_async()  # a heartbeat is not a change
        store.register_endpoint("orders", "https://10.0.2.15:15443", ORDERS)
        assert not await watcher.refresh_async()
        store.deregister_endpoint("payments", "https://10.0.3.9:15443")
        assert await watcher.refresh_async()
        assert "payments" not in holder.table.services

    asyncio.run(main())
    # a restart with the store down serves the snapshot, registered endpoints included
    restarted = TableHolder()
    down = Watcher(Store("sqlite:///" + str(tmp_path / "missing" / "nowhere.db")), restarted,
                   interval=600, snapshot=tmp_path / "snap.json")
    assert down.load_snapshot()
    assert restarted.table is not None
    assert [e.url for e in restarted.table.services["orders"].endpoints] == [
        "http://10.0.0.7:9000", "https://10.0.2.15:15443"]


def test_a_version_that_fails_to_compile_is_tried_once_per_registry_change(store: Store,
                                                                          tmp_path: Path) -> None:
    store.commit(Document.parse(DOC), actor="t", reason="one")
    store.register_endpoint("orders", "https://10.0.2.15:15443", ORDERS)
    tried: list[int] = []

    def compile_or_fail(document: Document, version: int, registered: Sequence[Registration]) -> RouteTable:
        tried.append(version)
        if version == 2:
            raise ValueError("cannot compile")
        return compile_document(document, version, registered)

    watcher = Watcher(store, TableHolder(), interval=600, snapshot=tmp_path / "snap.json",
                      compile=compile_or_fail)
    assert watcher.refresh()
    store.commit(Document.parse({**DOC, "routes": []}), actor="t", reason="two")
    assert not watcher.refresh() and not watcher.refresh() and not watcher.refresh()
    assert tried == [1, 2]
    store.register_endpoint("orders", "https://10.0.2.16:15443", ORDERS)
    assert not watcher.refresh() and not watcher.refresh()
    assert tried == [1, 2, 2] and watcher.version == 1


def test_a_new_version_reads_the_registrations_only_when_the_registry_moved(store: Store, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch
                                                                            ) -> None:
    store.commit(Document.parse(DOC), actor="t", reason="one")
    reads: list[int] = []
    read = store.registrations
    monkeypatch.setattr(store, "registrations", lambda **kw: reads.append(1) or read(**kw))

    def compile_or_fail(document: Document, version: int, registered: Sequence[Registration]) -> RouteTable:
        if version == 3:
            raise ValueError("cannot compile")
        return compile_document(document, version, registered)

    holder = TableHolder()
    watcher = Watcher(store, holder, interval=600, snapshot=tmp_path / "snap.json", compile=compile_or_fail)
    assert watcher.refresh() and len(reads) == 1
    store.commit(Document.parse({**DOC, "routes": [{**DOC["routes"][0], "name": "two"}]}),  # type: ignore[index]
                 actor="t", reason="two")
    assert watcher.refresh() and len(reads) == 1  # a new version, the same registry
    # the registry moves with a version that fails: the next version is compiled with what the
    # registry holds now, not with what was read with the table before
    store.register_endpoint("orders", "https://10.0.2.15:15443", ORDERS)
    store.commit(Document.parse({**DOC, "routes": []}), actor="t", reason="three")
    assert not watcher.refresh() and watcher.version == 2
    store.commit(Document.parse(DOC), actor="t", reason="four")
    assert watcher.refresh() and holder.table is not None and holder.table.version == 4
    assert [e.url for e in holder.table.services["orders"].endpoints] == [
        "http://10.0.0.7:9000", "https://10.0.2.15:15443"]
