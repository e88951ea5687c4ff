"""Whole-document apply (with dry run), history, versions, diff and rollback."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from routes.model import Document
from routes.patch import changes_between
from tests.app.conftest import SAMPLE, Admin

pytestmark = pytest.mark.anyio


async def test_dry_run_returns_the_diff_and_writes_nothing(admin: Admin) -> None:
    r = await admin.client.post("/api/v1/config/apply", json={"document": SAMPLE, "dry_run": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dry_run"] is True and body["version"] == 0
    assert body["summary"] == "+2 services, +2 routes"
    assert "+ route orders" in body["diff_text"]
    assert admin.version() == 0
    assert admin.store.history() == []


async def test_apply_creates_one_version_and_again_changes_nothing(admin: Admin) -> None:
    r = await admin.client.post("/api/v1/config/apply",
                                json={"document": SAMPLE, "reason": "import from nginx"})
    assert r.json()["version"] == 1 and r.json()["changed"] is True
    assert r.json()["created"]["actor"] == "alice"
    r = await admin.client.post("/api/v1/config/apply", json={"document": SAMPLE})
    assert r.json() | {"diff": None} == {"version": 1, "changed": False, "summary": "no change",
                                         "diff_text": r.json()["diff_text"], "dry_run": False,
                                         "diff": None}
    (info,) = admin.store.history()
    assert (info.version, info.actor, info.reason) == (1, "alice", "import from nginx")


async def test_apply_refuses_a_bad_document_and_unknown_fields(admin: Admin) -> None:
    await admin.apply(SAMPLE)
    bad = copy.deepcopy(SAMPLE)
    bad["routes"][1]["service"] = "nowhere"
    r = await admin.client.post("/api/v1/config/apply", json={"document": bad})
    assert r.status_code == 422
    assert (r.json()["field"], r.json()["value"]) == ("routes[orders].service", "nowhere")
    r = await admin.client.post("/api/v1/config/apply", json={"document": SAMPLE, "dryrun": True})
    assert r.status_code == 422 and r.json()["field"] == "dryrun"
    r = await admin.client.post("/api/v1/config/apply", json={"document": {**SAMPLE, "x": 1}})
    assert r.status_code == 422 and r.json()["field"] == "x"
    r = await admin.client.post("/api/v1/config/apply", json={"document": SAMPLE, "dry_run": "yes"})
    assert r.status_code == 422 and r.json()["field"] == "dry_run"
    assert admin.version() == 1


async def test_apply_with_stale_if_match_is_412_even_as_dry_run(admin: Admin) -> None:
    await admin.apply(SAMPLE)
    empty = {"services": [], "routes": []}
    for dry_run in (True, False):
        r = await admin.client.post("/api/v1/config/apply", json={"document": empty, "dry_run": dry_run},
                                    headers={"If-Match": '"0"'})
        assert r.status_code == 412, r.text
    assert admin.version() == 1


async def test_config_and_versions_read_back_what_was_stored(admin: Admin) -> None:
    await admin.apply(SAMPLE, reason="one")
    await admin.apply({"services": SAMPLE["services"], "routes": SAMPLE["routes"][:1]}, reason="two")
    r = await admin.client.get("/api/v1/config")
    assert r.headers["etag"] == '"2"'
    assert r.json()["version"] == 2 and r.json()["reason"] == "two"
    assert [x["name"] for x in r.json()["document"]["routes"]] == ["legacy-default"]
    r = await admin.client.get("/api/v1/config/versions/1")
    assert r.json()["document"] == SAMPLE and r.json()["actor"] == "alice"
    r = await admin.client.get("/api/v1/config/versions")
    assert [v["version"] for v in r.json()["versions"]] == [2, 1]
    r = await admin.client.get("/api/v1/config/versions", params={"limit": 1})
    assert [v["version"] for v in r.json()["versions"]] == [2]
    r = await admin.client.get("/api/v1/config/versions", params={"limit": "lots"})
    assert r.status_code == 400 and r.json()["field"] == "limit"
    r = await admin.client.get("/api/v1/config/versions/9")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


async def test_diff_between_versions(admin: Admin) -> None:
    await admin.apply(SAMPLE)
    await admin.apply({"services": SAMPLE["services"], "routes": SAMPLE["routes"][:1]})
    r = await admin.client.get("/api/v1/config/diff", params={"from": 1, "to": 2})
    assert r.json()["summary"] == "-1 route"
    assert "- route orders" in r.json()["diff_text"]
    r = await admin.client.get("/api/v1/config/diff", params={"from": 0})
    assert (r.json()["from"], r.json()["to"]) == (0, 2)
    assert r.json()["summary"] == "+2 services, +1 route"
    assert (await admin.client.get("/api/v1/config/diff")).status_code == 400
    assert (await admin.client.get("/api/v1/config/diff", params={"from": 7})).status_code == 404


async def test_rollback_creates_a_new_version_equal_to_n(admin: Admin) -> None:
    await admin.apply(SAMPLE)
    await admin.apply({"services": SAMPLE["services"][:1],
                       "routes": SAMPLE["routes"][:1]})
    r = await admin.client.post("/api/v1/config/rollback", json={"version": 1, "reason": "bad cut"})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 3 and r.json()["rolled_back_to"] == 1
    assert admin.store.get(3).document == admin.store.get(1).document
    latest = admin.store.history(1)[0]
    assert (latest.actor, latest.reason) == ("alice", "bad cut")
    r = await admin.client.post("/api/v1/config/rollback", json={"version": 1})
    assert r.json()["changed"] is False and admin.version() == 3
    r = await admin.client.post("/api/v1/config/rollback", json={"version": 42})
    assert r.status_code == 404
    r = await admin.client.post("/api/v1/config/rollback", json={"version": 2},
                                headers={"If-Match": '"2"'})
    assert r.status_code == 412
    r = await admin.client.post("/api/v1/config/rollback", json={"version": "2"})
    assert r.status_code == 422 and r.json()["field"] == "version"
    assert admin.version() == 3


async def test_an_applied_document_shares_its_unchanged_routes_with_the_stored_version(admin: Admin) -> None:
    """Applied again with one route changed, a document's other routes are the stored version's
    objects (parsed once, off the loop), so the diff and the compiles take only what changed."""
    doc: dict[str, Any] = {"services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]}],
                           "routes": [{"name": f"r{i}", "match": {"path_prefix": f"/r{i}"},
                                       "service": "legacy"} for i in range(20)]}
    r = await admin.client.post("/api/v1/config/apply", json={"document": doc})
    assert r.status_code == 200, r.text
    first = admin.store.latest().document
    doc["routes"][3]["match"]["path_prefix"] = "/three"
    r = await admin.client.post("/api/v1/config/apply", json={"document": doc})
    assert r.status_code == 200 and r.json()["summary"] == "~1 route", r.text
    second = admin.store.latest().document
    shared = [r.name for r in second.routes if r is first.route(r.name)]
    assert len(shared) == 19 and "r3" not in shared


async def test_the_stored_text_is_the_latest_document_as_stored(admin: Admin) -> None:
    r = await admin.client.get("/api/v1/config/stored")
    assert r.status_code == 200 and r.headers["etag"] == '"0"'
    assert json.loads(r.text) == {"routes": [], "services": []}
    await admin.apply(SAMPLE)
    r = await admin.client.get("/api/v1/config/stored")
    assert r.headers["etag"] == '"1"' and r.headers["content-type"].startswith("application/json")
    assert json.loads(r.text) == Document.parse(SAMPLE).to_dict()
    assert r.text.count("\n") >= 4  # a line per service and per route (routes.document_text)


async def test_changes_apply_to_the_version_named_and_give_the_whole_documents_result(
        admin: Admin) -> None:
    await admin.apply(SAMPLE)
    edited = copy.deepcopy(SAMPLE)
    edited["routes"][1]["match"]["path_prefix"] = "/v2/orders"
    r = await admin.client.get("/api/v1/config/stored")
    changes = changes_between(r.text, Document.parse(edited))
    assert changes == {"routes": [Document.parse(edited).route("orders").to_dict()]}  # type: ignore[union-attr]
    url = "/api/v1/config/apply"
    r = await admin.client.post(url, json={"changes": changes})
    assert r.status_code == 400 and r.json()["field"] == "If-Match"
    r = await admin.client.post(url, json={"changes": changes, "document": edited},
                                headers={"If-Match": '"1"'})
    assert r.status_code == 422 and r.json()["field"] == "changes"
    r = await admin.client.post(url, json={"changes": {"delete_routes": ["nope"]}},
                                headers={"If-Match": '"1"'})
    assert r.status_code == 422 and r.json()["field"] == "changes.delete_routes[0]"
    r = await admin.client.post(url, json={"changes": changes, "dry_run": True},
                                headers={"If-Match": '"1"'})
    assert r.status_code == 200 and r.json()["summary"] == "~1 route" and admin.version() == 1
    r = await admin.client.post(url, json={"changes": changes, "reason": "move orders"},
                                headers={"If-Match": '"1"'})
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    assert admin.store.latest().document == Document.parse(edited)
    r = await admin.client.post(url, json={"changes": changes}, headers={"If-Match": '"1"'})
    assert r.status_code == 412 and admin.version() == 2
