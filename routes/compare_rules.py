"""The compare rules of a migration's shadow: what to compare and what to ignore. Pure data.

    rules = CompareRules.parse({"headers": [...], "ignore": {...}}, "migration.shadow.compare")

Part of the route document (`routes.migration.ShadowSpec.compare`), hence here in `routes/`;
`facade.compare.compare(primary, candidate, rules)` applies them to a pair of answers. Ignore rules
by path (`$.items[*].updated_at`, `$.*.id`, `$..etag`, `headers.date`, `status`) and by value
(built-in patterns `uuid`, `timestamp`, `epoch`, `hex-id`, and operator regexes, all on RE2).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from routes.errors import RuleError
from routes.fields import integer, mapping, sequence, string
from routes.grammar import TOKEN_RE
from routes.regex import Regex, RegexError

# Field-by-field comparison costs CPU in proportion to the body (measured on this project's 2-core
# machine: 0.15-0.2 ms per KiB of differing JSON, parse included; 1 MiB ~200 ms). Larger bodies are
# compared by their bytes alone: at 64 KiB a pair costs ~12 ms at most. Raise it per route.
DEFAULT_MAX_BODY = 64 << 10
MAX_BODY_LIMIT = 16 << 20
DEFAULT_MAX_DIFFERENCES = 50

# Built-in value patterns: the usual sources of noise. Anchored: the whole value must look like one.
BUILTIN_PATTERNS: Mapping[str, str] = {
    "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    # RFC 3339 / ISO 8601 date-times, and the IMF-fixdate of HTTP headers (RFC 9110 5.6.7).
    "timestamp": r"^(?:\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?(?:[Zz]|[+-]\d{2}:?\d{2})?"
                 r"|(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov"
                 r"|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT)$",
    # Unix time in seconds (10 digits, 2001-2286) or milliseconds (13), optionally fractional.
    "epoch": r"^\d{10}(?:\d{3})?(?:\.\d+)?$",
    # Hex identifiers of 16 characters or more (trace ids, object ids, digests).
    "hex-id": r"^[0-9a-fA-F]{16,}$",
}

# Path segments: a key, an index, or a wildcard. `ANY_KEY` and `ANY_INDEX` match one segment,
# `ANY_DEPTH` any number of segments (JSONPath's `..`).
Segment = str | int
ANY_KEY = ("*",)
ANY_INDEX = ("[*]",)
ANY_DEPTH = ("..",)
PatternSegment = str | int | tuple[str]
_PLAIN_KEY_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_PLAIN_KEY = _PLAIN_KEY_FIRST | frozenset("0123456789-")


def key_text(key: str) -> str:
    """A key as a path segment: `.name` for plain names, `["..."]` (JSON-quoted) for the rest."""
    if key and key[0] in _PLAIN_KEY_FIRST and all(c in _PLAIN_KEY for c in key):
        return "." + key
    return "[" + json.dumps(key) + "]"


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A compiled ignore rule by path; `text` is the rule as written."""

    text: str
    segments: tuple[PatternSegment, ...]
    # "headers" or "status" rules address the head; "$" rules the body.
    root: str

    def matches(self, root: str, path: Sequence[Segment]) -> bool:
        return root == self.root and _match(self.segments, 0, path, 0)


def _match(pattern: Sequence[PatternSegment], i: int, path: Sequence[Segment], j: int) -> bool:
    while i < len(pattern):
        seg = pattern[i]
        if seg == ANY_DEPTH:
            # `..x`: the rest of the pattern matches here or at any deeper segment.
            return any(_match(pattern, i + 1, path, k) for k in range(j, len(path) + 1))
        if j >= len(path):
            return False
        got = path[j]
        if seg == ANY_KEY:
            if not isinstance(got, str):
                return False
        elif seg == ANY_INDEX:
            if not isinstance(got, int):
                return False
        elif type(seg) is not type(got) or seg != got:
            return False
        i += 1
        j += 1
    return j == len(path)


def parse_path(text: str) -> PathPattern:
    """Parse an ignore path: `$` then `.key`, `["key"]`, `[3]`, `[*]`, `.*`, `..key`; or `headers.NAME`
    or `status`. Raises ValueError with the reason."""
    if text == "status":
        return PathPattern(text, (), "status")
    if text.startswith("headers."):
        name = text[len("headers."):]
        if not TOKEN_RE.match(name):
            raise ValueError("headers.NAME needs a header name")
        return PathPattern(text, (name.lower(),), "headers")
    if not text.startswith("$"):
        raise ValueError("must start with $ (the body), headers. or be status")
    segments: list[PatternSegment] = []
    i, n = 1, len(text)
    while i < n:
        c = text[i]
        if text.startswith("..", i):
            segments.append(ANY_DEPTH)
            i += 2
            if text.startswith("[", i):
                continue
            i, key = _plain(text, i)
            segments.append(ANY_KEY if key == "*" else key)
        elif c == ".":
            i, key = _plain(text, i + 1)
            segments.append(ANY_KEY if key == "*" else key)
        elif c == "[":
            end = _bracket_end(text, i)
            inner = text[i + 1:end]
            if inner == "*":
                segments.append(ANY_INDEX)
            elif inner.isascii() and inner.isdigit():
                segments.append(int(inner))
            elif inner.startswith('"'):
                try:
                    key = json.loads(inner)
                except json.JSONDecodeError:
                    raise ValueError(f"bad quoted key {inner}") from None
                if not isinstance(key, str):
                    raise ValueError(f"bad quoted key {inner}")
                segments.append(key)
            else:
                raise ValueError(f"[{inner}] must be an index, [*] or a quoted key")
            i = end + 1
        else:
            raise ValueError(f"unexpected {c!r} at {i}")
    if segments and segments[-1] == ANY_DEPTH:
        raise ValueError(".. must be followed by a key")
    return PathPattern(text, tuple(segments), "$")


def _plain(text: str, i: int) -> tuple[int, str]:
    j = i
    while j < len(text) and text[j] not in ".[":
        j += 1
    key = text[i:j]
    if key != "*" and not (key and key[0] in _PLAIN_KEY_FIRST and all(c in _PLAIN_KEY for c in key)):
        raise ValueError(f"bad key {key!r} at {i} (quote other keys: [\"a key\"])")
    return j, key


def _bracket_end(text: str, i: int) -> int:
    if text.startswith('["', i):
        j = i + 2
        while j < len(text):
            if text[j] == "\\":
                j += 2
                continue
            if text[j] == '"':
                if text.startswith('"]', j):
                    return j + 1
                break
            j += 1
        raise ValueError(f"unterminated quoted key at {i}")
    end = text.find("]", i)
    if end < 0:
        raise ValueError(f"unterminated [ at {i}")
    return end


@dataclass(frozen=True, slots=True)
class CompareRules:
    """What to compare and what to ignore, compiled once (off the request path)."""

    headers: tuple[str, ...] = ()
    ignore_paths: tuple[PathPattern, ...] = ()
    # (name, regex): the built-ins by name, operator regexes under their own text.
    ignore_values: tuple[tuple[str, Regex], ...] = ()
    # How many of `ignore_values` are built-ins (they come first): an operator regex may be spelt
    # like a built-in's name.
    builtins: int = 0
    max_body: int = DEFAULT_MAX_BODY
    max_differences: int = DEFAULT_MAX_DIFFERENCES

    @classmethod
    def build(cls, headers: Iterable[str] = (), ignore_paths: Iterable[str] = (),
              ignore_patterns: Iterable[str] = (), ignore_regexes: Iterable[str] = (),
              max_body: int = DEFAULT_MAX_BODY, max_differences: int = DEFAULT_MAX_DIFFERENCES,
              where: str = "compare") -> CompareRules:
        return cls.parse({"headers": list(headers),
                          "ignore": {"paths": list(ignore_paths), "patterns": list(ignore_patterns),
                                     "regexes": list(ignore_regexes)},
                          "max_body": max_body, "max_differences": max_differences}, where)

    @classmethod
    def parse(cls, data: object, where: str) -> CompareRules:
        """From the document's shape; refuses with `RuleError(field, ...)` naming the field."""
        m = mapping(data, where, ("headers", "ignore", "max_body", "max_differences"))
        headers: list[str] = []
        for i, name in enumerate(sequence(m.get("headers", []), f"{where}.headers")):
            if not isinstance(name, str) or not TOKEN_RE.match(name):
                raise RuleError(f"{where}.headers[{i}]", "must be a header name", name)
            if name.lower() in headers:
                raise RuleError(f"{where}.headers[{i}]", "is listed twice", name)
            headers.append(name.lower())
        ignore = mapping(m.get("ignore", {}), f"{where}.ignore", ("paths", "patterns", "regexes"))
        paths: list[PathPattern] = []
        for i, text in enumerate(sequence(ignore.get("paths", []), f"{where}.ignore.paths")):
            field = f"{where}.ignore.paths[{i}]"
            try:
                paths.append(parse_path(string(text, field)))
            except ValueError as exc:
                raise RuleError(field, str(exc), text) from None
        values: list[tuple[str, Regex]] = []
        builtins = 0
        for i, name in enumerate(sequence(ignore.get("patterns", []), f"{where}.ignore.patterns")):
            if name not in BUILTIN_PATTERNS:
                raise RuleError(f"{where}.ignore.patterns[{i}]",
                                f"must be one of {', '.join(BUILTIN_PATTERNS)}", name)
            values.append((name, Regex(BUILTIN_PATTERNS[name])))
            builtins += 1
        for i, text in enumerate(sequence(ignore.get("regexes", []), f"{where}.ignore.regexes")):
            field = f"{where}.ignore.regexes[{i}]"
            try:
                values.append((string(text, field), Regex(text)))
            except RegexError as exc:
                raise RuleError(field, str(exc), text) from None
        max_body = integer(m.get("max_body", DEFAULT_MAX_BODY), f"{where}.max_body", 0, MAX_BODY_LIMIT)
        limit = integer(m.get("max_differences", DEFAULT_MAX_DIFFERENCES), f"{where}.max_differences",
                        1, 1000)
        return cls(tuple(headers), tuple(paths), tuple(values), builtins, max_body, limit)

    def to_dict(self) -> dict[str, Any]:
        """The canonical form, defaults left out."""
        out: dict[str, Any] = {}
        if self.headers:
            out["headers"] = list(self.headers)
        ignore: dict[str, Any] = {}
        if self.ignore_paths:
            ignore["paths"] = [p.text for p in self.ignore_paths]
        patterns = [name for name, _ in self.ignore_values[:self.builtins]]
        regexes = [name for name, _ in self.ignore_values[self.builtins:]]
        if patterns:
            ignore["patterns"] = patterns
        if regexes:
            ignore["regexes"] = regexes
        if ignore:
            out["ignore"] = ignore
        if self.max_body != DEFAULT_MAX_BODY:
            out["max_body"] = self.max_body
        if self.max_differences != DEFAULT_MAX_DIFFERENCES:
            out["max_differences"] = self.max_differences
        return out

    def ignored(self, root: str, path: Sequence[Segment]) -> bool:
        return any(p.matches(root, path) for p in self.ignore_paths)

    def noise_value(self, a: str, b: str) -> bool:
        """Both values match one of the ignore patterns (the same one)."""
        return any(regex.found(a) and regex.found(b) for _, regex in self.ignore_values)


NO_RULES = CompareRules()
