"""Regexes on request input run in linear time (RE2), and what RE2 cannot run is refused by field."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routes.compiler import compile_document
from routes.errors import RuleError
from routes.matcher import RequestFacts
from routes.model import Document
from routes.regex import Regex, RegexError, Substitution

CATASTROPHIC = r"^/re/(a+)+$"


def document(match: dict[str, Any], rewrite: dict[str, Any] | None = None) -> dict[str, Any]:
    route: dict[str, Any] = {"name": "r", "match": match, "service": "svc"}
    if rewrite is not None:
        route["rewrite"] = rewrite
    return {"services": [{"name": "svc", "endpoints": ["http://127.0.0.1:9000"]}], "routes": [route]}


def fastest(run: Any, times: int = 5) -> float:
    """The shortest of a few runs: a loaded machine only ever makes a run slower."""
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def test_a_catastrophic_pattern_on_a_long_input_is_fast() -> None:
    table = compile_document(Document.parse(document(
        {"path_regex": CATASTROPHIC, "headers": [{"name": "X-A", "regex": CATASTROPHIC}]},
        {"path_regex": CATASTROPHIC, "replacement": r"/x/\1"})), 1)
    route = table.routes[0]
    long_path = "/re/" + "a" * 100_000 + "!"
    facts = RequestFacts(b"", [(b"x-a", long_path.encode())])

    # Python's `re` takes seconds here (about 2^25 steps), so a regression fails fast, not hangs.
    short_path = "/re/" + "a" * 25 + "!"
    start = time.perf_counter()
    assert table.match("GET", "h", short_path, b"", []) is None
    assert time.perf_counter() - start < 0.5

    assert table.match("GET", "h", long_path, b"", []) is None
    fields = route.match.fields
    assert fields is not None
    assert fields.accepts(facts) is False
    assert route.rewrite_path(long_path) == long_path
    assert route.rewrite_path("/re/aaa") == "/x/aaa"

    linear = max(fastest(lambda: table.match("GET", "h", long_path, b"", [])),
                 fastest(lambda: fields.accepts(RequestFacts(b"", facts.raw_headers))),
                 fastest(lambda: route.rewrite_path(long_path)))
    assert linear < 0.5, f"{linear:.3f} s for 100k characters"
    # Python's backtracking `re` needs longer for 20 characters than RE2 for 100,000 (about 2^20
    # steps: 0.08 s on an idle machine against 0.3 ms); one run, since load only slows it further.
    start = time.perf_counter()
    assert re.search(CATASTROPHIC, "/re/" + "a" * 20 + "!") is None
    backtracking = time.perf_counter() - start
    assert backtracking > 10 * linear, (backtracking, linear)


@pytest.mark.parametrize(("pattern", "reason"), [
    (r"^/(a)\1$", "backreference"),
    (r"^/(?P<x>a)(?P=x)$", "named backreference"),
    (r"^/a(?=b)", "lookahead"),
    (r"^/a(?!b)", "negative lookahead"),
    (r"(?<=/)a", "lookbehind"),
    (r"(?<!x)a", "negative lookbehind"),
    (r"^/(?>a+)b", "atomic group"),
    (r"^/a++", "possessive quantifier"),
    (r"(?x) ^/a", "verbose mode"),
    (r"^/a{,3}$", "{,n} means 0-n in Python, literal text in RE2"),
    (r"^/a{1001}", "repetition over 1000"),
    (r"^/\C", "one byte"),
    (r"^/\pL{300}", "over the 2 MiB memory bound of one regex"),
    (r"/(unclosed", "syntax error"),
])
@pytest.mark.parametrize("field", ["match.path_regex", "match.headers[0].regex", "match.query[0].regex",
                                   "match.cookies[0].regex", "rewrite.path_regex"])
def test_unsupported_syntax_is_refused_naming_the_field(pattern: str, reason: str, field: str) -> None:
    if field == "match.path_regex":
        data = document({"path_regex": pattern})
    elif field == "rewrite.path_regex":
        data = document({"path_prefix": "/"}, {"path_regex": pattern, "replacement": "/x"})
    else:
        kind = field.split(".")[1].split("[")[0]
        data = document({kind: [{"name": "x", "regex": pattern}]})
    with pytest.raises(RuleError) as caught:
        Document.parse(data)
    assert caught.value.field == f"routes[r].{field}", reason
    assert caught.value.value == pattern
    assert "is not a valid regular expression" in str(caught.value)


@pytest.mark.parametrize("replacement", [
    "/a\r\nX-Injected: 1", "/a\nb", "/a\rb", "/a\x00", "/a\tb", "/a b", "/a\x7f", "/caf\u00e9",
    r"/a\r\nX-Injected: 1",   # escapes Python's re.sub would turn into CR LF
    r"/a\x0d\x0a", r"/a\0", r"/a\n",
])
def test_replacement_that_could_split_the_request_line_is_refused(replacement: str) -> None:
    with pytest.raises(RuleError) as caught:
        Document.parse(document({"path_prefix": "/"}, {"path_regex": "^/a", "replacement": replacement}))
    assert caught.value.field == "routes[r].rewrite.replacement"
    assert caught.value.value == replacement


@pytest.mark.parametrize(("replacement", "why"), [
    (r"/\2", "no group 2"),
    (r"/\g<2>", "no group 2"),
    (r"/\g<nope>", "no such name"),
    (r"/\g<1", "unterminated"),
    (r"/\q", "unknown escape"),
])
def test_replacement_that_does_not_fit_is_refused(replacement: str, why: str) -> None:
    with pytest.raises(RuleError) as caught:
        Document.parse(document({"path_prefix": "/"},
                                {"path_regex": r"^/(?P<id>\d+)", "replacement": replacement}))
    assert caught.value.field == "routes[r].rewrite.replacement", why


# Replacement syntax and results as Python's `re.sub(pattern, replacement, path, count=1)` gives them.
SUBSTITUTIONS = [
    (r"^/v1/(.*)$", r"/v2/\1", "/v1/orders/1"),
    (r"^/users/(?P<id>\d+)$", r"/people/\g<id>", "/users/42"),
    (r"^/users/(?P<id>\d+)$", r"/people/\g<1>/\g<0>", "/users/42"),
    (r"o", "0", "/foo/bar"),                    # the first match only
    (r"x*", "Y", "/a"),                         # an empty match at the start
    (r"$", "/end", "/a"),
    (r"^/(a)|^/(b)", r"/[\1][\2]", "/b/c"),     # a group that took no part expands to nothing
    (r"^/(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)(k)", r"/\11\10\1", "/abcdefghijk"),  # two digits at most
    (r"^/a", r"/x\\y", "/a"),                   # `\\` is one backslash
    (r"^/a\Z", "/b", "/a"),                     # Python's end of text, RE2's \z
    (r"^/a\Z", "/b", "/ab"),
    (r"(?i)^/API/", "/", "/api/x"),
    (r"^/caf\u00e9/(.)", r"/\1", "/caf\u00e9/\u00fc"),  # Python's \u escape, RE2's \x{...}
    ("^/caf\u00e9/(.)", r"/\1\1", "/caf\u00e9/\u00fcx"),  # offsets are characters, not UTF-8 bytes
    (r"^/nomatch", "/z", "/api/x"),
]


@pytest.mark.parametrize(("pattern", "replacement", "path"), SUBSTITUTIONS)
def test_substitution_agrees_with_python(pattern: str, replacement: str, path: str) -> None:
    assert Substitution(pattern, replacement)(path) == re.sub(pattern, replacement, path, count=1)


@given(st.sampled_from([r"^/a", r"a", r"^/(\w+)/", r"$", r"^", r"^/a/(.*)$", r"(b+)", r"[ab]/?", r"\d*"]),
       st.sampled_from(["", "/", "b", r"/\1", "//x", r"\g<0>x"]),
       st.text(alphabet="ab/1.", max_size=12))
def test_substitution_agrees_with_python_on_paths(pattern: str, replacement: str, path: str) -> None:
    try:
        sub = Substitution(pattern, replacement)
    except RegexError:
        with pytest.raises((re.error, IndexError)):
            re.sub(pattern, replacement, path, count=1)
        return
    assert sub(path) == re.sub(pattern, replacement, path, count=1)


@given(st.sampled_from([r"^/orders/\d+$", r"^/a(b|c)*$", r"\.php$", r"(?i)mobile", r"^[12]$", r"b\Z",
                        r"^/x/[^/]+/y"]),
       st.text(alphabet="/abcx.php12MOBILEmobile y", max_size=16))
def test_found_agrees_with_python(pattern: str, text: str) -> None:
    assert Regex(pattern).found(text) is (re.search(pattern, text) is not None)


def test_regex_error_is_a_value_error_with_the_engine_reason() -> None:
    with pytest.raises(RegexError, match=r"\(\?="):
        Regex("a(?=b)")
    assert issubclass(RegexError, ValueError)
