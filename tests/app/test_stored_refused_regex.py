"""A store written by an older Peel may hold a regex RE2 refuses (issue: upgrade to RE2).

Such a document is read (leniently: the route is marked unservable), exported unchanged, and fixed
with the ordinary commands; a new write that still holds the pattern is refused with 422.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert

from routes.schema import config_versions
from routes.store import Store
from tests.app.conftest import SAMPLE, Admin

pytestmark = pytest.mark.anyio

LOOKAHEAD = r"^/orders/(?=\d)"
BROKEN_ROUTE: dict[str, Any] = {"name": "orders-by-id", "match": {"path_regex": LOOKAHEAD},
                                "service": "orders"}
FIELD = "routes[orders-by-id].match.path_regex"


def old_document() -> dict[str, Any]:
    return {"services": SAMPLE["services"], "routes": [*SAMPLE["routes"], BROKEN_ROUTE]}


def store_as_older_peel(store: Store, document: dict[str, Any], version: int = 1) -> None:
    """Write `document` the way an older Peel did: straight into config_versions, no parse."""
    with store._engine.begin() as conn:
        conn.execute(insert(config_versions).values(
            version=version, created_at=datetime.now(UTC), actor="old-peel", reason="before RE2",
            summary="", document=json.dumps(document, sort_keys=True)))


async def test_the_stored_document_is_read_and_exported_with_the_pattern(admin: Admin) -> None:
    store_as_older_peel(admin.store, old_document())
    latest = admin.store.latest()
    route = latest.document.route("orders-by-id")
    assert route is not None
    assert [(r.field, r.value) for r in route.refused_regex] == [(FIELD, LOOKAHEAD)]
    r = await admin.client.get("/api/v1/config")
    assert r.status_code == 200, r.text
    exported = r.json()["document"]
    assert {"name": "orders-by-id", "match": {"path_regex": LOOKAHEAD}, "service": "orders"} in \
        exported["routes"]


async def test_applying_the_export_unchanged_is_refused_naming_the_field(admin: Admin) -> None:
    store_as_older_peel(admin.store, old_document())
    exported = (await admin.client.get("/api/v1/config")).json()["document"]
    r = await admin.client.post("/api/v1/config/apply", json={"document": exported, "reason": "again"})
    assert r.status_code == 422, r.text
    assert (r.json()["field"], r.json()["value"]) == (FIELD, LOOKAHEAD)
    assert admin.version() == 1


async def test_another_edit_is_refused_until_the_route_is_fixed(admin: Admin) -> None:
    store_as_older_peel(admin.store, old_document())
    r = await admin.client.put("/api/v1/routes/beta", json={"match": {"path_prefix": "/beta"},
                                                              "service": "orders"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == FIELD
    assert "peel routes set orders-by-id" in r.json()["detail"]
    assert admin.version() == 1


async def test_routes_set_fixes_the_route(admin: Admin) -> None:
    store_as_older_peel(admin.store, old_document())
    fixed = {"match": {"path_regex": r"^/orders/\d"}, "service": "orders"}
    r = await admin.client.put("/api/v1/routes/orders-by-id", json=fixed)
    assert r.status_code in (200, 201), r.text
    assert admin.version() == 2
    route = admin.store.latest().document.route("orders-by-id")
    assert route is not None and route.refused_regex == ()
    assert route.match.path_regex == r"^/orders/\d"
    # the table is whole again: other edits go through
    r = await admin.client.put("/api/v1/routes/beta", json={"match": {"path_prefix": "/beta"},
                                                              "service": "orders"})
    assert r.status_code in (200, 201), r.text


async def test_apply_of_a_fixed_document_and_delete_work(admin: Admin) -> None:
    store_as_older_peel(admin.store, old_document())
    r = await admin.client.delete("/api/v1/routes/orders-by-id")
    assert r.status_code == 200, r.text
    assert admin.store.latest().document.route("orders-by-id") is None
    await admin.apply(old_document() | {"routes": [*SAMPLE["routes"], {
        **BROKEN_ROUTE, "match": {"path_regex": r"^/orders/\d"}}]})
    assert admin.version() == 3


async def test_rollback_to_a_version_holding_the_pattern_is_refused(admin: Admin) -> None:
    store_as_older_peel(admin.store, old_document())
    await admin.client.delete("/api/v1/routes/orders-by-id")
    r = await admin.client.post("/api/v1/config/rollback", json={"version": 1, "reason": "back"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == FIELD
    assert admin.version() == 2
