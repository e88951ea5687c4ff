"""Compiled predicates of a route's match: host, path, methods, headers, query parameters, cookies.

Everything here is built once when a route table is compiled (regexes compiled, names lower-cased,
path patterns split into segments) and then only read per request. The route table's index
(`routes.table`) finds candidate routes by host and path; these objects answer the rest, and each
also answers "does this route match this request" on its own, which the tests use as the reference
the index must agree with.

Semantics, as documented for operators:

- host: `api.example.com` matches that name exactly (the request host arrives lower-case, without
  port); `*.example.com` matches any name ending in `.example.com` with at least one more label,
  never `example.com` itself. A route without hosts matches any host.
- path: `path` is exact; `path_prefix` matches on a segment boundary (`/orders` matches `/orders`,
  `/orders/` and `/orders/1`, never `/ordersx`; `/` matches every path); `path_template`
  `/orders/{id}` matches when every literal segment is equal and each `{param}` fills exactly one
  non-empty segment; `path_regex` is searched (unanchored), so anchor it yourself with `^` and `$`.
  Every regex here is RE2 (`routes.regex`): linear in the input, so no path or value a client
  sends can stall a worker.
- methods: any of the listed ones; none listed means any method. A route that lists `GET` also
  answers `HEAD` (RFC 9110 section 9.3.2: HEAD is GET without the body), so a migrated GET route
  never leaves its HEAD requests behind on the legacy service.
- headers (names case-insensitive), query parameters (percent-decoded, `+` read as a space) and
  cookies (from every `Cookie` header): `value` is an exact comparison, `regex` is searched, and
  `present` asks whether the name occurs at all. When a name occurs several times, `value` and
  `regex` hold if any one occurrence matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote_to_bytes

from routes.grammar import cookie_pairs
from routes.model import FieldMatch, Match
from routes.regex import Regex

Headers = Sequence[tuple[bytes, bytes]]

# Rank of the path kinds on a tie of literal segments (precedence rule 3); a route without a path
# predicate accepts every path and so comes last.
KIND_RANK = {"exact": 0, "template": 1, "prefix": 2, "regex": 3, "any": 4}

# Characters with a meaning in a regex (RE2 or Python), outside a character class.
_REGEX_META = frozenset(".^$*+?{}[]\\|()")
_QUANTIFIERS = frozenset("*+?{")


def host_matches(pattern: str, host: str) -> bool:
    """Whether a route host (`name` or `*.suffix`) matches a lower-case request host."""
    if pattern.startswith("*."):
        dotted = pattern[1:]
        return len(host) > len(dotted) and host.endswith(dotted)
    return host == pattern


def regex_literal_segments(pattern: str) -> tuple[str, ...]:
    """The whole path segments every match of an anchored path regex must start with.

    `^/orders/\\d+$` gives `("orders",)`: any path it matches starts with `/orders/`. The scan is
    deliberately conservative (it stops at the first character with a regex meaning, drops a
    literal that a quantifier follows, and gives up on any alternation), because the answer places
    the route in the index and counts as its literal segments for precedence: too few only costs
    a regex search, too many would hide the route.
    """
    if pattern.startswith("^"):
        i = 1
    elif pattern.startswith("\\A"):
        i = 2
    else:
        return ()
    if "|" in pattern:
        return ()
    chars: list[str] = []
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1:i + 2]
            # An escaped ASCII punctuation character is that character; `\d`, `\1`, `\b`... are not.
            if not nxt or not nxt.isascii() or nxt.isalnum() or nxt == "_":
                break
            chars.append(nxt)
            i += 2
            continue
        if c in _REGEX_META:
            break
        chars.append(c)
        i += 1
    if i < n and pattern[i] in _QUANTIFIERS and chars:
        chars.pop()
    text = "".join(chars)
    if not text.startswith("/"):
        return ()
    # The last piece is not known to be a whole segment: `^/orders` also matches `/ordersx`.
    return tuple(text.split("/")[1:-1])


def _split(kind: str, path: str) -> tuple[str, ...]:
    """The segments of an exact path or a prefix (a prefix `/` has none, an exact `/` one, empty)."""
    return () if kind == "prefix" and path == "/" else tuple(path[1:].split("/"))


class PathPattern:
    """One compiled path predicate.

    `segments` is where the route hangs in the index's segment trie (None marks a `{param}`);
    `literals` is the number of non-empty literal segments, which precedence compares. An exact
    path's or a prefix's segments are its pattern split, again each time the index places the route
    (once per table build or edit of that route): kept, they were a tuple a route (0.5 MiB for
    10,000 routes) that nothing on the request path reads.
    """

    __slots__ = ("_segments", "kind", "literals", "param_positions", "pattern", "regex")

    def __init__(self, match: Match) -> None:
        self.regex: Regex | None = None
        self.param_positions: tuple[tuple[int, str], ...] = ()
        segments: tuple[str | None, ...]
        # kept for the kinds whose segments are not the pattern split (`segments`)
        self._segments: tuple[str | None, ...] | None = None
        if match.path is not None:
            self.kind, self.pattern = "exact", match.path
            segments = _split("exact", match.path)
        elif match.path_prefix is not None:
            self.kind, self.pattern = "prefix", match.path_prefix
            segments = _split("prefix", match.path_prefix)
        elif match.path_template is not None:
            self.kind, self.pattern = "template", match.path_template
            raw = match.path_template[1:].split("/")
            segments = tuple(None if s.startswith("{") else s for s in raw)
            self.param_positions = tuple((i, s[1:-1]) for i, s in enumerate(raw) if s.startswith("{"))
        elif match.path_regex is not None:
            self.kind, self.pattern = "regex", match.path_regex
            self.regex = Regex(match.path_regex)
            segments = regex_literal_segments(match.path_regex)
        else:
            self.kind, self.pattern = "any", ""
            segments = ()
        if self.kind not in ("exact", "prefix"):
            self._segments = segments
        self.literals = sum(1 for s in segments if s)

    @property
    def segments(self) -> tuple[str | None, ...]:
        kept = self._segments
        return _split(self.kind, self.pattern) if kept is None else kept

    @property
    def at_end(self) -> bool:
        """True when the route matches only paths that end at its trie node (exact, template)."""
        return self.kind in ("exact", "template")

    def matches(self, path: str) -> bool:
        """The reference check, independent of the index."""
        kind = self.kind
        if kind == "exact":
            return path == self.pattern
        if kind == "prefix":
            p = self.pattern
            return p == "/" or path == p or path.startswith(p + "/")
        if kind == "template":
            parts = path[1:].split("/")
            if len(parts) != len(self.segments):
                return False
            return all(part != "" if seg is None else part == seg
                       for seg, part in zip(self.segments, parts, strict=True))
        if kind == "regex":
            assert self.regex is not None
            return self.regex.found(path)
        return True

    def params(self, path: str) -> dict[str, str]:
        """The `{param}` values a template captured from a path it matched (empty for other kinds)."""
        if not self.param_positions:
            return {}
        parts = path[1:].split("/")
        return {name: parts[i] for i, name in self.param_positions if i < len(parts)}


class FieldPredicate:
    """A compiled query or cookie `FieldMatch`, tested against every value the name has (or None)."""

    __slots__ = ("name", "present", "regex", "value")

    def __init__(self, spec: FieldMatch) -> None:
        self.name = spec.name
        self.value = spec.value
        self.regex = Regex(spec.regex) if spec.regex is not None else None
        self.present = spec.present

    def test(self, values: list[str] | None) -> bool:
        if self.present is not None:
            return (values is not None) is self.present
        if values is None:
            return False
        if self.regex is not None:
            found = self.regex.found
            return any(found(v) for v in values)
        return self.value in values


class HeaderPredicate:
    """A compiled header `FieldMatch`, on raw bytes as in the ASGI header list.

    The name is lower-cased and the exact value latin-1 encoded here, so that testing a request
    decodes nothing unless a regex has to read a value.
    """

    __slots__ = ("name", "present", "regex", "value")

    def __init__(self, spec: FieldMatch) -> None:
        self.name = spec.name.lower().encode("latin-1")
        self.value = spec.value.encode("latin-1") if spec.value is not None else None
        self.regex = Regex(spec.regex) if spec.regex is not None else None
        self.present = spec.present

    def test(self, values: list[bytes] | None) -> bool:
        if self.present is not None:
            return (values is not None) is self.present
        if values is None:
            return False
        if self.regex is not None:
            found = self.regex.found
            return any(found(v.decode("latin-1")) for v in values)
        return self.value in values


def _unquote(text: str) -> str:
    # `+` is a space in form-encoded queries; escapes are UTF-8 (invalid bytes become U+FFFD).
    if "%" in text:
        return unquote_to_bytes(text.replace("+", " ")).decode("utf-8", "replace")
    return text.replace("+", " ") if "+" in text else text


class RequestFacts:
    """The headers, query parameters and cookies of one request, each parsed on first use.

    Most routes have no such predicates, so a lookup builds this only when a candidate needs it,
    and parses only the part that candidate asks about. Header names are lower-cased here, so a
    caller may pass them in any case.
    """

    __slots__ = ("_cookies", "_headers", "_query", "raw_headers", "raw_query")

    def __init__(self, raw_query: bytes, raw_headers: Headers) -> None:
        self.raw_query = raw_query
        self.raw_headers = raw_headers
        self._headers: dict[bytes, list[bytes]] | None = None
        self._query: dict[str, list[str]] | None = None
        self._cookies: dict[str, list[str]] | None = None

    def headers(self) -> dict[bytes, list[bytes]]:
        parsed = self._headers
        if parsed is None:
            parsed = self._headers = {}
            for name, value in self.raw_headers:
                key = name.lower()
                values = parsed.get(key)
                if values is None:
                    parsed[key] = [value]
                else:
                    values.append(value)
        return parsed

    def query(self) -> dict[str, list[str]]:
        parsed = self._query
        if parsed is None:
            parsed = self._query = {}
            # latin-1 maps bytes to characters one to one; escapes are decoded as UTF-8 below.
            text = self.raw_query.decode("latin-1")
            plain = "%" not in text and "+" not in text
            for pair in text.split("&"):
                if not pair:
                    continue
                name, _, value = pair.partition("=")
                if not plain:
                    name, value = _unquote(name), _unquote(value)
                values = parsed.get(name)
                if values is None:
                    parsed[name] = [value]
                else:
                    values.append(value)
        return parsed

    def cookies(self) -> dict[str, list[str]]:
        parsed = self._cookies
        if parsed is None:
            parsed = self._cookies = {}
            for header in self.headers().get(b"cookie", ()):
                for name, value in cookie_pairs(header.decode("latin-1")):
                    parsed.setdefault(name, []).append(value)
        return parsed


class FieldChecks:
    """The header, query and cookie predicates of one route; all must hold."""

    __slots__ = ("cookies", "headers", "query")

    def __init__(self, match: Match) -> None:
        self.headers = tuple(HeaderPredicate(p) for p in match.headers)
        self.query = tuple(FieldPredicate(p) for p in match.query)
        self.cookies = tuple(FieldPredicate(p) for p in match.cookies)

    def __bool__(self) -> bool:
        return bool(self.headers or self.query or self.cookies)

    def accepts(self, facts: RequestFacts) -> bool:
        if self.headers:
            headers = facts.headers()
            for h in self.headers:
                if not h.test(headers.get(h.name)):
                    return False
        if self.query:
            query = facts.query()
            for p in self.query:
                if not p.test(query.get(p.name)):
                    return False
        if self.cookies:
            cookies = facts.cookies()
            for p in self.cookies:
                if not p.test(cookies.get(p.name)):
                    return False
        return True


def compile_methods(methods: Sequence[str]) -> frozenset[str] | None:
    """The set of accepted methods, None for any; GET brings HEAD along (see the module docstring)."""
    if not methods:
        return None
    accepted = set(methods)
    if "GET" in accepted:
        accepted.add("HEAD")
    return frozenset(accepted)


class CompiledMatch:
    """All predicates of one route, compiled; `matches` is the whole check without any index."""

    __slots__ = ("fields", "hosts", "methods", "path", "predicate_count")

    def __init__(self, match: Match) -> None:
        self.hosts = match.hosts
        self.path = PathPattern(match)
        self.methods = compile_methods(match.methods)
        fields = FieldChecks(match)
        self.fields: FieldChecks | None = fields if fields else None
        # Precedence rule 4: the method list counts once, each field predicate once.
        self.predicate_count = (1 if match.methods else 0) + len(match.headers) + len(match.query) + \
            len(match.cookies)

    def host_pattern(self, host: str) -> str | None:
        """The most specific of this route's hosts that matches `host` (exact, then longest suffix).

        Returns "" for a route without hosts (it matches any host) and None when no host matches.
        """
        if not self.hosts:
            return ""
        if host in self.hosts:
            return host
        wild = [p for p in self.hosts if p.startswith("*.") and host_matches(p, host)]
        return max(wild, key=len) if wild else None

    def matches(self, method: str, host: str, path: str, facts: RequestFacts) -> bool:
        if self.host_pattern(host) is None:
            return False
        if self.methods is not None and method not in self.methods:
            return False
        if not self.path.matches(path):
            return False
        return self.fields is None or self.fields.accepts(facts)
