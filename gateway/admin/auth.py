"""Bearer-token authentication and scopes for the admin API, as pure ASGI middleware.

There is no open default: every path but the health probes needs `Authorization: Bearer <token>`
(and `/metrics` too, unless `metrics.open` says a scraper may read it without one). The two
certificate paths and a sidecar's control paths (`SELF_AUTHENTICATED`) check their own credentials
instead.
Tokens are verified by the store (which keeps them hashed); a positive answer is remembered for a
few seconds so a burst of CLI calls costs one query, which also bounds how long a revoked token
keeps working.

Each request needs one scope (`required_scope`): `GET /metrics` needs `metrics`, other `GET` and
`HEAD` requests and `POST /api/v1/match` (a query that writes nothing) need `read`, every other
method needs `write`. `routes.tokens` says which scopes imply which; a token without the scope gets
403 `insufficient-scope` naming it.

Failed lookups are bounded twice, so unknown tokens cannot turn into a flood of store queries:
an unknown token is remembered as unknown for `MISS_SECONDS` (at most `MISS_LIMIT` of them), and
each client address may cause `FAILURE_BURST` failed store lookups at once, then `FAILURE_RATE` a
second; past that it gets 429 `too-many-token-failures` without a query.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.admin.wire import ACTOR_KEY
from gateway.core import problems
from routes.errors import StoreError
from routes.tokens import TokenGrant

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# Paths that authenticate their callers themselves, not with an admin token: a join with its
# one-time join token, a renewal with the current certificate (`gateway.admin.certificates`).
SELF_AUTHENTICATED = frozenset({"/api/v1/certificates/join", "/api/v1/certificates/renew",
                                # a sidecar, by its certificate (`gateway.admin.control`)
                                "/api/v1/control/config", "/api/v1/control/endpoints",
                                "/api/v1/control/counts"})
CACHE_SECONDS = 5.0
CACHE_LIMIT = 1024
MISS_SECONDS = 5.0
MISS_LIMIT = 4096
FAILURE_BURST = 20
FAILURE_RATE = 1.0  # failed lookups a second, per client address, after the burst
CLIENT_LIMIT = 4096
# POSTs that only read: they need the read scope, not write
READ_POSTS = frozenset({"/api/v1/match"})

V = TypeVar("V")


def required_scope(method: str, path: str) -> str:
    """The scope a request needs (see the module docstring)."""
    if method in ("GET", "HEAD"):
        return "metrics" if path == "/metrics" else "read"
    if method == "POST" and path in READ_POSTS:
        return "read"
    return "write"


class TooManyFailures(Exception):
    """This client caused too many failed token lookups lately; retry after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed token lookups; retry in {math.ceil(retry_after)} s")
        self.retry_after = retry_after


class FailureThrottle:
    """A token bucket of failed lookups per client address (`burst` at once, then `rate` a second).

    A lookup reserves one unit before it asks the store and gets it back when the token was good,
    so concurrent requests cannot all pass an empty bucket together. At most `limit` clients are
    tracked; when that many are, the ones whose bucket refilled are forgotten first.
    """

    def __init__(self, *, burst: int = FAILURE_BURST, rate: float = FAILURE_RATE,
                 limit: int = CLIENT_LIMIT, clock: Callable[[], float] = time.monotonic) -> None:
        self._burst = float(burst)
        self._rate = rate
        self._limit = limit
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (units, at)

    def _units(self, client: str, now: float) -> float:
        units, at = self._buckets.get(client, (self._burst, now))
        return min(self._burst, units + (now - at) * self._rate)

    def reserve(self, client: str) -> None:
        """Take one unit for `client`, or raise `TooManyFailures`. Call under the cache's lock."""
        now = self._clock()
        units = self._units(client, now)
        if units < 1.0:
            raise TooManyFailures((1.0 - units) / self._rate)
        if client not in self._buckets and len(self._buckets) >= self._limit:
            self._buckets = {c: v for c, v in self._buckets.items() if self._units(c, now) < self._burst}
            if len(self._buckets) >= self._limit:
                self._buckets.clear()
        self._buckets[client] = (units - 1.0, now)

    def refund(self, client: str) -> None:
        now = self._clock()
        if client in self._buckets:
            self._buckets[client] = (min(self._burst, self._units(client, now) + 1.0), now)


class TokenCache:
    """Remembers which token hashes the store accepted, with their grant, for `ttl` seconds (never
    past the token's expiry), and which it refused for `miss_ttl` seconds; throttles failures.

    Keys are SHA-256 digests so plain tokens do not linger in memory longer than a request.
    """

    def __init__(self, verify: Callable[[str], TokenGrant | None], *, ttl: float = CACHE_SECONDS,
                 miss_ttl: float = MISS_SECONDS, throttle: FailureThrottle | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._verify = verify
        self._ttl = ttl
        self._miss_ttl = miss_ttl
        self._clock = clock
        self._wall = wall
        self._throttle = throttle if throttle is not None else FailureThrottle(clock=clock)
        self._lock = threading.Lock()
        self._known: dict[bytes, tuple[TokenGrant, float]] = {}
        self._unknown: dict[bytes, float] = {}

    def lookup(self, token: str, client: str = "") -> TokenGrant | None:
        """The token's grant, from memory when fresh, else from the store (blocking).

        Raises `TooManyFailures` instead of asking the store when `client` failed too often.
        """
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        with self._lock:
            hit = self._known.get(key)
            if hit is not None and hit[1] > now:
                return hit[0]
            miss = self._unknown.get(key)
            if miss is not None and miss > now:
                return None
            self._throttle.reserve(client)
        grant = self._verify(token)
        with self._lock:
            if grant is None:
                self._known.pop(key, None)
                _bounded_put(self._unknown, key, now + self._miss_ttl, now, MISS_LIMIT,
                             lambda v: v)
                return None
            self._throttle.refund(client)
            self._unknown.pop(key, None)
            until = now + self._ttl
            if grant.expires_at is not None:
                until = min(until, now + (grant.expires_at - self._wall()).total_seconds())
            _bounded_put(self._known, key, (grant, until), now, CACHE_LIMIT, lambda v: v[1])
        return grant


def _bounded_put(table: dict[bytes, V], key: bytes, value: V, now: float, limit: int,
                    deadline: Callable[[V], float]) -> None:
    """`table[key] = value`, first dropping stale entries (or all) when `table` holds `limit`."""
    if key not in table and len(table) >= limit:
        fresh = {k: v for k, v in table.items() if deadline(v) > now}
        table.clear()
        if len(fresh) < limit:
            table.update(fresh)
    table[key] = value


class BearerAuth:
    """Refuses requests without a valid bearer token (401 + `WWW-Authenticate: Bearer`), or whose
    token lacks the scope the request needs (403 `insufficient-scope`).

    On success the token's name is put in the scope under `ACTOR_KEY`: it is the actor recorded in
    the config versions this request creates. `open_paths` need no token.
    """

    def __init__(self, app: ASGIApp, *, tokens: TokenCache, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.tokens = tokens
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths \
                or scope["path"] in SELF_AUTHENTICATED:
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        if token is None:
            await _refuse(send, "missing-token", "this API needs Authorization: Bearer <token> "
                          "(create one with `peel token create NAME`)", 'Bearer realm="peel"')
            return
        client = scope.get("client")
        try:
            grant = await run_in_threadpool(self.tokens.lookup, token, client[0] if client else "")
        except StoreError as exc:
            await _send_problem(send, 503, "store-unavailable", str(exc))
            return
        except TooManyFailures as exc:
            await _send_problem(send, 429, "too-many-token-failures", str(exc),
                                [(b"retry-after", str(math.ceil(exc.retry_after)).encode())])
            return
        if grant is None:
            await _refuse(send, "invalid-token", "the bearer token is unknown, revoked or expired",
                          'Bearer realm="peel", error="invalid_token"')
            return
        needed = required_scope(scope["method"], scope["path"])
        if not grant.allows(needed):
            challenge = f'Bearer realm="peel", error="insufficient_scope", scope="{needed}"'
            await _send_problem(send, 403, "insufficient-scope",
                                f"{scope['method']} {scope['path']} needs a token with the {needed} "
                                f"scope; token {grant.name!r} has {', '.join(sorted(grant.scopes))}",
                                [(b"www-authenticate", challenge.encode())], scope=needed)
            return
        scope[ACTOR_KEY] = grant.name
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"authorization":
            scheme, _, rest = value.decode("latin-1").partition(" ")
            token: str = rest.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


async def _refuse(send: Send, code: str, detail: str, challenge: str) -> None:
    await _send_problem(send, 401, code, detail, [(b"www-authenticate", challenge.encode())])


async def _send_problem(send: Send, status: int, code: str, detail: str,
                        extra: list[tuple[bytes, bytes]] | None = None, **members: Any) -> None:
    headers, body = problems.render(status, code, detail, headers=extra or (), **members)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
