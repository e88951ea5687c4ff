"""Join tokens, pure: their format, how they are made and hashed.

    peel_join.<identity>.<secret>

`<identity>` is the SPIFFE ID the token lets a VM ask for, base64url without padding (so `peel join`
knows what its CSR must name without asking anyone); `<secret>` is 32 random bytes, base64url. Only
the SHA-256 of the whole token is stored: the identity part is covered by the hash, so it cannot
be edited to ask for another service. The three parts hold no `.` of their own (base64url), and
every character is legal in a bearer token (RFC 6750 `b64token`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets

from gateway.identity.errors import IdentityError
from gateway.identity.spiffe import SpiffeId, parse_service_id

PREFIX = "peel_join"
MAX_TOKEN = 4096


class BadJoinToken(IdentityError):
    """A string that is not a join token."""


def make_token(identity: SpiffeId) -> str:
    """A new join token for `identity` (a service's SPIFFE ID)."""
    encoded = base64.urlsafe_b64encode(str(identity).encode()).decode().rstrip("=")
    return f"{PREFIX}.{encoded}.{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    """What the store keeps: the SHA-256 hex of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_identity(token: str) -> SpiffeId:
    """The SPIFFE ID a join token names (`BadJoinToken` when `token` has not the format)."""
    parts = token.strip().split(".") if len(token) <= MAX_TOKEN else []
    if len(parts) != 3 or parts[0] != PREFIX or not parts[2]:
        raise BadJoinToken("this is not a join token (peel_join.<identity>.<secret>; "
                           "`peel join-token create` makes them)")
    try:
        text = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)).decode()
        return parse_service_id(text)
    except (binascii.Error, UnicodeDecodeError, ValueError, IdentityError):
        raise BadJoinToken("the join token is damaged: its identity part does not decode") from None
