"""The path normaliser: canonical, idempotent, and refusing what could bypass a prefix route."""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.settings import PathSettings, load_settings
from gateway.http.paths import DEFAULT_RULES, PathRules, normalise, path_rules

ALLOW_SLASH = PathRules(reject_encoded_slash=False)
ALLOW_BACKSLASH = PathRules(reject_backslash=False)
MERGE = PathRules(merge_slashes=True)
LITERAL = PathRules(merge_slashes=False)
LENIENT = PathRules(reject_encoded_slash=False, reject_backslash=False, merge_slashes=True)
ALL_RULES = [DEFAULT_RULES, ALLOW_SLASH, ALLOW_BACKSLASH, MERGE, LITERAL, LENIENT]


@pytest.mark.parametrize(("raw", "expected"), [
    (b"/", "/"),
    (b"/orders/42", "/orders/42"),
    (b"/a/../b", "/b"),
    (b"/a/./b/", "/a/b/"),
    (b"/a/b/..", "/a/"),
    (b"/a/b/.", "/a/b/"),
    (b"/..", "/"),
    (b"/../../etc/passwd", "/etc/passwd"),
    (b"/%2e%2E/admin", "/admin"),
    (b"/x/%2e%2e/admin", "/admin"),
    (b"/x/.%2e/admin", "/admin"),
    (b"/%2e/admin", "/admin"),
    (b"/%61dmin", "/admin"),
    (b"/%7e%2d%5f", "/~-_"),
    (b"/a%3ab", "/a%3Ab"),
    (b"/a%25b", "/a%25b"),
    (b"/caf%c3%a9", "/caf%C3%A9"),
    (b"/caf\xc3\xa9", "/caf%C3%A9"),
    (b"/a b", "/a%20b"),
    (b"/a\"<>`{}|^b", "/a%22%3C%3E%60%7B%7D%7C%5Eb"),
    (b"/.well-known/x", "/.well-known/x"),
    (b"/a/..b/c", "/a/..b/c"),
    (b"/a/...", "/a/..."),
    (b"/a;v=1/b", "/a;v=1/b"),
])
def test_default_forms(raw: bytes, expected: str) -> None:
    assert normalise(raw, DEFAULT_RULES) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    # With merge_slashes off, empty segments are kept (RFC 3986) and ".." removes one like any
    # segment.
    (b"//admin", "//admin"),
    (b"//admin//x", "//admin//x"),
    (b"/a//../b", "/a/b"),
    (b"/.//admin", "//admin"),
    (b"//..", "/"),
])
def test_literal_slashes(raw: bytes, expected: str) -> None:
    assert normalise(raw, LITERAL) == expected


def test_slashes_are_merged_by_default() -> None:
    # Many upstreams read `//orders/1` as `/orders/1`: Peel must route it by `/orders` too.
    assert DEFAULT_RULES.merge_slashes and PathSettings().merge_slashes
    assert normalise(b"//orders/1", DEFAULT_RULES) == "/orders/1"
    assert normalise(b"/orders//1/", DEFAULT_RULES) == "/orders/1/"


@pytest.mark.parametrize(("raw", "expected"), [
    (b"//admin", "/admin"),
    (b"//admin//x", "/admin/x"),
    (b"/a//", "/a/"),
    (b"//", "/"),
    (b"///", "/"),
    (b"/.//admin", "/admin"),
    (b"/x//..//admin", "/admin"),
    (b"/a//../b", "/b"),
])
def test_merge_slashes(raw: bytes, expected: str) -> None:
    assert normalise(raw, MERGE) == expected


@pytest.mark.parametrize(("rules", "raw", "expected"), [
    # Allowed, an encoded slash stays encoded: it is one segment's character, never a separator.
    (ALLOW_SLASH, b"/a%2fb", "/a%2Fb"),
    (ALLOW_SLASH, b"/public/..%2fadmin", "/public/..%2Fadmin"),
    (ALLOW_SLASH, b"/public/%2e%2e%2fadmin", "/public/..%2Fadmin"),
    (ALLOW_SLASH, b"/x/%2F/../admin", "/x/admin"),
    # Allowed, a backslash is forwarded encoded, literal or not.
    (ALLOW_BACKSLASH, b"/a\\b", "/a%5Cb"),
    (ALLOW_BACKSLASH, b"/a%5cb", "/a%5Cb"),
    (ALLOW_BACKSLASH, b"/public/..\\admin", "/public/..%5Cadmin"),
    (ALLOW_BACKSLASH, b"/public\\..\\admin", "/public%5C..%5Cadmin"),
    (LENIENT, b"//x/..%2f\\%5c//", "/x/..%2F%5C%5C/"),
])
def test_allowed_separators_stay_encoded(rules: PathRules, raw: bytes, expected: str) -> None:
    assert normalise(raw, rules) == expected


@pytest.mark.parametrize("raw", [b"/a%2fb", b"/a%2F..%2Fadmin", b"/public/..%2fadmin"])
def test_encoded_slash_refused_unless_allowed(raw: bytes) -> None:
    for rules in (DEFAULT_RULES, ALLOW_BACKSLASH, MERGE):
        with pytest.raises(ValueError, match="encoded '/'"):
            normalise(raw, rules)
    normalise(raw, ALLOW_SLASH)


@pytest.mark.parametrize("raw", [b"/a\\b", b"/a%5cb", b"/a%5C", b"/public\\..\\admin"])
def test_backslash_refused_unless_allowed(raw: bytes) -> None:
    for rules in (DEFAULT_RULES, ALLOW_SLASH, MERGE):
        with pytest.raises(ValueError, match="backslash"):
            normalise(raw, rules)
    normalise(raw, ALLOW_BACKSLASH)


@pytest.mark.parametrize("raw", [
    b"/a%00", b"/a\x00b", b"/%00/x", b"/a%", b"/a%2", b"/a%zz", b"/a%%41", b"relative", b"",
    b"/a?b", b"/a#b",
])
@pytest.mark.parametrize("rules", ALL_RULES)
def test_refused_under_every_rule_set(raw: bytes, rules: PathRules) -> None:
    with pytest.raises(ValueError):
        normalise(raw, rules)


def test_rules_come_from_the_paths_settings(tmp_path: object) -> None:
    assert path_rules(PathSettings()) == DEFAULT_RULES
    settings = load_settings(environ={"PEEL_PATHS_REJECT_ENCODED_SLASH": "false",
                                      "PEEL_PATHS_REJECT_BACKSLASH": "no",
                                      "PEEL_PATHS_MERGE_SLASHES": "1"})
    assert path_rules(settings.paths) == LENIENT
    assert path_rules(settings.paths) is path_rules(settings.paths)


# -- properties ---------------------------------------------------------------------------------

TRICKS = [b"..", b".", b"", b"%2e", b"%2E%2e", b".%2e", b"%2e.", b"admin", b"%61dmin", b"adm%69n",
          b"ADMIN", b"admin%2f", b"%2fadmin", b"..%2f", b"..%2Fadmin", b"%5c", b"\\", b"..\\admin",
          b"admin\\..", b"%5c..%5cadmin", b"public", b"a", b"%41", b"%3a", b"%c3%a9", b"\xff",
          b"x y", b"%25", b"%252e", b"%00", b"?"]
raw_paths = st.lists(
    st.one_of(st.sampled_from(TRICKS), st.binary(max_size=6)),
    max_size=8,
).map(lambda segments: b"/" + b"/".join(segments))
rule_sets = st.builds(PathRules, st.booleans(), st.booleans(), st.booleans())


def dots_removed(segments: list[bytes], merge: bool) -> list[bytes]:
    """RFC 3986 dot-segment removal over already-split segments, as an upstream would do it."""
    out: list[bytes] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg in (b".", b".."):
            if seg == b".." and out:
                out.pop()
            if last:
                out.append(b"")
        elif seg or last or not merge:
            out.append(seg)
    return out


def lenient_view(path: bytes, merge: bool) -> list[bytes]:
    """What a careless upstream makes of a path: every escape decoded BEFORE splitting, a
    backslash read as "/", dot segments removed (and slashes merged when Peel merges them)."""
    decoded = unquote_to_bytes(path).replace(b"\\", b"/")
    return dots_removed(decoded[1:].split(b"/"), merge)


def strict_view(path: bytes, merge: bool) -> list[bytes]:
    """What a careful upstream makes of a path: split on "/", then decode each segment."""
    return dots_removed([unquote_to_bytes(seg) for seg in path[1:].split(b"/")], merge)


def under_admin(segments: list[bytes]) -> bool:
    return segments[:1] == [b"admin"]


def matched_under_admin(path: str) -> bool:
    """What a `path_prefix: /admin` route matches: "/admin" or "/admin/..." (segment boundary)."""
    return path == "/admin" or path.startswith("/admin/")


@given(raw_paths, rule_sets)
def test_canonical_and_idempotent(raw: bytes, rules: PathRules) -> None:
    try:
        out = normalise(raw, rules)
    except ValueError:
        return
    assert out.startswith("/")
    segments = out.split("/")[1:]
    assert "." not in segments and ".." not in segments
    assert out.isascii() and re.fullmatch(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*", out)
    # Every escape left is upper-case, of a character that is not unreserved, and not NUL.
    for escape in re.findall(r"%(..)", out):
        assert escape == escape.upper() and escape != "00"
        assert not re.fullmatch(r"[A-Za-z0-9\-._~]", chr(int(escape, 16)))
    if rules.merge_slashes:
        assert "//" not in out
    if rules.reject_encoded_slash:
        assert "%2F" not in out
    if rules.reject_backslash:
        assert "%5C" not in out
    assert normalise(out.encode(), rules) == out


@given(raw_paths, rule_sets)
def test_refusals_are_the_dangerous_ones(raw: bytes, rules: PathRules) -> None:
    try:
        normalise(raw, rules)
    except ValueError:
        lowered = raw.lower()
        assert (b"\x00" in raw or b"%00" in raw or b"?" in raw or b"#" in raw
                or re.search(rb"%(?![0-9a-f]{2})", lowered) is not None
                or (rules.reject_encoded_slash and b"%2f" in lowered)
                or (rules.reject_backslash and (b"\\" in raw or b"%5c" in lowered)))


@given(raw_paths, st.booleans())
def test_no_encoding_trick_reaches_a_prefix_behind_its_back(raw: bytes, merge: bool) -> None:
    """Default separator rules: whatever an upstream decodes, it sees the prefix Peel matched.

    The normalised path is what Peel matched and forwarded. A careless upstream reading either
    the raw path or the forwarded one finds itself under /admin exactly when Peel's `/admin`
    prefix route matched (and the other way round).
    """
    rules = PathRules(merge_slashes=merge)
    try:
        out = normalise(raw, rules)
    except ValueError:
        return
    matched = matched_under_admin(out)
    assert under_admin(lenient_view(raw, merge)) == matched
    assert under_admin(lenient_view(out.encode(), merge)) == matched
    assert under_admin(strict_view(out.encode(), merge)) == matched


@given(raw_paths, rule_sets)
def test_allowed_separators_never_reach_a_prefix(raw: bytes, rules: PathRules) -> None:
    """With `%2F` or backslashes allowed, an upstream that splits before decoding (as RFC 3986
    says) still sees the first segment Peel matched: they are forwarded encoded."""
    try:
        out = normalise(raw, rules)
    except ValueError:
        return
    assert under_admin(strict_view(out.encode(), rules.merge_slashes)) == matched_under_admin(out)
