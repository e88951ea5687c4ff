"""`POST /match` with a bare path: `//name` is a path, never a scheme-relative URL with a host."""

from __future__ import annotations

import pytest

from tests.app.conftest import SAMPLE, Admin

pytestmark = pytest.mark.anyio

DOCUMENT = {**SAMPLE, "routes": [*SAMPLE["routes"],
                                 {"name": "orders-host", "match": {"hosts": ["orders"]},
                                  "service": "orders", "priority": 10}]}


async def test_a_path_starting_with_two_slashes_is_a_path_not_a_host(admin: Admin) -> None:
    await admin.apply(DOCUMENT)
    r = await admin.client.post("/api/v1/match", json={"url": "//orders/12?x=1",
                                                       "headers": {"Host": "shop.example"}})
    assert r.status_code == 200, r.text
    # The data plane routes `GET //orders/12` with `Host: shop.example` by its path: no route
    # names the host, and the merged path `/orders/12` is under the `/orders` prefix.
    assert r.json()["route"] == "orders"
    assert r.json()["path"] == "/orders/12"


async def test_without_a_host_header_a_double_slash_path_names_no_host(admin: Admin) -> None:
    await admin.apply(DOCUMENT)
    r = await admin.client.post("/api/v1/match", json={"url": "//orders"})
    assert r.json()["route"] == "orders"  # not `orders-host`: no host was named
    assert r.json()["path"] == "/orders"


async def test_query_and_fragment_of_a_bare_path(admin: Admin) -> None:
    await admin.apply(DOCUMENT)
    r = await admin.client.post("/api/v1/match", json={"url": "/orders/7?x=//orders#frag"})
    assert r.json()["route"] == "orders"
    assert r.json()["path"] == "/orders/7"


async def test_a_scheme_and_host_still_name_the_host(admin: Admin) -> None:
    await admin.apply(DOCUMENT)
    r = await admin.client.post("/api/v1/match", json={"url": "http://orders//x"})
    assert r.json()["route"] == "orders-host"
