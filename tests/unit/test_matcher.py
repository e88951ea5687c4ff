"""The predicates of a match, one at a time: which requests a single route accepts.

Every case is checked twice: through the route table's index (`table.match`) and through the
route's own reference check (`CompiledMatch.matches`), so a predicate and its indexing cannot drift.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routes.compiler import compile_document
from routes.matcher import RequestFacts, host_matches, regex_literal_segments
from routes.model import Document
from routes.table import RouteTable

Headers = list[tuple[bytes, bytes]]


def table_of(*routes: dict[str, Any]) -> RouteTable:
    services = [{"name": "svc", "endpoints": ["http://127.0.0.1:9000"]}]
    return compile_document(Document.parse({"services": services, "routes": list(routes)}), 1)


def accepts(match: dict[str, Any], *, method: str = "GET", host: str = "example.com", path: str = "/",
            query: bytes = b"", headers: Headers | None = None) -> bool:
    """Whether a table with one route of this match answers the request with that route."""
    table = table_of({"name": "r", "match": match, "service": "svc"})
    hdrs = headers or []
    indexed = table.match(method, host, path, query, hdrs) is not None
    reference = table.routes[0].match.matches(method, host, path, RequestFacts(query, hdrs))
    assert indexed == reference, "the index and the reference check disagree"
    return indexed


@pytest.mark.parametrize(("hosts", "host", "expected"), [
    ([], "anything.example", True),
    (["api.example.com"], "api.example.com", True),
    (["api.example.com"], "www.example.com", False),
    (["api.example.com"], "example.com", False),
    (["API.Example.com"], "api.example.com", True),          # route hosts are stored lower-case
    (["*.example.com"], "api.example.com", True),
    (["*.example.com"], "a.b.example.com", True),
    (["*.example.com"], "example.com", False),               # not the bare suffix
    (["*.example.com"], "badexample.com", False),            # a label boundary, not a substring
    (["*.example.com"], "example.com.evil.org", False),
    (["a.example.org", "*.example.com"], "x.example.com", True),
    (["a.example.org", "*.example.com"], "a.example.org", True),
    (["a.example.org", "*.example.com"], "b.example.org", False),
])
def test_host(hosts: list[str], host: str, expected: bool) -> None:
    assert accepts({"hosts": hosts}, host=host) is expected


@pytest.mark.parametrize(("match", "path", "expected"), [
    ({"path": "/orders"}, "/orders", True),
    ({"path": "/orders"}, "/orders/", False),
    ({"path": "/orders"}, "/orders/1", False),
    ({"path": "/orders/"}, "/orders/", True),
    ({"path": "/"}, "/", True),
    ({"path": "/"}, "/a", False),
    ({"path_prefix": "/orders"}, "/orders", True),
    ({"path_prefix": "/orders"}, "/orders/", True),
    ({"path_prefix": "/orders"}, "/orders/1/items", True),
    ({"path_prefix": "/orders"}, "/ordersx", False),
    ({"path_prefix": "/orders"}, "/order", False),
    ({"path_prefix": "/orders"}, "/", False),
    ({"path_prefix": "/"}, "/", True),
    ({"path_prefix": "/"}, "/anything/at/all", True),
    ({"path_prefix": "/a/b"}, "/a/b/c", True),
    ({"path_prefix": "/a/b"}, "/a/bc", False),
    ({"path_template": "/orders/{id}"}, "/orders/17", True),
    ({"path_template": "/orders/{id}"}, "/orders/", False),        # a parameter is never empty
    ({"path_template": "/orders/{id}"}, "/orders", False),
    ({"path_template": "/orders/{id}"}, "/orders/17/items", False),  # exactly one segment
    ({"path_template": "/orders/{id}/items"}, "/orders/17/items", True),
    ({"path_template": "/orders/{id}/items"}, "/orders/17/lines", False),
    ({"path_template": "/{tenant}/orders/{id}"}, "/acme/orders/9", True),
    ({"path_template": "/{tenant}/orders/{id}"}, "/acme/users/9", False),
    ({"path_regex": r"^/orders/\d+$"}, "/orders/17", True),
    ({"path_regex": r"^/orders/\d+$"}, "/orders/17/x", False),
    ({"path_regex": r"\.php$"}, "/legacy/cart.php", True),         # searched, not anchored
    ({"path_regex": r"cart"}, "/legacy/cart.php", True),
    ({"path_regex": r"^cart"}, "/legacy/cart.php", False),
    ({"path_regex": r"^/(a|b)/x"}, "/b/x", True),
    ({"path_regex": r"^/ord(ers)?/1"}, "/ord/1", True),
    ({"path_regex": r"^/orders?/1"}, "/order/1", True),           # the quantified `s` is optional
    ({}, "/whatever", True),
])
def test_path(match: dict[str, Any], path: str, expected: bool) -> None:
    assert accepts(match, path=path) is expected


@pytest.mark.parametrize(("methods", "method", "expected"), [
    ([], "DELETE", True),
    (["GET", "POST"], "POST", True),
    (["GET", "POST"], "PUT", False),
    (["GET"], "HEAD", True),          # HEAD follows GET (RFC 9110 9.3.2)
    (["POST"], "HEAD", False),
    (["HEAD"], "GET", False),         # but not the other way round
    (["GET"], "get", False),          # methods are case-sensitive
])
def test_methods(methods: list[str], method: str, expected: bool) -> None:
    assert accepts({"methods": methods}, method=method) is expected


@pytest.mark.parametrize(("predicate", "headers", "expected"), [
    ({"name": "X-Beta", "value": "1"}, [(b"x-beta", b"1")], True),
    ({"name": "x-beta", "value": "1"}, [(b"X-Beta", b"1")], True),     # names are case-insensitive
    ({"name": "x-beta", "value": "1"}, [(b"x-beta", b"10")], False),   # value is exact
    ({"name": "x-beta", "value": "on"}, [(b"x-beta", b"ON")], False),  # and case-sensitive
    ({"name": "x-beta", "value": "1"}, [(b"x-beta", b"0"), (b"x-beta", b"1")], True),  # any occurrence
    ({"name": "x-beta", "value": ""}, [(b"x-beta", b"")], True),
    ({"name": "x-beta", "value": "1"}, [], False),
    ({"name": "user-agent", "regex": "(?i)mobile"}, [(b"user-agent", b"Foo Mobile/1")], True),
    ({"name": "user-agent", "regex": "^Mobile"}, [(b"user-agent", b"Foo Mobile/1")], False),
    ({"name": "x-v", "regex": "^2"}, [(b"x-v", b"1"), (b"x-v", b"2.5")], True),
    ({"name": "x-v", "regex": ".*"}, [], False),                         # a regex needs the header
    ({"name": "x-beta", "present": True}, [(b"x-beta", b"")], True),
    ({"name": "x-beta", "present": True}, [(b"x-other", b"1")], False),
    ({"name": "x-beta", "present": False}, [(b"x-other", b"1")], True),
    ({"name": "x-beta", "present": False}, [(b"X-BETA", b"1")], False),
])
def test_headers(predicate: dict[str, Any], headers: Headers, expected: bool) -> None:
    assert accepts({"headers": [predicate]}, headers=headers) is expected


@pytest.mark.parametrize(("predicate", "query", "expected"), [
    ({"name": "v", "value": "2"}, b"v=2", True),
    ({"name": "v", "value": "2"}, b"a=1&v=2&b", True),
    ({"name": "v", "value": "2"}, b"v=3", False),
    ({"name": "V", "value": "2"}, b"v=2", False),                    # parameter names are exact
    ({"name": "q", "value": "a b"}, b"q=a+b", True),                 # `+` is a space
    ({"name": "q", "value": "a b"}, b"q=a%20b", True),
    ({"name": "q", "value": "é"}, b"q=%C3%A9", True),                # escapes are UTF-8
    ({"name": "my key", "value": "1"}, b"my%20key=1", True),         # names are decoded too
    ({"name": "q", "value": "a&b"}, b"q=a%26b", True),               # an escaped & is not a separator
    ({"name": "v", "value": "2"}, b"v=1&v=2", True),                 # any occurrence
    ({"name": "v", "value": ""}, b"v", True),                        # a bare name has an empty value
    ({"name": "v", "regex": r"^\d+$"}, b"v=123", True),
    ({"name": "v", "regex": r"^\d+$"}, b"v=12a", False),
    ({"name": "debug", "present": True}, b"debug", True),
    ({"name": "debug", "present": True}, b"", False),
    ({"name": "debug", "present": False}, b"x=debug", True),
    ({"name": "debug", "present": False}, b"debug=0", False),
])
def test_query(predicate: dict[str, Any], query: bytes, expected: bool) -> None:
    assert accepts({"query": [predicate]}, query=query) is expected


@pytest.mark.parametrize(("predicate", "cookie_headers", "expected"), [
    ({"name": "beta", "value": "1"}, [b"beta=1"], True),
    ({"name": "beta", "value": "1"}, [b"session=abc; beta=1; theme=dark"], True),
    ({"name": "beta", "value": "1"}, [b"session=abc", b"beta=1"], True),   # several Cookie headers
    ({"name": "beta", "value": "1"}, [b"beta=0"], False),
    ({"name": "beta", "value": "1"}, [b"xbeta=1"], False),
    ({"name": "beta", "value": "1"}, [b"session=beta=1"], False),
    ({"name": "Beta", "value": "1"}, [b"beta=1"], False),                  # cookie names are exact
    ({"name": "t", "value": "a=b"}, [b"t=a=b"], True),                     # split on the first '='
    ({"name": "beta", "regex": "^[12]$"}, [b"beta=2"], True),
    ({"name": "beta", "present": True}, [b"beta="], True),
    ({"name": "beta", "present": True}, [], False),
    ({"name": "beta", "present": False}, [b"other=1"], True),
])
def test_cookies(predicate: dict[str, Any], cookie_headers: list[bytes], expected: bool) -> None:
    headers = [(b"cookie", value) for value in cookie_headers]
    assert accepts({"cookies": [predicate]}, headers=headers) is expected


def test_all_predicates_must_hold() -> None:
    match = {"hosts": ["api.example.com"], "path_prefix": "/orders", "methods": ["POST"],
             "headers": [{"name": "x-beta", "value": "1"}], "query": [{"name": "v", "present": True}],
             "cookies": [{"name": "c", "value": "z"}]}
    good: dict[str, Any] = {"method": "POST", "host": "api.example.com", "path": "/orders/1",
                            "query": b"v=1", "headers": [(b"x-beta", b"1"), (b"cookie", b"c=z")]}
    assert accepts(match, **good)
    for field, bad in [("method", "GET"), ("host", "www.example.com"), ("path", "/users"),
                       ("query", b"w=1"), ("headers", [(b"cookie", b"c=z")]),
                       ("headers", [(b"x-beta", b"1"), (b"cookie", b"c=y")])]:
        assert not accepts(match, **{**good, field: bad}), field


def test_template_params_are_captured() -> None:
    table = table_of({"name": "r", "match": {"path_template": "/{tenant}/orders/{id}"}, "service": "svc"})
    found = table.match_with_params("GET", "h", "/acme/orders/42", b"", [])
    assert found is not None
    assert found[1] == {"tenant": "acme", "id": "42"}
    assert table.match_with_params("GET", "h", "/acme/users/42", b"", []) is None


@pytest.mark.parametrize(("pattern", "segments"), [
    (r"^/orders/\d+$", ("orders",)),
    (r"^/api/v1/users", ("api", "v1")),       # `users` might continue: not a whole segment
    (r"^/api/v1/users/", ("api", "v1", "users")),
    (r"\A/a/b/", ("a", "b")),
    (r"^/a\.b/c/", ("a.b", "c")),            # escaped punctuation is literal
    (r"^/orders?/1", ()),                     # the quantifier makes `s` optional
    (r"^/ab*/", ()),
    (r"^/a/b+/", ("a",)),
    (r"^/a/(b)/", ("a",)),
    (r"^/a/|^/b/", ()),                       # alternation: give up
    (r"^/a/[b]/", ("a",)),
    (r"^/a/\d/", ("a",)),
    (r"/a/b/", ()),                           # not anchored
    (r"^a/b/", ()),
    (r"^/", ()),
])
def test_regex_literal_segments(pattern: str, segments: tuple[str, ...]) -> None:
    assert regex_literal_segments(pattern) == segments


LABELS = st.sampled_from(["a", "b", "example", "com", "x-1"])


@given(st.lists(LABELS, min_size=1, max_size=4), st.lists(LABELS, min_size=0, max_size=4))
def test_wildcard_host_is_a_label_suffix(suffix: list[str], host_labels: list[str]) -> None:
    pattern = "*." + ".".join(suffix)
    host = ".".join(host_labels)
    labels_match = len(host_labels) > len(suffix) and host_labels[-len(suffix):] == suffix
    assert host_matches(pattern, host) is labels_match
    assert accepts({"hosts": [pattern]}, host=host) is labels_match
    assert table_of({"name": "r", "match": {"hosts": [pattern]}, "service": "svc"}).routes_host(host) \
        is labels_match


SEGMENT = st.sampled_from(["a", "b", "ab", "1", "a.b", "x-y"])


@given(st.lists(SEGMENT, min_size=1, max_size=3), st.lists(SEGMENT, max_size=4), st.booleans())
def test_prefix_matches_on_segment_boundaries(prefix: list[str], path: list[str], slash: bool) -> None:
    pattern = "/" + "/".join(prefix)
    request = "/" + "/".join(path) + ("/" if slash and path else "")
    on_boundary = path[:len(prefix)] == prefix
    assert accepts({"path_prefix": pattern}, path=request) is on_boundary
