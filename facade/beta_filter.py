"""The beta filter of a route table: untrusted beta values are stripped before a request is routed.

The beta headers and cookies are those some migration of the table names (`RouteTable.beta_headers`,
`beta_cookies`); `TableBetaFilter` makes the filter once per table.

Only the exact spelling of a beta source may steer, and only with a value `BetaTrust` honours.
Every other spelling that an application framework would read as the same name is stripped
whoever sent it, since the upstream would take it for the beta value that Peel did not check:

- a header with `_` for `-` (`X_Beta_User`: WSGI/CGI and PHP map both to `HTTP_X_BETA_USER`);
- a cookie whose name, read leniently (`routes.grammar.cookie_name_key`: percent-encoding, `.` or
  space for `_`, `[...]`, another case), is a beta cookie's: `%62eta=ada`, `BETA=ada`; and a
  cookie pair that hides a beta cookie after a comma (`a=1,beta=ada`, split as two cookies by
  RFC 2965 parsers) is dropped whole.

Spaces around a cookie name are no other spelling: the shared grammar (`routes.grammar.cookie_pairs`,
which route matching reads) trims them, so `beta =ada` is the beta cookie, checked like `beta=ada`.

A value that is not ASCII is untrusted like any other (never an error). `TableBetaFilter.stripped`
counts the values removed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from facade.beta import BetaTrust
from facade.decision import BetaUsers
from routes.grammar import cookie_name_key, cookie_part_keys
from routes.migration import Headers

if TYPE_CHECKING:
    from routes.table import RouteTable


class StripCount:
    """How many beta values were stripped (untrusted, ambiguous or spelt otherwise)."""

    __slots__ = ("stripped",)

    def __init__(self) -> None:
        self.stripped = 0


class BetaFilter:
    """Strips untrusted beta headers and cookies from a request before it is routed.

    `headers` and `cookies` are the beta sources that some migration of the table names. A value
    that `trust` honours, under the exact name, stays (and is reported as the request's beta user
    for that source); any other is removed, so neither route matching nor an upstream ever sees it.
    """

    __slots__ = ("_cookie_keys", "_dashed", "cookies", "count", "headers", "trust")

    def __init__(self, headers: frozenset[bytes], cookies: frozenset[str], trust: BetaTrust,
                 count: StripCount | None = None) -> None:
        self.headers = headers
        self.cookies = cookies
        self.trust = trust
        self.count = count if count is not None else StripCount()
        # The spellings a framework folds together: "_" read as "-", cookie names read leniently.
        self._dashed = frozenset(h.replace(b"_", b"-") for h in headers)
        self._cookie_keys = frozenset(cookie_name_key(c) for c in cookies)

    def __bool__(self) -> bool:
        return bool(self.headers or self.cookies)

    def apply(self, headers: Headers, client: str | None,
              now: float | None = None) -> tuple[list[tuple[bytes, bytes]] | None, BetaUsers]:
        """(the headers without untrusted beta values, or None when nothing was removed; users)."""
        when = time.time() if now is None else now
        users: dict[tuple[str, bytes | str], str] = {}
        out: list[tuple[bytes, bytes]] = []
        stripped = 0
        dashed = self._dashed
        for key, value in headers:
            if key in self.headers:
                user = self.trust.user(value.decode("latin-1"), client, when)
                if user is None or ("header", key) in users:
                    # An untrusted value, or a second one (ambiguous): neither steers nor travels.
                    stripped += 1
                    continue
                users[("header", key)] = user
            elif dashed and (b"_" in key or key in dashed) and key.replace(b"_", b"-") in dashed:
                stripped += 1  # another spelling of a beta header
                continue
            elif key == b"cookie" and self.cookies:
                kept, dropped = self._cookies(value.decode("latin-1"), client, when, users)
                if dropped:
                    stripped += dropped
                    if kept:
                        out.append((key, "; ".join(kept).encode("latin-1")))
                    continue
            out.append((key, value))
        if stripped:
            self.count.stripped += stripped
        return (out if stripped else None), users

    def _cookies(self, value: str, client: str | None, when: float,
                 users: dict[tuple[str, bytes | str], str]) -> tuple[list[str], int]:
        """(the parts of one Cookie header that stay, how many were dropped)."""
        kept: list[str] = []
        dropped = 0
        keys = self._cookie_keys
        for part in value.split(";"):
            part = part.strip()
            if not part:
                continue
            if not keys.isdisjoint(cookie_part_keys(part)):
                name, sep, raw = part.partition("=")
                name = name.strip()
                if not (sep and name in self.cookies and "," not in part):
                    dropped += 1  # another spelling of a beta cookie, or one hidden after a comma
                    continue
                user = self.trust.user(raw.strip().strip('"'), client, when)
                if user is None or ("cookie", name) in users:
                    dropped += 1
                    continue
                users[("cookie", name)] = user
            kept.append(part)
        return kept, dropped


class TableBetaFilter:
    """The `BetaFilter` of the route table in use: made once per table, again when it is replaced.

    The data plane asks per request (`for_table(table)`); a table swap is the only time a filter
    is built, since the beta sources are the table's. `stripped` counts across swaps.
    """

    __slots__ = ("_count", "_filter", "_table", "trust")

    def __init__(self, trust: BetaTrust) -> None:
        self.trust = trust
        self._table: RouteTable | None = None
        self._count = StripCount()
        self._filter = BetaFilter(frozenset(), frozenset(), trust, self._count)

    @property
    def stripped(self) -> int:
        """Beta values stripped since start (untrusted, ambiguous or another spelling)."""
        return self._count.stripped

    def for_table(self, table: RouteTable) -> BetaFilter:
        if table is not self._table:
            self._filter = BetaFilter(table.beta_headers, table.beta_cookies, self.trust, self._count)
            self._table = table
        return self._filter
