"""Compare the answer of `from` (primary) with the answer of `to` (candidate) for one request. Pure.

    rules = CompareRules.parse({"headers": [...], "ignore": {...}}, "migration.shadow.compare")
    compare(primary: Reply, candidate: Reply, rules) -> Comparison

What is compared: the status, the headers the rules name (case-insensitive, repeated fields joined
with ", "), and the body. Two JSON bodies (`application/json` or `+json` on both sides, parsing
cleanly, no NaN/Infinity) are compared field by field: objects key by key whatever their order,
arrays element by element, one `Difference` per differing leaf with its JSONPath-like path
(`$.items[2].price`) and its field (`$.items[*].price`, the path with indices generalised, which is
what the noise baseline counts). Any other body, and any body over `rules.max_body`, is compared by
its bytes alone (path `$`, SHA-256 excerpts); two identical bodies are not parsed at all.

Ignore rules, compiled once by `CompareRules.parse`:
- by path: `$.items[*].updated_at`, `$.*.id` (any key), `$..etag` (at any depth), `headers.date`;
  a rule that matches a node skips its whole subtree;
- by value: a value difference (two strings or two numbers) is ignored when both values match the
  same pattern: built-in ones by name (`uuid`, `timestamp`, `epoch`, `hex-id`) and operator
  regexes. Every pattern runs through RE2 (`routes.regex.Regex`): the data compared is whatever
  the services answered, and a backtracking engine would let one answer stall the loop.

The result is bounded: at most `rules.max_differences` differences are kept (`total` counts them
all), value excerpts are cut to `EXCERPT` characters, and the values of credential headers
(Authorization, Cookie, Set-Cookie, Proxy-Authorization) are never copied. The walk is iterative,
so a deeply nested body costs no recursion.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from routes.errors import RuleError
from routes.fields import integer, mapping, sequence, string
from routes.grammar import TOKEN_RE
from routes.regex import Regex, RegexError

Kind = Literal["missing", "extra", "type", "value"]
BodyMode = Literal["json", "hash", "oversize"]
# Field-by-field comparison costs CPU in proportion to the body (measured on this project's 2-core
# machine: 0.15-0.2 ms per KiB of differing JSON, parse included; 1 MiB ~200 ms). Larger bodies are
# compared by their bytes alone: at 64 KiB a pair costs ~12 ms at most. Raise it per route.
DEFAULT_MAX_BODY = 64 << 10
MAX_BODY_LIMIT = 16 << 20
DEFAULT_MAX_DIFFERENCES = 50
EXCERPT = 64
REDACTED = "<redacted>"
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})

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
class Reply:
    """One answer as the data plane saw it: status, raw header fields, and the buffered body."""

    status: int
    headers: Sequence[tuple[bytes, bytes]] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Difference:
    """One difference: where (`path`, and `field` with indices as `[*]`), what kind, the excerpts.

    `missing`: in the primary only; `extra`: in the candidate only; `type`: JSON types differ;
    `value`: same type, different value. Excerpts are JSON text cut to `EXCERPT` characters.
    """

    path: str
    field: str
    kind: Kind
    primary: str | None = None
    candidate: str | None = None


@dataclass(frozen=True, slots=True)
class Comparison:
    """The differences of one pair, the first `max_differences` of `total`, and how the body was read."""

    differences: tuple[Difference, ...]
    total: int
    body: BodyMode

    @property
    def same(self) -> bool:
        return self.total == 0

    @property
    def truncated(self) -> bool:
        return self.total > len(self.differences)

    def fields(self) -> frozenset[str]:
        """The distinct fields that differ (of the kept differences)."""
        return frozenset(d.field for d in self.differences)


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
# Scalars that compare equal only to their own JSON type when their Python types are the same
# (True == 1 in Python, hence the type check before ==).
_SCALARS = frozenset({str, int, float, bool, type(None)})


class _Collector:
    __slots__ = ("differences", "limit", "total")

    def __init__(self, limit: int) -> None:
        self.differences: list[Difference] = []
        self.limit = limit
        self.total = 0

    def add(self, path: str, field: str, kind: Kind, primary: str | None, candidate: str | None) -> None:
        self.total += 1
        if len(self.differences) < self.limit:
            self.differences.append(Difference(path, field, kind, primary, candidate))


def _excerpt(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= EXCERPT else text[:EXCERPT - 1] + "…"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _header_values(headers: Sequence[tuple[bytes, bytes]], wanted: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    wanted_set = set(wanted)
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        if name in wanted_set:
            found.setdefault(name, []).append(raw_value.decode("latin-1").strip())
    return {name: ", ".join(values) for name, values in found.items()}


def _reject_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _is_json(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or (media.startswith(b"application/")
                                                     and media.endswith(b"+json"))
    return False


def _parse_json(body: bytes) -> tuple[bool, Any]:
    try:
        return True, json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False, None


def _compare_head(primary: Reply, candidate: Reply, rules: CompareRules, out: _Collector) -> None:
    if primary.status != candidate.status and not rules.ignored("status", ()):
        out.add("status", "status", "value", str(primary.status), str(candidate.status))
    if not rules.headers:
        return
    a = _header_values(primary.headers, rules.headers)
    b = _header_values(candidate.headers, rules.headers)
    for name in rules.headers:
        if rules.ignored("headers", (name,)):
            continue
        va, vb = a.get(name), b.get(name)
        if va == vb:
            continue
        path = f"headers.{name}"
        secret = name in CREDENTIAL_HEADERS
        ea = None if va is None else REDACTED if secret else _excerpt(va)
        eb = None if vb is None else REDACTED if secret else _excerpt(vb)
        if va is None:
            out.add(path, path, "extra", None, eb)
        elif vb is None:
            out.add(path, path, "missing", ea, None)
        elif not rules.noise_value(va, vb):
            out.add(path, path, "value", ea, eb)


def _texts(segments: Sequence[Segment]) -> tuple[str, str]:
    """The path (`$.items[2].price`) and the field (`$.items[*].price`) of a node."""
    path, field = ["$"], ["$"]
    for seg in segments:
        if isinstance(seg, int):
            path.append(f"[{seg}]")
            field.append("[*]")
        else:
            text = key_text(seg)
            path.append(text)
            field.append(text)
    return "".join(path), "".join(field)


# (primary, candidate, segments, what): `what` is None to compare the two, or "missing"/"extra" for
# a node on one side only, recorded when popped so differences come out in document order.
_Node = tuple[Any, Any, tuple[Segment, ...], Kind | None]


def _compare_json(a: Any, b: Any, rules: CompareRules, out: _Collector) -> None:
    """Walk both documents at once, iteratively. Equal scalars of one type are passed over in line
    (most of a document); containers and differing values go through the stack; the texts of a
    path are built only for a difference that is kept."""
    paths = tuple(p for p in rules.ignore_paths if p.root == "$")

    def ignored(segments: tuple[Segment, ...]) -> bool:
        return any(p.matches("$", segments) for p in paths)

    def add(segments: tuple[Segment, ...], kind: Kind, va: Any, vb: Any, has_a: bool = True,
            has_b: bool = True) -> None:
        out.total += 1
        if len(out.differences) < out.limit:
            path, field = _texts(segments)
            out.differences.append(Difference(path, field, kind, _excerpt(va) if has_a else None,
                                              _excerpt(vb) if has_b else None))

    stack: list[_Node] = [(a, b, (), None)]
    while stack:
        va, vb, segs, what = stack.pop()
        if paths and segs and ignored(segs):
            continue
        if what == "missing":
            add(segs, what, va, None, has_b=False)
            continue
        if what == "extra":
            add(segs, what, None, vb, has_a=False)
            continue
        ta, tb = type(va), type(vb)
        if ta is dict and tb is dict:
            children: list[_Node] = []
            for key, x in va.items():
                if key not in vb:
                    children.append((x, None, (*segs, key), "missing"))
                    continue
                y = vb[key]
                tx = type(x)
                if tx is type(y) and tx in _SCALARS and x == y:
                    continue
                children.append((x, y, (*segs, key), None))
            children.extend((None, y, (*segs, key), "extra") for key, y in vb.items() if key not in va)
            stack.extend(reversed(children))
        elif ta is list and tb is list:
            common = min(len(va), len(vb))
            children = []
            for i in range(common):
                x, y = va[i], vb[i]
                tx = type(x)
                if tx is type(y) and tx in _SCALARS and x == y:
                    continue
                children.append((x, y, (*segs, i), None))
            children.extend((va[i], None, (*segs, i), "missing") for i in range(common, len(va)))
            children.extend((None, vb[i], (*segs, i), "extra") for i in range(common, len(vb)))
            stack.extend(reversed(children))
        else:
            kind_a, kind_b = _json_type(va), _json_type(vb)
            if kind_a != kind_b:
                add(segs, "type", va, vb)
            elif va != vb:
                if kind_a in ("string", "number"):
                    sa = va if kind_a == "string" else json.dumps(va)
                    sb = vb if kind_a == "string" else json.dumps(vb)
                    if rules.noise_value(sa, sb):
                        continue
                add(segs, "value", va, vb)


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()[:16]


def compare(primary: Reply, candidate: Reply, rules: CompareRules = NO_RULES) -> Comparison:
    """The differences between two answers to the same request, under `rules`."""
    out = _Collector(rules.max_differences)
    _compare_head(primary, candidate, rules, out)
    mode: BodyMode = "hash"
    if rules.ignored("$", ()):
        return Comparison(tuple(out.differences), out.total, mode)
    if len(primary.body) > rules.max_body or len(candidate.body) > rules.max_body:
        mode = "oversize"
    elif primary.body == candidate.body:
        # The same bytes: no difference to find, and no need to parse (the common healthy case).
        mode = "json" if _is_json(primary.headers) and _is_json(candidate.headers) else "hash"
    elif _is_json(primary.headers) and _is_json(candidate.headers):
        ok_a, a = _parse_json(primary.body)
        ok_b, b = _parse_json(candidate.body)
        if ok_a and ok_b:
            mode = "json"
            _compare_json(a, b, rules, out)
    if mode != "json" and primary.body != candidate.body:
        out.add("$", "$", "value", _digest(primary.body), _digest(candidate.body))
    return Comparison(tuple(out.differences), out.total, mode)
