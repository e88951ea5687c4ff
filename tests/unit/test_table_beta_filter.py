"""The beta filter per route table: untrusted beta values stripped, the filter rebuilt on a swap."""

from __future__ import annotations

from typing import Any

from facade.beta import BetaTrust
from facade.beta_filter import TableBetaFilter
from routes.compiler import compile_document
from routes.model import Document
from routes.table import RouteTable


def table(beta: dict[str, Any] | None, version: int) -> RouteTable:
    migration: dict[str, Any] = {"to": "orders", "stage": "canary", "percent": 10}
    if beta is not None:
        migration["beta"] = beta
    return compile_document(Document.parse({
        "services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                     {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]}],
        "routes": [{"name": "orders", "match": {"path_prefix": "/orders"}, "service": "legacy",
                    "migration": migration}]}), version)


HEADERS = [(b"host", b"shop"), (b"x-beta-user", b"alice"), (b"cookie", b"beta=alice; theme=dark")]


def test_values_from_a_trusted_network_stay_and_name_the_user() -> None:
    filters = TableBetaFilter(BetaTrust(["10.0.0.0/8"]))
    cleaned, users = filters.for_table(table({"header": "X-Beta-User", "allow": ["alice"]}, 1)).apply(
        HEADERS, "10.1.1.1")
    assert cleaned is None
    assert users == {("header", b"x-beta-user"): "alice"}


def test_untrusted_values_are_stripped() -> None:
    filters = TableBetaFilter(BetaTrust(["10.0.0.0/8"]))
    cleaned, users = filters.for_table(table({"header": "X-Beta-User", "allow": ["alice"]}, 1)).apply(
        HEADERS, "192.0.2.1")
    assert cleaned == [(b"host", b"shop"), (b"cookie", b"beta=alice; theme=dark")]
    assert users == {}


def test_one_filter_per_table_and_a_new_one_after_a_swap() -> None:
    filters = TableBetaFilter(BetaTrust())
    first = table({"header": "X-Beta-User", "allow": ["alice"]}, 1)
    assert filters.for_table(first) is filters.for_table(first)
    assert filters.for_table(first).headers == frozenset({b"x-beta-user"})
    second = table({"cookie": "beta", "allow": ["alice"]}, 2)
    swapped = filters.for_table(second)
    assert swapped.headers == frozenset() and swapped.cookies == frozenset({"beta"})
    cleaned, _ = swapped.apply(HEADERS, "127.0.0.1")
    assert cleaned == [(b"host", b"shop"), (b"x-beta-user", b"alice"), (b"cookie", b"theme=dark")]
    assert not filters.for_table(table(None, 3))  # no migration names a beta source
