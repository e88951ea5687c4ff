"""The document diff: what a dry run and the history show an operator."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routes.diff import diff
from routes.model import Document


def doc(services: list[dict[str, Any]] | None = None,
        routes: list[dict[str, Any]] | None = None) -> Document:
    return Document.parse({"services": services or [], "routes": routes or []})


LEGACY = {"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]}
ORDERS = {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]}
DEFAULT = {"name": "default", "match": {"path_prefix": "/"}, "service": "legacy"}
ORDERS_ROUTE = {"name": "orders", "match": {"path_prefix": "/orders"}, "service": "orders"}
BASE = doc([LEGACY], [DEFAULT])


def test_equal_documents_have_no_diff() -> None:
    change = diff(BASE, doc([LEGACY], [DEFAULT]))
    assert not change
    assert change.summary() == "no change"
    assert change.to_text() == "no change"
    assert change.to_dict()["services"] == {"added": [], "removed": [], "changed": []}


def test_order_of_writing_does_not_matter() -> None:
    a = doc([LEGACY, ORDERS], [DEFAULT, ORDERS_ROUTE])
    b = doc([ORDERS, LEGACY], [ORDERS_ROUTE, DEFAULT])
    assert not diff(a, b)


def test_added_service_and_route() -> None:
    change = diff(BASE, doc([LEGACY, ORDERS], [DEFAULT, ORDERS_ROUTE]))
    assert change
    assert change.summary() == "+1 service, +1 route"
    assert change.to_text().splitlines() == ["+ service orders", "+ route orders"]
    body = change.to_dict()
    assert body["services"]["added"] == [ORDERS]
    assert body["routes"]["added"] == [ORDERS_ROUTE]
    assert body["summary"] == "+1 service, +1 route"


def test_removed_routes_are_listed_before_removed_services() -> None:
    change = diff(doc([LEGACY, ORDERS], [DEFAULT, ORDERS_ROUTE]), BASE)
    assert change.summary() == "-1 service, -1 route"
    assert change.to_text().splitlines() == ["- route orders", "- service orders"]
    assert change.to_dict()["routes"]["removed"] == [ORDERS_ROUTE]


def test_changed_route_service_names_the_field_with_old_and_new() -> None:
    new = doc([LEGACY, ORDERS], [{**DEFAULT, "service": "orders"}])
    change = diff(doc([LEGACY, ORDERS], [DEFAULT]), new)
    assert change.summary() == "~1 route"
    assert change.to_text() == "~ route default: service legacy -> orders"
    (changed,) = change.to_dict()["routes"]["changed"]
    assert changed == {"name": "default", "fields": ["service"], "old": {"service": "legacy"},
                       "new": {"service": "orders"}}


def test_changed_endpoints_show_both_lists() -> None:
    change = diff(BASE, doc([{**LEGACY, "endpoints": ["http://10.0.0.6:8080"]}], [DEFAULT]))
    assert change.summary() == "~1 service"
    assert change.to_text() == ('~ service legacy: endpoints ["http://10.0.0.5:8080"] -> '
                                '["http://10.0.0.6:8080"]')


def test_a_field_set_from_its_default_shows_the_default() -> None:
    change = diff(BASE, doc([LEGACY], [{**DEFAULT, "priority": 10}]))
    (changed,) = change.routes.changed
    assert changed.fields == ("priority",)
    assert (changed.old, changed.new) == ({"priority": 0}, {"priority": 10})
    assert change.to_text() == "~ route default: priority 0 -> 10"
    back = diff(doc([LEGACY], [{**DEFAULT, "priority": 10}]), BASE)
    assert back.to_text() == "~ route default: priority 10 -> 0"


def test_several_changed_fields_are_listed_on_one_line() -> None:
    new = doc([LEGACY, ORDERS], [{"name": "default", "match": {"path_prefix": "/api"},
                                  "service": "orders", "rewrite": {"host": "api.internal"}}])
    change = diff(doc([LEGACY, ORDERS], [DEFAULT]), new)
    (changed,) = change.routes.changed
    assert set(changed.fields) == {"match", "service", "rewrite"}
    assert changed.old["rewrite"] == {} and changed.new["rewrite"] == {"host": "api.internal"}
    line = change.to_text()
    assert line.startswith("~ route default: ")
    assert 'match {"path_prefix": "/"} -> {"path_prefix": "/api"}' in line
    assert "service legacy -> orders" in line


def test_summary_counts_and_plurals() -> None:
    old = doc([LEGACY, {"name": "a", "endpoints": ["http://a:1"]},
               {"name": "b", "endpoints": ["http://b:1"]}], [DEFAULT])
    new = doc([{**LEGACY, "endpoints": ["http://10.0.0.9:1"]}, ORDERS,
               {"name": "c", "endpoints": ["http://c:1"]}],
              [DEFAULT, ORDERS_ROUTE, {"name": "two", "match": {"path": "/two"}, "service": "c"}])
    assert diff(old, new).summary() == "+2 services, +2 routes, ~1 service, -2 services"


def test_full_listing_orders_additions_changes_removals() -> None:
    old = doc([LEGACY, {"name": "old", "endpoints": ["http://old:1"]}],
              [DEFAULT, {"name": "gone", "match": {"path": "/gone"}, "service": "old"}])
    new = doc([LEGACY, ORDERS], [{**DEFAULT, "service": "orders"}, ORDERS_ROUTE])
    assert diff(old, new).to_text().splitlines() == [
        "+ service orders",
        "+ route orders",
        "~ route default: service legacy -> orders",
        "- route gone",
        "- service old",
    ]


def test_from_empty_lists_everything_as_added() -> None:
    change = diff(Document(), BASE)
    assert change.summary() == "+1 service, +1 route"
    assert not change.services.removed and not change.routes.changed


@pytest.mark.parametrize("old,new", [(BASE, Document()), (Document(), BASE)])
def test_diff_is_symmetric_in_counts(old: Document, new: Document) -> None:
    forward, backward = diff(old, new), diff(new, old)
    assert len(forward.services.added) == len(backward.services.removed)
    assert len(forward.routes.added) == len(backward.routes.removed)


names = st.sets(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=5)
ports = st.integers(min_value=1, max_value=3)


@given(old_names=names, new_names=names, old_port=ports, new_port=ports)
def test_property_counts_match_the_name_sets(old_names: set[str], new_names: set[str],
                                             old_port: int, new_port: int) -> None:
    def build(service_names: set[str], port: int) -> Document:
        return doc([{"name": n, "endpoints": [f"http://{n}:{port}"]} for n in service_names])

    change = diff(build(old_names, old_port), build(new_names, new_port))
    assert len(change.services.added) == len(new_names - old_names)
    assert len(change.services.removed) == len(old_names - new_names)
    both = old_names & new_names
    assert len(change.services.changed) == (len(both) if old_port != new_port else 0)
    assert bool(change) == (old_names != new_names or (bool(both) and old_port != new_port))
