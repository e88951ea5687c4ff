"""A config version is also stored as a splice of the text of the one before (`config_versions.delta`):
a store that holds that text reads the splice instead of the whole text, and anything that does not
fit (another text, a damaged splice, no splice) is read whole. What a store returns is the same
either way."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select, update

from routes.changes import commit_change, put_route, replace_document
from routes.document_text import apply_delta
from routes.model import Document, Route
from routes.schema import config_versions
from routes.store import Store, text_base


def seed(store: Store, routes: int = 40) -> None:
    store.commit(Document.parse({
        "services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]}],
        "routes": [{"name": f"r{i}", "match": {"path_prefix": f"/r{i}"}, "service": "legacy"}
                   for i in range(routes)]}), actor="test", reason="seed")


def move(store: Store, name: str, prefix: str) -> None:
    info, _ = commit_change(store, lambda d: put_route(d, Route.parse(
        {"name": name, "match": {"path_prefix": prefix}, "service": "legacy"}, "route")),
        actor="test", reason=f"move {name}")
    assert info is not None


def row(store: Store, version: int) -> tuple[str, str | None]:
    c = config_versions.c
    with store.engine.connect() as conn:
        found = conn.execute(select(c.document, c.delta).where(c.version == version)).one()
    return str(found.document), found.delta


def set_row(store: Store, version: int, **values: str | None) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(config_versions).where(config_versions.c.version == version).values(**values))


@pytest.fixture
def reader(store_url: str) -> Iterator[Store]:
    other = Store(store_url)
    yield other
    other.close()


def test_a_one_route_change_is_stored_whole_and_as_a_small_splice(store: Store) -> None:
    seed(store, 400)
    move(store, "r7", "/seven")
    first, no_delta = row(store, 1)
    second, delta = row(store, 2)
    assert no_delta is None  # nothing before the first version
    assert delta is not None and len(delta) < 100 and len(second) > 10_000
    made = apply_delta(first, delta, text_base(store.get(1).created_at))
    assert made is not None and made.text == second and made.base is first
    assert '"/seven"' in second and '"/seven"' not in first


def prefix_of(store: Store, version: int, name: str) -> str:
    found = store.get(version).document.route(name)
    assert found is not None and found.match.path_prefix is not None
    return found.match.path_prefix


def test_a_reader_that_holds_the_version_before_reads_the_splice(store_url: str, store: Store,
                                                                 reader: Store) -> None:
    seed(store)
    move(store, "r3", "/three")
    assert reader.get(1).version == 1
    # version 2's whole text replaced by version 1's: a reader holding version 1 reads the splice
    # (r3 moved); one that does not reads the whole text (r3 where it was)
    set_row(store, 2, document=row(store, 1)[0])
    assert prefix_of(reader, 2, "r3") == "/three"
    fresh = Store(store_url)
    try:
        assert prefix_of(fresh, 2, "r3") == "/r3"
    finally:
        fresh.close()


@pytest.mark.parametrize("damage", ["not a splice", "1:2:3:4", "0:0:99999999:1:x", None])
def test_a_splice_that_does_not_fit_is_read_whole(store: Store, reader: Store, damage: str | None) -> None:
    seed(store)
    move(store, "r3", "/three")
    set_row(store, 2, delta=damage)
    reader.get(1)
    assert prefix_of(reader, 2, "r3") == "/three"
    assert reader.get(2).document == store.get(2).document


def test_a_splice_of_another_text_of_the_same_number_is_not_applied(store: Store, reader: Store) -> None:
    # After a restore from a backup and other commits, the number a reader holds can name another
    # text: a splice names the text it was made from by that version's commit time.
    seed(store)
    move(store, "r3", "/three")
    base = text_base(store.get(1).created_at)
    delta = row(store, 2)[1]
    assert delta is not None and f":{base}:" in delta
    set_row(store, 2, document=row(store, 1)[0], delta=delta.replace(f":{base}:", f":{int(base) + 1}:"))
    reader.get(1)
    assert prefix_of(reader, 2, "r3") == "/r3"  # read whole


def test_a_change_of_most_of_the_text_stores_no_splice(store: Store) -> None:
    seed(store, 5)
    replacement = Document.parse({
        "services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]}],
        "routes": [{"name": f"other{i}", "match": {"path_prefix": f"/other{i}"}, "service": "legacy"}
                   for i in range(5)]})
    commit_change(store, replace_document(replacement), actor="test", reason="all new")
    assert row(store, 2)[1] is None
    assert store.latest().document == replacement


def test_a_writer_that_did_not_read_the_version_before_stores_no_splice(store_url: str, store: Store) -> None:
    seed(store)
    writer = Store(store_url)
    try:
        writer.commit(store.latest().document.replace_items(routes=[Route.parse(
            {"name": "r1", "match": {"path_prefix": "/one"}, "service": "legacy"}, "route")]),
            actor="test", reason="blind")
    finally:
        writer.close()
    assert row(store, 2)[1] is None
    assert prefix_of(store, 2, "r1") == "/one"
