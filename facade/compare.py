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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from routes.compare_rules import (
    ANY_DEPTH,
    ANY_INDEX,
    ANY_KEY,
    BUILTIN_PATTERNS,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_DIFFERENCES,
    MAX_BODY_LIMIT,
    NO_RULES,
    CompareRules,
    PathPattern,
    Segment,
    key_text,
    parse_path,
)

# The rules live with the route document (routes/); re-exported here for the comparison's callers.
__all__ = ["ANY_DEPTH", "ANY_INDEX", "ANY_KEY", "BUILTIN_PATTERNS", "DEFAULT_MAX_BODY",
           "DEFAULT_MAX_DIFFERENCES", "MAX_BODY_LIMIT", "NO_RULES", "CompareRules", "Comparison",
           "Difference", "PathPattern", "Reply", "compare", "key_text", "parse_path"]

Kind = Literal["missing", "extra", "type", "value"]
BodyMode = Literal["json", "hash", "oversize"]
EXCERPT = 64
REDACTED = "<redacted>"
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


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
