"""A store decodes each config version once and reads a new one reusing the unchanged routes of the
one before: what it returns is what a fresh decode returns."""

from __future__ import annotations

from routes.changes import commit_change, put_route
from routes.document_text import DocumentCodec, decode_stored
from routes.model import Document, Route
from routes.store import DECODED_KEPT, Store


def seed(store: Store, routes: int = 30) -> None:
    store.commit(Document.parse({
        "services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]}],
        "routes": [{"name": f"r{i}", "match": {"path_prefix": f"/r{i}"}, "service": "legacy"}
                   for i in range(routes)]}), actor="test", reason="seed")


def move_r0(store: Store, times: int) -> None:
    """`times` versions more, each moving route r0."""
    for i in range(times):
        commit_change(store, lambda d, i=i: put_route(d, Route.parse(
            {"name": "r0", "match": {"path_prefix": f"/v{i}"}, "service": "legacy"}, "route")),
            actor="test", reason=f"v{i}")


def test_a_version_read_twice_is_decoded_once(store: Store) -> None:
    seed(store)
    assert store.latest().document is store.latest().document
    assert store.get(1).document is store.latest().document


def test_a_committed_version_reads_back_as_committed(store: Store) -> None:
    seed(store)
    info, _ = commit_change(store, lambda d: put_route(d, Route.parse(
        {"name": "r3", "match": {"path_prefix": "/three"}, "service": "legacy"}, "route")),
        actor="test", reason="move r3")
    assert info is not None
    latest = store.latest()
    assert latest.version == 2 and latest.document.route("r3") is not None
    before = store.get(1).document
    shared = [r.name for r in latest.document.routes if r is before.route(r.name)]
    assert len(shared) == 29 and "r3" not in shared
    assert info.summary == "~1 route"


def test_another_store_reads_what_this_one_committed(store_url: str, store: Store) -> None:
    seed(store)
    commit_change(store, lambda d: put_route(d, Route.parse(
        {"name": "r5", "match": {"path_prefix": "/five"}, "service": "legacy"}, "route")),
        actor="test", reason="move r5")
    other = Store(store_url)
    try:
        first, second = other.get(1).document, other.get(2).document
        with other._connect() as conn:  # the long way: the stored text, decoded afresh
            from sqlalchemy import select

            from routes.schema import config_versions
            text = conn.scalar(select(config_versions.c.document).where(config_versions.c.version == 2))
        assert second == decode_stored(str(text), 2, DocumentCodec())
        assert sum(r is first.route(r.name) for r in second.routes) == 29
    finally:
        other.close()


def test_old_versions_are_not_all_kept(store: Store) -> None:
    seed(store, 2)
    move_r0(store, 8)
    store.get(1)
    assert len(store._decoded) <= DECODED_KEPT == 1
    assert sorted(store._decoded) == [9]  # the newest, not the one read last
    assert store.get(8).document.route("r0") is not None  # the one before: decoded again
    assert store.get(1).document.route("r0") is not None  # an older version is decoded again


def test_no_committed_text_stays_in_the_engine_s_statement_cache(store: Store) -> None:
    # SQLAlchemy's compiled cache keeps the statement it compiled: a document given in the statement
    # (`insert(...).values(document=...)`) stayed alive for the engine's life
    seed(store, 300)
    move_r0(store, 3)
    cache = store.engine._compiled_cache
    assert cache, "SQLAlchemy's compiled cache is where this leak was; has it moved?"
    held = [name for compiled in list(cache.values())
            for name, bind in (getattr(compiled, "binds", None) or {}).items()
            if isinstance(getattr(bind, "value", None), str) and len(bind.value) > 1000]
    assert held == []
