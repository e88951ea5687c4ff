"""Bearer-token authentication for the admin API, as pure ASGI middleware.

There is no open default: every path but the health probes needs `Authorization: Bearer <token>`
(and `/metrics` too, unless `metrics.open` says a scraper may read it without one).
Tokens are verified by the store (which keeps them hashed); a positive answer is remembered for a
few seconds so a burst of CLI calls costs one query, which also bounds how long a revoked token
keeps working.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.admin.wire import ACTOR_KEY
from gateway.core import problems
from routes.errors import StoreError

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
CACHE_SECONDS = 5.0
CACHE_LIMIT = 1024


class TokenCache:
    """Remembers which token hashes the store accepted, and as whom, for `ttl` seconds.

    Keys are SHA-256 digests so plain tokens do not linger in memory longer than a request.
    """

    def __init__(self, verify: Callable[[str], str | None], *, ttl: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._verify = verify
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._known: dict[bytes, tuple[str, float]] = {}

    def lookup(self, token: str) -> str | None:
        """The token's name, from memory when fresh, else from the store (blocking)."""
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        with self._lock:
            hit = self._known.get(key)
            if hit is not None and hit[1] > now:
                return hit[0]
        name = self._verify(token)
        with self._lock:
            if name is None:
                self._known.pop(key, None)
                return None
            if len(self._known) >= CACHE_LIMIT:
                self._known = {k: v for k, v in self._known.items() if v[1] > now}
                if len(self._known) >= CACHE_LIMIT:
                    self._known.clear()
            self._known[key] = (name, now + self._ttl)
        return name


class BearerAuth:
    """Refuses requests without a valid bearer token (401 + `WWW-Authenticate: Bearer`).

    On success the token's name is put in the scope under `ACTOR_KEY`: it is the actor recorded in
    the config versions this request creates. `open_paths` need no token.
    """

    def __init__(self, app: ASGIApp, *, tokens: TokenCache, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.tokens = tokens
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        if token is None:
            await _refuse(send, "missing-token", "this API needs Authorization: Bearer <token> "
                          "(create one with `peel token create NAME`)", 'Bearer realm="peel"')
            return
        try:
            name = await run_in_threadpool(self.tokens.lookup, token)
        except StoreError as exc:
            body = problems.problem(503, "store-unavailable", str(exc))
            await _send_problem(send, body, [])
            return
        if name is None:
            await _refuse(send, "invalid-token", "the bearer token is unknown or revoked",
                          'Bearer realm="peel", error="invalid_token"')
            return
        scope[ACTOR_KEY] = name
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"authorization":
            scheme, _, rest = value.decode("latin-1").partition(" ")
            token: str = rest.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


async def _refuse(send: Send, code: str, detail: str, challenge: str) -> None:
    await _send_problem(send, problems.problem(401, code, detail),
                        [(b"www-authenticate", challenge.encode())])


async def _send_problem(send: Send, body: dict[str, object], extra: list[tuple[bytes, bytes]]) -> None:
    payload = problems.encode(dict(body))
    headers = [(b"content-type", problems.CONTENT_TYPE.encode()),
               (b"content-length", str(len(payload)).encode()), *extra]
    await send({"type": "http.response.start", "status": int(str(body["status"])), "headers": headers})
    await send({"type": "http.response.body", "body": payload})
