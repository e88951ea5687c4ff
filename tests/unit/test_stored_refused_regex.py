"""A stored document may hold a regex RE2 refuses (written by an older Peel): read it leniently,
write it never, and compile the route so that it answers its own requests without running it."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from routes.compiler import compile_document, unservable_match
from routes.errors import RuleError
from routes.model import Document, FieldMatch, Match, Route
from routes.store import encode_document

SERVICES = [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
            {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]}]
DEFAULT = {"name": "legacy-default", "match": {"path_prefix": "/"}, "service": "legacy"}

# (route, the refused field, the stored value), as an older Peel could store them
STORED: list[tuple[dict[str, Any], str, str]] = [
    ({"match": {"path_regex": r"^/orders/(?=\d)"}}, "match.path_regex", r"^/orders/(?=\d)"),
    ({"match": {"path_regex": r"^/orders/(\d)\1$"}}, "match.path_regex", r"^/orders/(\d)\1$"),
    ({"match": {"path_regex": r"^/orders/a{,3}$"}}, "match.path_regex", r"^/orders/a{,3}$"),
    ({"match": {"path_prefix": "/orders", "headers": [{"name": "X-Beta", "regex": r"^(?!no)"}]}},
     "match.headers[0].regex", r"^(?!no)"),
    ({"match": {"path_prefix": "/orders", "query": [{"name": "v", "regex": r"(a)\1"}]}},
     "match.query[0].regex", r"(a)\1"),
    ({"match": {"path_prefix": "/orders"},
      "rewrite": {"path_regex": r"^/orders(?=/)", "replacement": "/v2"}},
     "rewrite.path_regex", r"^/orders(?=/)"),
    ({"match": {"path_prefix": "/orders"},
      "rewrite": {"path_regex": r"^/orders", "replacement": r"/v2\n"}},
     "rewrite.replacement", r"/v2\n"),
]


def document(route: dict[str, Any]) -> dict[str, Any]:
    return {"services": SERVICES, "routes": [DEFAULT, {"name": "broken", "service": "orders", **route}]}


@pytest.mark.parametrize(("route", "field", "value"), STORED, ids=[c[1] + c[2] for c in STORED])
def test_a_stored_parse_keeps_the_pattern_and_a_write_parse_refuses_it(
        route: dict[str, Any], field: str, value: str) -> None:
    data = document(route)
    with pytest.raises(RuleError) as refused:
        Document.parse(data)
    assert (refused.value.field, refused.value.value) == (f"routes[broken].{field}", value)

    stored = Document.parse(data, stored=True)
    broken = stored.route("broken")
    assert broken is not None
    assert [(r.route, r.field, r.value) for r in broken.refused_regex] == \
        [("broken", f"routes[broken].{field}", value)]
    # exported as stored: export, then apply, shows the operator the very text to fix
    assert stored.to_dict() == Document.parse(data, stored=True).to_dict()
    assert {"name": "broken", "service": "orders", **route} in stored.to_dict()["routes"]


def test_other_stored_errors_are_still_errors() -> None:
    with pytest.raises(RuleError, match=r"routes\[broken\].match.path_regex"):
        Document.parse(document({"match": {"path_regex": 5}}), stored=True)
    with pytest.raises(RuleError, match="names no service"):
        Document.parse({"services": [], "routes": [DEFAULT]}, stored=True)


def test_no_write_carries_the_route() -> None:
    stored = Document.parse(document(STORED[0][0]), stored=True)
    legacy = stored.route("legacy-default")
    assert legacy is not None
    # an edit of another route goes through build, which refuses with the field and the fix
    with pytest.raises(RuleError) as refused:
        Document.build(stored.services, stored.routes)
    assert refused.value.field == "routes[broken].match.path_regex"
    assert "peel routes set broken -f route.yaml" in str(refused.value)
    # and the one write path refuses the document as it is (a rollback to such a version)
    with pytest.raises(RuleError):
        encode_document(stored)
    fixed = Document.build(stored.services, [legacy])
    assert encode_document(fixed)


def test_the_stand_in_match_accepts_a_superset() -> None:
    assert unservable_match(Match(path_regex=r"^/orders/v1/(?=\d)")).path_regex == "^/orders/v1/"
    assert unservable_match(Match(path_regex=r"(?<=x)/orders")).path_regex == "^/"
    stand_in = unservable_match(Match(path_prefix="/o", headers=(
        FieldMatch("X-A", regex=r"(a)\1"), FieldMatch("X-B", regex="^b$"), FieldMatch("X-C", value="c"))))
    assert stand_in.headers == (FieldMatch("X-A", present=True), FieldMatch("X-B", regex="^b$"),
                                FieldMatch("X-C", value="c"))
    assert stand_in.path_prefix == "/o"


def compiled(route: dict[str, Any]) -> Any:
    return compile_document(Document.parse(document(route), stored=True), 3)


def test_the_unservable_route_takes_its_requests_and_forwards_none(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="peel.routes"):
        table = compiled(STORED[0][0])
    assert "route broken cannot be served: routes[broken].match.path_regex" in caplog.text
    assert "peel routes set broken -f route.yaml" in caplog.text
    route = table.match("GET", "shop", "/orders/42", b"", [])
    assert route is not None and route.name == "broken"
    # the stand-in service has no endpoint (503 on the data plane) and is not one of the table's
    assert route.service.endpoints == () and route.service.name not in table.services
    assert route.migration is None
    # what the stored pattern could never match still reaches the other routes
    other = table.match("GET", "shop", "/users/1", b"", [])
    assert other is not None and other.name == "legacy-default"


def test_an_unservable_header_route_takes_only_requests_with_the_header() -> None:
    table = compiled(STORED[3][0])
    with_header = table.match("GET", "shop", "/orders/1", b"", [(b"x-beta", b"yes")])
    without = table.match("GET", "shop", "/orders/1", b"", [])
    assert with_header is not None and with_header.name == "broken"
    assert without is not None and without.name == "legacy-default"


def test_an_unservable_rewrite_keeps_its_exact_match() -> None:
    table = compiled(STORED[5][0])
    route = table.match("GET", "shop", "/orders/1", b"", [])
    assert route is not None and route.name == "broken" and route.service.endpoints == ()
    assert table.match("GET", "shop", "/ordersx", b"", []).name == "legacy-default"  # type: ignore[union-attr]


def test_the_unservable_route_keeps_its_stored_precedence() -> None:
    """Ranked as the stored pattern was: before a working regex route with the same literals and
    a shorter pattern, as it would have been before the upgrade."""
    data = document(STORED[0][0])
    data["routes"].append({"name": "ids", "match": {"path_regex": r"^/orders/\d"}, "service": "orders"})
    table = compile_document(Document.parse(data, stored=True), 3)
    route = table.match("GET", "shop", "/orders/42", b"", [])
    assert route is not None and route.name == "broken"


def test_a_route_value_with_a_refusal_is_equal_across_reads() -> None:
    """Two reads of the same stored version are equal, so a diff between them is empty."""
    data = document(STORED[0][0])
    first, second = Document.parse(data, stored=True), Document.parse(data, stored=True)
    assert first == second
    assert isinstance(first.route("broken"), Route)


def test_the_snapshot_of_such_a_document_still_loads(tmp_path: Any) -> None:
    """A restarted gateway whose store is down starts from the snapshot: it must load too."""
    from routes.watcher import read_snapshot

    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps({"version": 4, "document": document(STORED[0][0])}))
    loaded = read_snapshot(path)
    assert loaded is not None and loaded[0] == 4
    broken = loaded[1].route("broken")
    assert broken is not None and broken.refused_regex
