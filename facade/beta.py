"""Beta users: which header or cookie values are trusted, and the signed value format. Pure.

A beta header (or cookie) steers a request to the new service, so it is honoured only

- from a downstream address in `facade.trusted_networks` (the value is the user id), or
- when the value is signed: `v1.<user>.<expiry>.<mac>`, where `expiry` is a Unix time in seconds
  and `mac` is base64url (no padding) of HMAC-SHA256(`facade.beta_secret`, "v1.<user>.<expiry>").

From anyone else the value is stripped before routing and forwarding. `peel beta sign USER` prints a
signed value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Iterable

from gateway.core.trust import TrustedNetworks
from routes.migration import USER_RE

VERSION = "v1"
MIN_SECRET = 32


def _mac(secret: bytes, message: str) -> str:
    digest = hmac.new(secret, message.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign(secret: str, user: str, expiry: int) -> str:
    """The signed beta value for `user`, valid until the Unix time `expiry`."""
    if len(secret) < MIN_SECRET:
        raise ValueError(f"the beta secret must be at least {MIN_SECRET} characters")
    if not USER_RE.match(user):
        raise ValueError(f"{user!r} is not a user id (visible ASCII, no spaces or commas)")
    message = f"{VERSION}.{user}.{expiry:d}"
    return f"{message}.{_mac(secret.encode('utf-8'), message)}"


def verify(secret: bytes, value: str, now: float) -> str | None:
    """The user a signed value names, or None when it is not signed, forged or expired."""
    if not value.startswith(VERSION + ".") or not value.isascii():
        # Not ASCII: no value Peel signs (and the MAC could not be computed over it).
        return None
    parts = value.rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    head, expiry, mac = parts
    message = f"{head}.{expiry}"
    user = head[len(VERSION) + 1:]
    if not user or not hmac.compare_digest(_mac(secret, message), mac):
        return None
    if int(expiry) <= now:
        return None
    return user


class BetaTrust:
    """Decides whether a beta value from a downstream is honoured, and as which user."""

    __slots__ = ("_secret", "trusted_source")

    trusted_source: Callable[[str | None], bool]

    def __init__(self, trusted_networks: Iterable[str] = (), secret: str = "") -> None:
        # Whether the downstream at `client` may send plain values (no networks: nobody may).
        self.trusted_source = TrustedNetworks(trusted_networks).contains
        self._secret = secret.encode("utf-8") if secret else None

    def user(self, value: str, client: str | None, now: float) -> str | None:
        """The user id this value stands for, or None: untrusted, and then it is stripped.

        A signed value names its user wherever it comes from; a plain value only from a trusted
        network.
        """
        if self._secret is not None:
            signed = verify(self._secret, value, now)
            if signed is not None:
                return signed
        if self.trusted_source(client) and USER_RE.match(value):
            return value
        return None
