"""The migration inside a route: validation naming the field, and the export/apply round trip."""

from __future__ import annotations

from typing import Any

import pytest

from routes.diff import diff
from routes.errors import RuleError
from routes.migration import Fallback, Migration
from routes.model import Document


def doc(migration: Any, service: str = "legacy") -> dict[str, Any]:
    return {"services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                         {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]}],
            "routes": [{"name": "orders", "match": {"path_prefix": "/orders"}, "service": service,
                        "migration": migration}]}


FULL = {"to": "orders", "stage": "canary", "percent": 10, "cohort": {"header": "X-User-Id"},
        "salt": "orders-2", "beta": {"header": "X-Beta-User", "allow": ["alice"], "deny": ["bob"]},
        "fallback": {"statuses": [404, 501], "on_error": False, "max_body": 1024,
                     "unsafe_methods": True}}


def test_full_migration_round_trips_unchanged() -> None:
    document = Document.parse(doc(FULL))
    printed = document.to_dict()
    assert printed["routes"][0]["migration"] == FULL
    assert Document.parse(printed) == document
    assert not diff(document, Document.parse(printed))


def test_defaults_are_left_out_of_the_printed_form() -> None:
    document = Document.parse(doc({"to": "orders"}))
    assert document.to_dict()["routes"][0]["migration"] == {"to": "orders", "stage": "legacy"}
    m = document.routes[0].migration
    assert m is not None and m.fallback == Fallback() and m.fallback.statuses == (404, 501, 502, 503)


@pytest.mark.parametrize("percent, share, printed", [(0, 0, None), (10, 1000, 10), (12.5, 1250, 12.5),
                                                     (0.01, 1, 0.01), (100, 10_000, 100)])
def test_percent_to_the_hundredth(percent: float, share: int, printed: float | None) -> None:
    m = Migration.parse({"to": "orders", "percent": percent}, "m")
    assert m.share == share
    assert m.to_dict().get("percent") == printed


@pytest.mark.parametrize("migration, field", [
    ({"to": "nobody"}, "routes[orders].migration.to"),
    ({"to": "legacy"}, "routes[orders].migration.to"),
    ({}, "routes[orders].migration.to"),
    ({"to": "orders", "stage": "half"}, "routes[orders].migration.stage"),
    ({"to": "orders", "percent": 101}, "routes[orders].migration.percent"),
    ({"to": "orders", "percent": -1}, "routes[orders].migration.percent"),
    ({"to": "orders", "percent": 10.001}, "routes[orders].migration.percent"),
    ({"to": "orders", "percent": "10"}, "routes[orders].migration.percent"),
    ({"to": "orders", "percent": True}, "routes[orders].migration.percent"),
    ({"to": "orders", "cohort": {"header": "X-A", "cookie": "s"}}, "routes[orders].migration.cohort.cookie"),
    ({"to": "orders", "cohort": {"header": "bad header"}}, "routes[orders].migration.cohort.header"),
    ({"to": "orders", "beta": {"allow": ["a"]}}, "routes[orders].migration.beta"),
    ({"to": "orders", "beta": {"header": "X-B", "allow": ["a b"]}}, "routes[orders].migration.beta.allow[0]"),
    ({"to": "orders", "beta": {"header": "X-B", "allow": ["a"], "deny": ["a"]}},
     "routes[orders].migration.beta.deny"),
    ({"to": "orders", "fallback": {"statuses": [99]}}, "routes[orders].migration.fallback.statuses[0]"),
    ({"to": "orders", "fallback": {"max_body": -1}}, "routes[orders].migration.fallback.max_body"),
    ({"to": "orders", "fallback": {"on_error": "yes"}}, "routes[orders].migration.fallback.on_error"),
    ({"to": "orders", "salt": ""}, "routes[orders].migration.salt"),
    ({"to": "orders", "shadow": True}, "routes[orders].migration.shadow"),
    ("orders", "routes[orders].migration"),
])
def test_refusals_name_the_field(migration: Any, field: str) -> None:
    with pytest.raises(RuleError) as caught:
        Document.parse(doc(migration))
    assert caught.value.field == field


def test_a_service_used_as_migration_target_cannot_be_deleted() -> None:
    from routes.changes import delete_service

    document = Document.parse(doc({"to": "orders"}))
    with pytest.raises(RuleError, match="used by route orders"):
        delete_service(document, "orders")


@pytest.mark.parametrize("method, allowed", [("GET", True), ("HEAD", True), ("PUT", True),
                                             ("DELETE", True), ("POST", False), ("PATCH", False)])
def test_fallback_methods(method: str, allowed: bool) -> None:
    assert Fallback().allows_method(method) is allowed
    assert Fallback(unsafe_methods=True).allows_method(method)
