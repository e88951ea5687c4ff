"""Only the newest config version and every `TEXT_KEPT_EVERY`-th keep their whole text in the store;
the others are rebuilt from the nearest whole text before them and the splices after it. Whatever
the store returns is what was committed, read by the store that wrote it or by any other."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select

from migrations import alembic_config
from routes.changes import commit_change, put_route, rollback_to
from routes.errors import StoreError
from routes.model import Document, Route
from routes.schema import config_versions
from routes.store import TEXT_KEPT_EVERY, Store, text_base
from tests.store.test_version_deltas import seed, set_row

ROUTES = 300


def move(store: Store, n: int) -> None:
    """A one-route change: route r{n % ROUTES} to /moved{n}."""
    info, _ = commit_change(store, lambda d: put_route(d, Route.parse(
        {"name": f"r{n % ROUTES}", "match": {"path_prefix": f"/moved{n}"}, "service": "legacy"}, "route")),
        actor="test", reason=f"move {n}")
    assert info is not None


def history(store: Store, versions: int) -> dict[int, str]:
    """Seed, then one-route changes up to `versions`; each version's text as committed."""
    seed(store, ROUTES)
    texts = {1: store.latest_text()[1]}
    for n in range(2, versions + 1):
        move(store, n)
        version, texts[n] = store.latest_text()
        assert version == n
    return texts


def left_out(store: Store) -> set[int]:
    c = config_versions.c
    with store.engine.connect() as conn:
        return {v for (v,) in conn.execute(select(c.version).where(c.document.is_(None)))}


@pytest.fixture
def fresh(store_url: str) -> Iterator[Store]:
    """Another store on the same database, holding nothing decoded."""
    other = Store(store_url)
    yield other
    other.close()


def test_only_the_newest_and_every_nth_version_keep_their_whole_text(store: Store, fresh: Store) -> None:
    versions = 2 * TEXT_KEPT_EVERY + 6
    texts = history(store, versions)
    # the first version has no splice; every other one but the newest and the kept ones is left out
    assert left_out(store) == {v for v in range(2, versions) if v % TEXT_KEPT_EVERY}
    for version in range(versions, 0, -1):  # newest first: no splice path from a held text
        assert fresh._text(version) == texts[version]
        assert fresh.get(version).document == Document.parse(json.loads(texts[version]))


def test_a_left_out_version_is_read_as_committed_by_every_reader(store: Store, fresh: Store) -> None:
    texts = history(store, 12)
    assert 5 in left_out(store)
    document = fresh.get(5).document
    assert document.route("r5") is not None and document.route("r5").match.path_prefix == "/moved5"
    assert document.route("r6") is not None and document.route("r6").match.path_prefix == "/r6"
    assert fresh.latest_text() == (12, texts[12])
    # the writer itself, asked for an old version it no longer holds decoded
    assert store.get(3).document == fresh.get(3).document


def test_a_rollback_to_a_left_out_version_restores_it(store: Store, fresh: Store) -> None:
    texts = history(store, 10)
    assert 4 in left_out(store)
    info, _ = rollback_to(fresh, 4, actor="test", reason="back to 4")
    assert info is not None and info.version == 11
    assert fresh.latest_text() == (11, texts[4])


def test_a_version_whose_splice_names_another_text_keeps_its_whole_text(store: Store) -> None:
    # After a restore from a backup, a writer can hold a text of the same number as the version
    # before but not that one: its splice cannot rebuild the version from this database's.
    history(store, 2)
    c = config_versions.c
    with store.engine.connect() as conn:
        delta = conn.scalar(select(c.delta).where(c.version == 2))
    base = text_base(store.get(1).created_at)
    assert delta is not None and f":{base}:" in delta
    set_row(store, 2, delta=delta.replace(f":{base}:", f":{int(base) + 1}:"))
    move(store, 3)
    assert 2 not in left_out(store)


def test_a_version_without_a_splice_keeps_its_whole_text(store_url: str, store: Store, fresh: Store) -> None:
    history(store, 3)
    blind = Store(store_url)  # a writer that did not read version 3: no splice for version 4
    try:
        blind.commit(fresh.latest().document.replace_items(routes=[Route.parse(
            {"name": "r1", "match": {"path_prefix": "/blind"}, "service": "legacy"}, "route")]),
            actor="test", reason="blind")
    finally:
        blind.close()
    move(store, 5)  # its store reads version 4 to commit: version 5 has a splice of it
    move(store, 6)
    assert left_out(store) == {2, 3, 5}  # 4: no splice; 6: the newest
    other = Store(store_url)
    try:
        assert other.get(5).document.route("r1").match.path_prefix == "/blind"
        assert other.get(5).document.route("r5").match.path_prefix == "/moved5"
    finally:
        other.close()


def test_a_damaged_splice_is_an_error_naming_the_version(store: Store, fresh: Store) -> None:
    history(store, 6)
    set_row(store, 3, delta="not a splice")
    with pytest.raises(StoreError, match="config version 4: its text was left out"):
        fresh.get(4)
    assert fresh.get(6).version == 6  # the newest holds its whole text


def test_a_downgrade_writes_every_left_out_text_back(store_url: str, store: Store, fresh: Store) -> None:
    texts = history(store, 9)
    assert left_out(store)
    store.close()
    command.downgrade(alembic_config(store_url), "0009")
    c = config_versions.c
    with fresh.engine.connect() as conn:
        stored = {row.version: row.document for row in conn.execute(select(c.version, c.document))}
    assert stored == texts
    # the upgrade leaves out the stored versions' texts as the commits did
    command.upgrade(alembic_config(store_url), "head")
    assert left_out(fresh) == set(range(2, 9))
    assert all(fresh._text(version) == text for version, text in texts.items())


def test_the_upgrade_leaves_out_only_texts_their_splice_rebuilds(store_url: str, store: Store,
                                                                 fresh: Store) -> None:
    texts = history(store, 8)
    store.close()
    command.downgrade(alembic_config(store_url), "0009")
    set_row(fresh, 4, delta="not a splice")
    c = config_versions.c
    with fresh.engine.connect() as conn:
        delta = conn.scalar(select(c.delta).where(c.version == 6))
    assert delta is not None
    set_row(fresh, 6, delta=delta[:-1] + ("x" if delta[-1] != "x" else "y"))  # another text
    command.upgrade(alembic_config(store_url), "head")
    assert left_out(fresh) == {2, 3, 5, 7}
    assert all(fresh._text(version) == text for version, text in texts.items())


def test_the_store_does_not_grow_by_a_whole_text_a_change(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/peel.db")
    try:
        store.upgrade()
        seed(store, 3000)
        text = len(store.latest_text()[1])
        for n in range(2, 50):
            move(store, n)
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()
    size = os.path.getsize(tmp_path / "peel.db")
    # 49 versions: the first, the 32nd, the newest whole, and the pages a commit frees and the next
    # one takes again; every whole text kept would be 49 of them
    assert size < 6 * text, (size, text)
