"""Join tokens in the store (both backends): only the hash is kept, a token works once, expiry and
revocation hold, listing never shows a token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from gateway.identity import tokens
from gateway.identity.spiffe import service_id
from routes.errors import NotFoundError, RuleError
from routes.schema import join_tokens
from routes.store import Store


def _token(store: Store, service: str = "orders", ttl: timedelta = timedelta(minutes=15)) -> tuple[int, str]:
    token = tokens.make_token(service_id("peel.internal", service))
    return store.create_join_token(tokens.hash_token(token), service, datetime.now(UTC) + ttl), token


def test_only_the_hash_is_stored_and_a_token_is_used_once(store: Store) -> None:
    token_id, token = _token(store)
    with store.engine.connect() as conn:
        rows = conn.execute(select(join_tokens)).all()
    assert len(rows) == 1 and token not in repr(tuple(rows[0]))
    assert rows[0].token_hash == tokens.hash_token(token)
    digest = tokens.hash_token(token)
    found = store.join_token(digest)
    assert found is not None and found.id == token_id and found.service == "orders"
    assert found.status(datetime.now(UTC)) == "active"
    assert store.use_join_token(digest) is True
    assert store.use_join_token(digest) is False  # the second use loses
    used = store.join_token(digest)
    assert used is not None and used.used_at is not None and used.status(datetime.now(UTC)) == "used"


def test_an_expired_or_revoked_token_cannot_be_used(store: Store) -> None:
    _, token = _token(store, ttl=timedelta(minutes=1))
    later = datetime.now(UTC) + timedelta(minutes=2)
    info = store.join_token(tokens.hash_token(token))
    assert info is not None and info.status(later) == "expired"
    assert store.use_join_token(tokens.hash_token(token), now=later) is False
    other_id, other = _token(store, "billing")
    store.revoke_join_token(other_id)
    assert store.use_join_token(tokens.hash_token(other)) is False
    revoked = store.join_token(tokens.hash_token(other))
    assert revoked is not None and revoked.status(datetime.now(UTC)) == "revoked"
    with pytest.raises(NotFoundError):
        store.revoke_join_token(other_id)  # already revoked
    assert [t.service for t in store.list_join_tokens()] == ["orders", "billing"]
    assert store.join_token(tokens.hash_token(token + "x")) is None


def test_bad_service_and_past_expiry_are_refused(store: Store) -> None:
    with pytest.raises(RuleError, match="service"):
        store.create_join_token("a" * 64, "Orders!", datetime.now(UTC) + timedelta(minutes=5))
    with pytest.raises(RuleError, match="future"):
        store.create_join_token("a" * 64, "orders", datetime.now(UTC) - timedelta(seconds=1))
