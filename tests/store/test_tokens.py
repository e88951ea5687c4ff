"""Admin tokens on both backends: shown once, stored hashed, verified, listed, revoked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from routes.errors import ConflictError, NotFoundError, RuleError
from routes.schema import admin_tokens
from routes.store import Store


def test_created_token_verifies_as_its_name(store: Store) -> None:
    token = store.create_token("ci")
    assert store.verify_token(token) == "ci"
    assert store.verify_token(token + "x") is None
    assert store.verify_token("") is None
    assert store.verify_token("peel_" + "A" * 43) is None


def test_tokens_are_unique_and_high_entropy(store: Store) -> None:
    tokens = {store.create_token(f"t{i}") for i in range(5)}
    assert len(tokens) == 5
    assert all(len(t) >= 40 for t in tokens)


def test_plain_token_is_not_stored(store: Store, tmp_path: Path) -> None:
    token = store.create_token("ci")
    with store.engine.connect() as conn:
        rows = conn.execute(select(admin_tokens)).all()
    assert rows
    assert all(token not in str(value) for row in rows for value in row)
    secret_part = token.removeprefix("peel_")
    if store.dialect == "sqlite":
        database = store.engine.url.database
        assert database is not None
        for path in Path(database).parent.iterdir():  # the db file and its WAL
            assert secret_part.encode() not in path.read_bytes()


def test_duplicate_active_name_is_a_conflict_on_the_name(store: Store) -> None:
    store.create_token("ci")
    with pytest.raises(ConflictError) as info:
        store.create_token("ci")
    assert info.value.field == "name"


@pytest.mark.parametrize("name", ["", "CI", "has space", "-dash", "x" * 64])
def test_bad_token_names_are_refused(store: Store, name: str) -> None:
    with pytest.raises(RuleError) as info:
        store.create_token(name)
    assert info.value.field == "name"
    assert store.list_tokens() == []


def test_revoked_token_no_longer_verifies_and_its_name_can_be_reused(store: Store) -> None:
    old = store.create_token("ci")
    other = store.create_token("deploy")
    store.revoke_token("ci")
    assert store.verify_token(old) is None
    assert store.verify_token(other) == "deploy"
    listed = {t.name: t for t in store.list_tokens()}
    assert not listed["ci"].active and listed["deploy"].active
    new = store.create_token("ci")
    assert store.verify_token(new) == "ci"
    assert store.verify_token(old) is None


def test_revoking_an_unknown_or_revoked_token_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.revoke_token("nobody")
    store.create_token("ci")
    store.revoke_token("ci")
    with pytest.raises(NotFoundError):
        store.revoke_token("ci")


def test_listing_shows_names_and_use_never_the_token(store: Store) -> None:
    token = store.create_token("ci")
    store.create_token("admin")
    listed = store.list_tokens()
    assert [t.name for t in listed] == ["admin", "ci"]
    assert all(t.last_used_at is None for t in listed)
    assert token not in repr(listed)
    store.verify_token(token)
    used = {t.name: t.last_used_at for t in store.list_tokens()}
    assert used["ci"] is not None and used["admin"] is None


def test_last_use_is_written_at_most_once_a_minute(store: Store) -> None:
    token = store.create_token("ci")
    store.verify_token(token)
    first = {t.name: t for t in store.list_tokens()}["ci"].last_used_at
    assert first is not None
    store.verify_token(token)
    assert {t.name: t for t in store.list_tokens()}["ci"].last_used_at == first
    # a use two minutes later is written again
    long_ago = datetime.now(UTC) - timedelta(minutes=2)
    with store.engine.begin() as conn:
        conn.execute(update(admin_tokens).values(last_used_at=long_ago))
    store.verify_token(token)
    later = {t.name: t for t in store.list_tokens()}["ci"].last_used_at
    assert later is not None and later > long_ago + timedelta(minutes=1)
