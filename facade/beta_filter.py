"""The beta filter of a route table: untrusted beta values are stripped before a request is routed.

The beta headers and cookies are those some migration of the table names (`RouteTable.beta_headers`,
`beta_cookies`); `TableBetaFilter` makes the filter once per table.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from facade.beta import BetaTrust
from facade.decision import BetaUsers
from routes.migration import Headers

if TYPE_CHECKING:
    from routes.table import RouteTable


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
