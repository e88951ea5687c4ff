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


def test_scopes_are_stored_with_what_they_imply(store: Store) -> None:
    everything = store.create_token("ops")
    reader = store.create_token("dash", scopes=["read"])
    scraper = store.create_token("prom", scopes=["metrics"])
    writer = store.create_token("ci", scopes=["write"])
    grants = {t: store.grant(t) for t in (everything, reader, scraper, writer)}
    assert {g.name: g.scopes for g in grants.values() if g} == {
        "ops": {"metrics", "read", "write"}, "dash": {"metrics", "read"}, "prom": {"metrics"},
        "ci": {"metrics", "read", "write"}}
    listed = {t.name: t.scopes for t in store.list_tokens()}
    assert listed["prom"] == {"metrics"} and listed["dash"] == {"metrics", "read"}


@pytest.mark.parametrize("scopes", [[], ["admin"], ["read", "root"]])
def test_unknown_or_no_scopes_are_refused(store: Store, scopes: list[str]) -> None:
    with pytest.raises(RuleError) as info:
        store.create_token("ci", scopes=scopes)
    assert info.value.field == "scope"
    assert store.list_tokens() == []


def test_an_expired_token_stops_working_and_frees_its_name(store: Store) -> None:
    soon = datetime.now(UTC) + timedelta(days=30)
    token = store.create_token("temp", scopes=["read"], expires_at=soon)
    grant = store.grant(token)
    assert grant is not None and grant.expires_at is not None
    assert abs(grant.expires_at - soon) < timedelta(seconds=1)
    (listed,) = store.list_tokens()
    assert listed.expires_at is not None and listed.active
    with pytest.raises(ConflictError):
        store.create_token("temp")
    with store.engine.begin() as conn:
        conn.execute(update(admin_tokens).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert store.grant(token) is None and store.verify_token(token) is None
    (listed,) = store.list_tokens()
    assert listed.expired and not listed.active
    store.create_token("temp")  # an expired token's name may be reused


def test_an_expiry_in_the_past_is_refused(store: Store) -> None:
    with pytest.raises(RuleError) as info:
        store.create_token("ci", expires_at=datetime.now(UTC) - timedelta(minutes=1))
    assert info.value.field == "expires"


def test_tokens_from_before_scopes_keep_every_scope(blank_store: Store) -> None:
    from alembic import command
    from sqlalchemy import insert

    from migrations import alembic_config
    from routes.store import hash_token

    command.upgrade(alembic_config(blank_store.engine.url.render_as_string(hide_password=False)), "0002")
    old = "peel_" + "o" * 43
    with blank_store.engine.begin() as conn:
        conn.execute(insert(admin_tokens).values(
            name="old", token_hash=hash_token(old), created_at=datetime.now(UTC)))
    blank_store.upgrade()
    grant = blank_store.grant(old)
    assert grant is not None and grant.scopes == {"metrics", "read", "write"}
    assert grant.expires_at is None
