"""A migration ready for the request path, and the beta-header filter of a route table.

Built by `routes.compiler` with the route table (header names lower-cased to bytes, statuses in a
frozenset, the salt resolved), so a request only reads values. The proxy asks
`CompiledMigration.decide(...)` which service answers; it never looks at the stage itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from facade.beta import BetaTrust
from facade.decision import Decision, Facts, decide
from facade.model import Fallback, Migration

if TYPE_CHECKING:
    from routes.table import CompiledService, RouteTable

Headers = list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]
# Trusted beta users of one request, by source: ("header", b"x-beta-user") or ("cookie", "beta").
BetaUsers = Mapping[tuple[str, bytes | str], str]
_NO_USERS: BetaUsers = {}


def cookie_value(headers: Iterable[tuple[bytes, bytes]], name: str) -> str | None:
    """The value of cookie `name` in the Cookie header(s), or None."""
    for key, value in headers:
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                k, sep, v = part.strip().partition("=")
                if sep and k == name:
                    return v.strip().strip('"')
    return None


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


class CompiledMigration:
    """The migration of one compiled route: both services and the parsed request keys."""

    __slots__ = ("beta_source", "cohort_cookie", "cohort_header", "fallback", "from_service", "salt",
                 "spec", "statuses", "to_service")

    def __init__(self, spec: Migration, route_name: str, from_service: CompiledService,
                 to_service: CompiledService) -> None:
        self.spec = spec
        self.salt = spec.salt if spec.salt is not None else route_name
        self.from_service = from_service
        self.to_service = to_service
        self.cohort_header = spec.cohort.header.lower().encode("ascii") if spec.cohort.header else None
        self.cohort_cookie = spec.cohort.cookie
        beta = spec.beta
        self.beta_source: tuple[str, bytes | str] | None = None
        if beta is not None:
            self.beta_source = ("header", beta.header.lower().encode("ascii")) if beta.header \
                else ("cookie", beta.cookie or "")
        self.fallback: Fallback = spec.fallback
        self.statuses = frozenset(spec.fallback.statuses)

    def cohort_key(self, headers: Headers, client: str | None) -> str:
        """The sticky key: the configured header or cookie, else the downstream address."""
        value: str | None = None
        if self.cohort_header is not None:
            value = header_value(headers, self.cohort_header)
        elif self.cohort_cookie is not None:
            value = cookie_value(headers, self.cohort_cookie)
        return value if value else (client or "")

    def decide(self, headers: Headers, client: str | None, method: str,
               beta_users: BetaUsers = _NO_USERS, rand: Callable[[], float] | None = None,
               now: float = 0.0) -> Decision:
        """Which side answers this request (`beta_users` holds only trusted values)."""
        user = beta_users.get(self.beta_source) if self.beta_source is not None else None
        return decide(self.spec, Facts(self.cohort_key(headers, client), user, method), self.salt,
                      rand, now)

    def service(self, decision: Decision) -> CompiledService:
        return self.to_service if decision.side == "to" else self.from_service


class BetaFilter:
    """Strips untrusted beta headers and cookies from a request before it is routed.

    `headers` and `cookies` are the beta sources that some migration of the table names. A value
    that `trust` honours stays (and is reported as the request's beta user for that source); any
    other is removed, so neither route matching nor an upstream ever sees it.
    """

    __slots__ = ("cookies", "headers", "trust")

    def __init__(self, headers: frozenset[bytes], cookies: frozenset[str], trust: BetaTrust) -> None:
        self.headers = headers
        self.cookies = cookies
        self.trust = trust

    def __bool__(self) -> bool:
        return bool(self.headers or self.cookies)

    def apply(self, headers: Headers, client: str | None,
              now: float | None = None) -> tuple[list[tuple[bytes, bytes]] | None, BetaUsers]:
        """(the headers without untrusted beta values, or None when nothing was removed; users)."""
        when = time.time() if now is None else now
        users: dict[tuple[str, bytes | str], str] = {}
        out: list[tuple[bytes, bytes]] = []
        removed = False
        for key, value in headers:
            if key in self.headers:
                user = self.trust.user(value.decode("latin-1"), client, when)
                if user is None or ("header", key) in users:
                    # An untrusted value, or a second one (ambiguous): neither steers nor travels.
                    removed = True
                    continue
                users[("header", key)] = user
            elif key == b"cookie" and self.cookies:
                kept: list[str] = []
                dropped = False
                for part in value.decode("latin-1").split(";"):
                    name, sep, raw = part.strip().partition("=")
                    if sep and name in self.cookies:
                        user = self.trust.user(raw.strip().strip('"'), client, when)
                        if user is None or ("cookie", name) in users:
                            dropped = True
                            continue
                        users[("cookie", name)] = user
                    if part.strip():
                        kept.append(part.strip())
                if dropped:
                    removed = True
                    if kept:
                        out.append((key, "; ".join(kept).encode("latin-1")))
                    continue
            out.append((key, value))
        return (out if removed else None), users


class TableBetaFilter:
    """The `BetaFilter` of the route table in use: made once per table, again when it is replaced.

    The data plane asks per request (`for_table(table)`); a table swap is the only time a filter
    is built, since the beta sources are the table's.
    """

    __slots__ = ("_filter", "_table", "trust")

    def __init__(self, trust: BetaTrust) -> None:
        self.trust = trust
        self._table: RouteTable | None = None
        self._filter = BetaFilter(frozenset(), frozenset(), trust)

    def for_table(self, table: RouteTable) -> BetaFilter:
        if table is not self._table:
            self._filter = BetaFilter(table.beta_headers, table.beta_cookies, self.trust)
            self._table = table
        return self._filter
