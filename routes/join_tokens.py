"""Join tokens in the store: one-time tokens that let a new VM ask for one service's identity.

`JoinTokenRecords` is mixed into `routes.store.Store`, which provides the transactions
(`_connect`). The store never sees a token, only its SHA-256 (made by
`gateway.identity.tokens`, which also knows the token's format): a stolen database holds nothing a
VM could join with.

A token is redeemed by `use_join_token`, one conditional UPDATE (`used_at IS NULL AND revoked_at IS
NULL AND expires_at > now`), so two requests racing with the same token cannot both win.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from routes.errors import NotFoundError, RuleError
from routes.fields import NAME_RE
from routes.schema import join_tokens


@dataclass(frozen=True, slots=True)
class JoinTokenInfo:
    """A join token as listed and checked: never the token itself."""

    id: int
    service: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None

    def status(self, now: datetime) -> str:
        """`active`, `used`, `revoked` or `expired`: what a join with it would meet."""
        if self.revoked_at is not None:
            return "revoked"
        if self.used_at is not None:
            return "used"
        return "expired" if self.expires_at <= now else "active"


def _now() -> datetime:
    return datetime.now(UTC)


class JoinTokenRecords:
    """Creating, finding, redeeming, listing and revoking join tokens (by their hash)."""

    def _connect(self, *, write: bool = False) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # pragma: no cover - Store provides it

    def create_join_token(self, token_hash: str, service: str, expires_at: datetime) -> int:
        """Store a join token's hash for `service`, valid until `expires_at`; its id."""
        if not isinstance(service, str) or not NAME_RE.match(service):
            raise RuleError("service", "must be 1-63 lower-case letters, digits, '.', '_' or '-', "
                            "starting and ending with a letter or digit", service)
        now = _now()
        if expires_at.tzinfo is None or expires_at <= now:
            raise RuleError("ttl", "the token must expire in the future", expires_at.isoformat())
        with self._connect(write=True) as conn:
            result = conn.execute(insert(join_tokens).values(
                token_hash=token_hash, service=service, created_at=now, expires_at=expires_at))
            key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    def join_token(self, token_hash: str) -> JoinTokenInfo | None:
        """The join token with this hash, whatever its state; None when unknown."""
        t = join_tokens.c
        with self._connect() as conn:
            row = conn.execute(select(join_tokens).where(t.token_hash == token_hash)).first()
        return None if row is None else _info(row)

    def use_join_token(self, token_hash: str, *, now: datetime | None = None) -> bool:
        """Mark the token used, once: True only for the one call that found it active."""
        when = now or _now()
        t = join_tokens.c
        with self._connect(write=True) as conn:
            done = conn.execute(update(join_tokens)
                                .where(t.token_hash == token_hash, t.used_at.is_(None),
                                       t.revoked_at.is_(None), t.expires_at > when)
                                .values(used_at=when)).rowcount
        return bool(done)

    def list_join_tokens(self) -> list[JoinTokenInfo]:
        with self._connect() as conn:
            rows = conn.execute(select(join_tokens).order_by(join_tokens.c.id)).all()
        return [_info(r) for r in rows]

    def revoke_join_token(self, token_id: int) -> None:
        """Revoke the unused, unrevoked token `token_id` (NotFoundError when there is none)."""
        t = join_tokens.c
        with self._connect(write=True) as conn:
            done = conn.execute(update(join_tokens)
                                .where(t.id == token_id, t.used_at.is_(None), t.revoked_at.is_(None))
                                .values(revoked_at=_now())).rowcount
        if not done:
            raise NotFoundError("id", "no unused, unrevoked join token has this id", str(token_id))


def _info(r: Any) -> JoinTokenInfo:
    return JoinTokenInfo(int(r.id), str(r.service), r.created_at, r.expires_at, r.used_at, r.revoked_at)
