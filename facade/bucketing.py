"""Sticky bucketing: which users of a migration see the `to` service. Pure.

bucket = the first 8 bytes of SHA-256(salt + "\\0" + key), big-endian, modulo 10,000. A user is in
the canary iff bucket < share (the percentage in basis points). The hash depends on nothing but
the salt and the key, so every gateway and every restart puts a user in the same bucket; raising
the share only adds buckets, so users only ever move from `from` to `to` (and back when lowered).
"""

from __future__ import annotations

import hashlib

BUCKETS = 10_000


def bucket(salt: str, key: str) -> int:
    """The user's bucket, 0-9,999."""
    digest = hashlib.sha256(salt.encode("utf-8") + b"\0" + key.encode("utf-8", "surrogateescape"))
    return int.from_bytes(digest.digest()[:8], "big") % BUCKETS


def in_share(salt: str, key: str, share: int) -> bool:
    """Whether the user with `key` is within `share` basis points (0-10,000) of users."""
    if share <= 0:
        return False
    if share >= BUCKETS:
        return True
    return bucket(salt, key) < share
