"""Compiled rewrites: the path sent upstream and the header edits in both directions.

Built once per route when the table is compiled; per request a route calls `rewrite_path(path)` and
`request_headers.apply(headers)` / `response_headers.apply(headers)`. A route without a rewrite
shares `identity_path` and `NO_EDIT`, which cost one call and allocate nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from routes.model import HeaderRules, Match, Rewrite
from routes.regex import Substitution

PathRewrite = Callable[[str], str]
HeaderList = list[tuple[bytes, bytes]]


def identity_path(path: str) -> str:
    """The path unchanged: the rewrite of every route that has none."""
    return path


class PrefixRewrite:
    """Replace the matched `path_prefix` with another prefix.

    The rest of the path is kept as it came, on a segment boundary: with prefix `/orders`,
    replacement `/` turns `/orders/1` into `/1` and `/orders` into `/`; replacement `/api` gives
    `/api/1` and `/api`. A trailing slash in the request stays (`/orders/` → `/api/`). The result
    always starts with `/` and never gains a `//`.
    """

    __slots__ = ("_base", "_cut", "prefix", "replacement")

    def __init__(self, prefix: str, replacement: str) -> None:
        self.prefix = prefix
        self.replacement = replacement
        # With prefix `/` the whole path is the rest; otherwise the rest is "" or starts with "/".
        self._cut = 0 if prefix == "/" else len(prefix)
        self._base = replacement.rstrip("/")

    def __call__(self, path: str) -> str:
        cut = self._cut
        if cut:
            if not path.startswith(self.prefix) or (len(path) > cut and path[cut] != "/"):
                return path  # not a path this route matched: leave it alone rather than mangle it
            rest = path[cut:]
        else:
            rest = path
        if not rest:
            return self.replacement
        return self._base + rest if rest[0] == "/" else f"{self._base}/{rest}"


class RegexRewrite:
    """Replace the first match of a regex in the path (`re.sub` with `count=1`, run by RE2).

    The replacement takes `\\1`-`\\99`, `\\g<n>` and `\\g<name>` (`routes.regex.Substitution`). The
    result must be an origin-form path, so a result not starting with `/` gets one, and a leading
    run of slashes is merged into one (an upstream could read `//host/x` as a host).
    """

    __slots__ = ("_sub", "replacement")

    def __init__(self, pattern: str, replacement: str) -> None:
        self._sub = Substitution(pattern, replacement)
        self.replacement = replacement

    def __call__(self, path: str) -> str:
        result = self._sub(path)
        if result.startswith("//"):
            return "/" + result.lstrip("/")
        return result if result.startswith("/") else "/" + result


def compile_path_rewrite(match: Match, rewrite: Rewrite) -> PathRewrite:
    """The path rewrite of a route, or `identity_path` when the route rewrites no path."""
    if rewrite.path_prefix is not None and match.path_prefix is not None:
        return PrefixRewrite(match.path_prefix, rewrite.path_prefix)
    if rewrite.path_regex is not None and rewrite.replacement is not None:
        return RegexRewrite(rewrite.path_regex, rewrite.replacement)
    return identity_path


class HeaderEdit:
    """Header rules compiled for ASGI header lists: remove, then set (replace), then add.

    Names compare case-insensitively. `apply` never changes the list it is given; it returns that
    same list when there is nothing to do, a new one otherwise.
    """

    __slots__ = ("_append", "_drop")

    def __init__(self, drop: frozenset[bytes], append: tuple[tuple[bytes, bytes], ...]) -> None:
        self._drop = drop
        self._append = append

    def __bool__(self) -> bool:
        return bool(self._drop or self._append)

    def apply(self, headers: HeaderList) -> HeaderList:
        drop = self._drop
        if drop:
            out = [h for h in headers if h[0].lower() not in drop]
        elif self._append:
            out = list(headers)
        else:
            return headers
        out.extend(self._append)
        return out


NO_EDIT = HeaderEdit(frozenset(), ())


def compile_header_rules(rules: HeaderRules) -> HeaderEdit:
    """Pre-encode a route's header rules; every `set` name also drops the request's own values."""
    if not rules:
        return NO_EDIT
    drop = {name.lower().encode("latin-1") for name in rules.remove}
    drop.update(name.lower().encode("latin-1") for name, _ in rules.set)
    append = tuple((name.lower().encode("latin-1"), value.encode("latin-1"))
                   for name, value in (*rules.set, *rules.add))
    return HeaderEdit(frozenset(drop), append)
