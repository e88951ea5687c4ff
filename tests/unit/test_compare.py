"""facade.compare: status, chosen headers, JSON field by field, hashes, ignore rules, bounds."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facade.compare import (
    ANY_DEPTH,
    EXCERPT,
    REDACTED,
    CompareRules,
    Reply,
    compare,
    parse_path,
)
from routes.errors import RuleError

JSON_CT = (b"content-type", b"application/json")


def reply(body: Any, status: int = 200, headers: tuple[tuple[bytes, bytes], ...] = (JSON_CT,)) -> Reply:
    return Reply(status, headers, json.dumps(body).encode())


def diffs(a: Any, b: Any, rules: CompareRules | None = None) -> list[tuple[str, str]]:
    got = compare(reply(a), reply(b), rules or CompareRules.build(max_differences=1000))
    return sorted((d.path, d.kind) for d in got.differences)


@pytest.mark.parametrize(("a", "b", "expected"), [
    ({"id": 1}, {"id": 1}, []),
    ({"id": 1}, {"id": 2}, [("$.id", "value")]),
    ({"id": 1}, {}, [("$.id", "missing")]),
    ({}, {"id": 1}, [("$.id", "extra")]),
    ({"id": 1}, {"id": "1"}, [("$.id", "type")]),
    ({"ok": True}, {"ok": 1}, [("$.ok", "type")]),          # a boolean is not the number 1
    ({"n": 1}, {"n": 1.0}, []),                              # JSON has one number type
    ({"n": None}, {"n": 0}, [("$.n", "type")]),
    ([True, 0, 1.0], [1, False, 1], [("$[0]", "type"), ("$[1]", "type")]),
    ({"a": 1, "b": 2}, {"b": 2, "a": 1}, []),                # key order does not matter
    ({"items": [{"price": 1}, {"price": 2}]}, {"items": [{"price": 1}, {"price": 3}]},
     [("$.items[1].price", "value")]),
    ({"items": [1, 2, 3]}, {"items": [1, 2]}, [("$.items[2]", "missing")]),
    ({"items": [1]}, {"items": [1, 2]}, [("$.items[1]", "extra")]),
    ([1, 2], [2, 1], [("$[0]", "value"), ("$[1]", "value")]),  # arrays are ordered
    ({"a b": 1}, {"a b": 2}, [('$["a b"]', "value")]),
    ({"x": {"y": {"z": 1}}}, {"x": {"y": {"z": 2}}}, [("$.x.y.z", "value")]),
    ({"x": {"y": 1}}, {"x": [1]}, [("$.x", "type")]),
])
def test_json_field_by_field(a: Any, b: Any, expected: list[tuple[str, str]]) -> None:
    assert diffs(a, b) == expected


def test_field_generalises_indices() -> None:
    got = compare(reply({"items": [{"p": 1}, {"p": 2}]}), reply({"items": [{"p": 9}, {"p": 8}]}))
    assert [(d.path, d.field) for d in got.differences] == [
        ("$.items[0].p", "$.items[*].p"), ("$.items[1].p", "$.items[*].p")]
    assert got.fields() == {"$.items[*].p"}
    assert got.body == "json"


def test_status_and_chosen_headers() -> None:
    rules = CompareRules.build(headers=["ETag", "X-Version"])
    a = Reply(200, (JSON_CT, (b"etag", b'"1"'), (b"x-other", b"a")), b"{}")
    b = Reply(503, (JSON_CT, (b"ETag", b'"2"'), (b"x-version", b"2"), (b"x-other", b"b")), b"{}")
    got = compare(a, b, rules)
    assert [(d.path, d.kind, d.primary, d.candidate) for d in got.differences] == [
        ("status", "value", "200", "503"),
        ("headers.etag", "value", '"1"', '"2"'),
        ("headers.x-version", "extra", None, "2"),
    ]  # x-other is not chosen


def test_repeated_header_fields_are_joined() -> None:
    rules = CompareRules.build(headers=["vary"])
    a = Reply(200, ((b"vary", b"a"), (b"vary", b"b")), b"")
    b = Reply(200, ((b"vary", b"a, b"),), b"")
    assert compare(a, b, rules).same


def test_credential_headers_are_compared_but_never_copied() -> None:
    rules = CompareRules.build(headers=["authorization", "set-cookie"])
    a = Reply(200, ((b"authorization", b"Bearer secret-a"), (b"set-cookie", b"s=1")), b"")
    b = Reply(200, ((b"authorization", b"Bearer secret-b"),), b"")
    got = compare(a, b, rules)
    assert [(d.path, d.kind, d.primary, d.candidate) for d in got.differences] == [
        ("headers.authorization", "value", REDACTED, REDACTED),
        ("headers.set-cookie", "missing", REDACTED, None)]
    assert "secret" not in repr(got)


@pytest.mark.parametrize(("ct_a", "body_a", "ct_b", "body_b", "same"), [
    (b"text/html", b"<p>1</p>", b"text/html", b"<p>1</p>", True),
    (b"text/html", b"<p>1</p>", b"text/html", b"<p>2</p>", False),
    # one side not JSON: the bodies are compared as bytes, so reformatting counts
    (b"application/json", b'{"a":1}', b"text/plain", b'{"a": 1}', False),
    (b"application/json", b'{"a":1}', b"application/problem+json", b'{ "a" : 1 }', True),
    (b"application/json; charset=utf-8", b'{"a":1}', b"application/json", b'{"a": 1}', True),
    # not parseable, NaN (not JSON): by hash
    (b"application/json", b'{"a":', b"application/json", b'{"a":', True),
    (b"application/json", b'{"a": NaN}', b"application/json", b'{"a": NaN}', True),
    (b"application/json", b'{"a": NaN}', b"application/json", b'{"a": 1}', False),
])
def test_other_bodies_by_hash(ct_a: bytes, body_a: bytes, ct_b: bytes, body_b: bytes, same: bool) -> None:
    got = compare(Reply(200, ((b"content-type", ct_a),), body_a),
                  Reply(200, ((b"content-type", ct_b),), body_b))
    assert got.same is same
    if not same:
        (d,) = got.differences
        assert (d.path, d.kind) == ("$", "value")
        assert d.primary is not None and d.primary.startswith("sha256:")


def test_bodies_over_the_limit_are_compared_by_hash_only() -> None:
    rules = CompareRules.build(max_body=100)
    big_a = {"pad": "x" * 200, "id": 1}
    big_b = {"pad": "x" * 200, "id": 2}
    got = compare(reply(big_a), reply(big_b), rules)
    assert got.body == "oversize"
    assert [(d.path, d.kind) for d in got.differences] == [("$", "value")]
    assert compare(reply(big_a), reply(big_a), rules).same
    # and ignore rules on fields no longer apply: the body was not read field by field
    ignoring = CompareRules.build(max_body=100, ignore_paths=["$.id"])
    assert not compare(reply(big_a), reply(big_b), ignoring).same


def test_deep_nesting_costs_no_recursion() -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    got = compare(Reply(200, (JSON_CT,), deep), Reply(200, (JSON_CT,), deep + b" "),
                  CompareRules.build(max_body=1 << 20))
    assert got.body == "hash"  # json refuses that depth: compared as bytes
    nested: Any = 1
    other: Any = 2
    for _ in range(900):
        nested, other = [nested], [other]
    got = compare(reply(nested), reply(other))
    assert got.body == "json"
    assert [d.path for d in got.differences] == ["$" + "[0]" * 900]


def test_the_result_is_bounded() -> None:
    rules = CompareRules.build(max_differences=10)
    got = compare(reply(list(range(1000))), reply([i + 1 for i in range(1000)]), rules)
    assert len(got.differences) == 10
    assert got.total == 1000
    assert got.truncated
    long = compare(reply({"s": "a" * 10_000}), reply({"s": "b" * 10_000}))
    (d,) = long.differences
    assert d.primary is not None and len(d.primary) == EXCERPT


@pytest.mark.parametrize(("rule", "a", "b", "left"), [
    ("$.items[*].updated_at", {"items": [{"updated_at": 1, "p": 1}]}, {"items": [{"updated_at": 2, "p": 2}]},
     [("$.items[0].p", "value")]),
    ("$.items[0].updated_at", {"items": [{"updated_at": 1}, {"updated_at": 1}]},
     {"items": [{"updated_at": 2}, {"updated_at": 2}]}, [("$.items[1].updated_at", "value")]),
    ("$..etag", {"a": {"b": {"etag": 1}}, "etag": 1}, {"a": {"b": {"etag": 2}}, "etag": 2}, []),
    ("$.*.id", {"x": {"id": 1}, "y": {"id": 1, "n": 1}}, {"x": {"id": 2}, "y": {"id": 2, "n": 2}},
     [("$.y.n", "value")]),
    ("$.meta", {"meta": {"a": 1, "b": [1]}, "v": 1}, {"meta": {"a": 2}, "v": 1}, []),   # a subtree
    ("$.gone", {"gone": 1}, {}, []),
    ("$.new", {}, {"new": 1}, []),
    ('$["a b"]', {"a b": 1}, {"a b": 2}, []),
    ("$", {"a": 1}, {"a": 2}, []),
    ("$.items[*]", {"items": [1]}, {"items": [1, 2]}, []),
])
def test_ignore_by_path(rule: str, a: Any, b: Any, left: list[tuple[str, str]]) -> None:
    assert diffs(a, b, CompareRules.build(ignore_paths=[rule])) == left


def test_ignore_status_and_header_by_path() -> None:
    rules = CompareRules.build(headers=["date"], ignore_paths=["status", "headers.date"])
    got = compare(Reply(200, ((b"date", b"x"),), b""), Reply(201, ((b"date", b"y"),), b""), rules)
    assert got.same


def test_ignore_by_builtin_value_pattern() -> None:
    rules = CompareRules.build(ignore_patterns=["uuid", "timestamp", "epoch", "hex-id"], headers=["date"])
    a = {"id": str(uuid.uuid4()), "at": "2026-12-03T16:18:08Z", "t": 1764778688, "trace": "ab" * 16,
         "name": "x"}
    b = {"id": str(uuid.uuid4()), "at": "2026-12-03T16:18:09.123+01:00", "t": 1764778689123,
         "trace": "cd" * 16, "name": "y"}
    got = compare(reply(a, headers=(JSON_CT, (b"date", b"Thu, 03 Dec 2026 16:18:08 GMT"))),
                  reply(b, headers=(JSON_CT, (b"date", b"Thu, 03 Dec 2026 16:18:09 GMT"))), rules)
    assert [d.path for d in got.differences] == ["$.name"]


@pytest.mark.parametrize(("a", "b"), [
    (str(uuid.uuid4()), "not-a-uuid"),          # both must match the pattern
    (str(uuid.uuid4()), None),                  # a type change is never noise
    ("2026-12-03T16:18:08Z", "yesterday"),
    ("x" + str(uuid.uuid4()), "x" + str(uuid.uuid4())),  # anchored: the whole value
])
def test_value_patterns_do_not_hide_real_changes(a: Any, b: Any) -> None:
    rules = CompareRules.build(ignore_patterns=["uuid", "timestamp"])
    assert diffs({"v": a}, {"v": b}, rules) != []


def test_operator_regexes_run_on_values() -> None:
    rules = CompareRules.build(ignore_regexes=[r"^ord-\d+$"])
    assert diffs({"o": "ord-1"}, {"o": "ord-2"}, rules) == []
    assert diffs({"o": "ord-1"}, {"o": "inv-2"}, rules) == [("$.o", "value")]


@pytest.mark.parametrize(("data", "field"), [
    ({"headers": ["bad header"]}, "c.headers[0]"),
    ({"headers": ["etag", "ETag"]}, "c.headers[1]"),
    ({"ignore": {"paths": ["items.id"]}}, "c.ignore.paths[0]"),
    ({"ignore": {"paths": ["$.items[x]"]}}, "c.ignore.paths[0]"),
    ({"ignore": {"paths": ["$..", "$.a"]}}, "c.ignore.paths[0]"),
    ({"ignore": {"paths": ["$.a", '$["open']}}, "c.ignore.paths[1]"),
    ({"ignore": {"patterns": ["uuid", "guid"]}}, "c.ignore.patterns[1]"),
    ({"ignore": {"regexes": [r"(a)\1"]}}, "c.ignore.regexes[0]"),  # RE2: no backreferences
    ({"ignore": {"bogus": []}}, "c.ignore.bogus"),
    ({"max_body": -1}, "c.max_body"),
    ({"max_differences": 0}, "c.max_differences"),
])
def test_bad_rules_are_refused_naming_the_field(data: Any, field: str) -> None:
    with pytest.raises(RuleError) as caught:
        CompareRules.parse(data, "c")
    assert caught.value.field == field


def test_rules_round_trip() -> None:
    data = {"headers": ["etag"], "ignore": {"paths": ["$.items[*].updated_at", "headers.date"],
                                            "patterns": ["uuid"], "regexes": ["^ord-", "uuid"]},
            "max_body": 4096, "max_differences": 20}
    rules = CompareRules.parse(data, "c")
    assert rules.to_dict() == data
    assert CompareRules.parse(rules.to_dict(), "c").to_dict() == data
    assert CompareRules.parse({}, "c").to_dict() == {}


def test_parse_path_shapes() -> None:
    assert parse_path("$.a[*].b").segments[0] == "a"
    assert parse_path("$..id").segments == (ANY_DEPTH, "id")
    assert parse_path('$["x.y"][3]').segments == ("x.y", 3)


# --- properties -------------------------------------------------------------------------------

KEYS = st.text(min_size=0, max_size=6)
LEAVES = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=5)
DOCS = st.recursive(
    LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20)


@given(DOCS)
@settings(max_examples=200, deadline=None)
def test_a_body_never_differs_from_itself(doc: Any) -> None:
    rules = CompareRules.build(headers=["etag"])
    r = reply(doc, headers=(JSON_CT, (b"etag", b"1")))
    assert compare(r, r, rules).same
    # nor from the same document serialised another way
    again = Reply(200, (JSON_CT, (b"etag", b"1")), json.dumps(doc, indent=2, sort_keys=True).encode())
    assert compare(r, again, rules).same


def _under(rule: str, path: str) -> bool:
    """Whether `rule` matches `path` or one of its ancestors (ignoring a node ignores its subtree)."""
    pattern = parse_path(rule)
    written = parse_path(path).segments
    segments = [s for s in written if isinstance(s, str | int)]  # a concrete path: no wildcards
    assert len(segments) == len(written)
    return any(pattern.matches("$", segments[:i]) for i in range(len(segments) + 1))


@given(DOCS, DOCS, st.data())
@settings(max_examples=200, deadline=None)
def test_ignore_rules_remove_exactly_the_ignored_paths(a: Any, b: Any, data: st.DataObject) -> None:
    everything = compare(reply(a), reply(b), CompareRules.build(max_differences=1000)).differences
    if not everything:
        return
    chosen = data.draw(st.sampled_from(everything))
    rule = data.draw(st.sampled_from([chosen.path, chosen.field]))
    kept = compare(reply(a), reply(b), CompareRules.build(ignore_paths=[rule], max_differences=1000))
    assert set(kept.differences) == {d for d in everything if not _under(rule, d.path)}
    assert chosen not in kept.differences


@given(st.dictionaries(st.text(max_size=4), st.integers(), max_size=6), st.randoms())
def test_key_order_never_matters(doc: dict[str, int], rnd: Any) -> None:
    items = list(doc.items())
    rnd.shuffle(items)
    assert compare(reply(doc), Reply(200, (JSON_CT,), json.dumps(dict(items)).encode())).same


def test_differences_come_in_document_order() -> None:
    got = compare(reply({"a": 1, "b": {"x": 1}, "c": [1, 2, 3]}),
                  reply({"b": {"x": 2}, "c": [1, 9], "a2": 0}))
    assert [(d.path, d.kind) for d in got.differences] == [
        ("$.a", "missing"), ("$.b.x", "value"), ("$.c[1]", "value"), ("$.c[2]", "missing"), ("$.a2", "extra")]
