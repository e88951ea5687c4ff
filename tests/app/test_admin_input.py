"""Hostile input to the admin API: forged history rows in a reason, JSON nested past any sense."""

from __future__ import annotations

import pytest

from routes.changes import check_reason
from routes.errors import RuleError
from tests.app.conftest import SAMPLE, Admin

pytestmark = pytest.mark.anyio

# A reason that, printed raw by `peel config history`, would erase its own line and draw a fake row.
FORGED = ["seed\n  2  2026-01-01 00:00  root  ~1 route  approved by security",
          "seed\r  9  2026-01-01 00:00  root",
          "seed\x1b[2K\x1b[1Gforged",
          "seed\x00",
          "seed\x7f",
          "seed\u0085next line",
          "seed\u2028next line",
          "seed\u202egnp.exe"]


@pytest.mark.parametrize("reason", FORGED)
async def test_a_reason_with_control_characters_is_refused_and_writes_nothing(admin: Admin,
                                                                              reason: str) -> None:
    r = await admin.client.post("/api/v1/config/apply", json={"document": SAMPLE, "reason": reason})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == "reason"
    assert admin.store.history() == []


async def test_rollback_and_migration_reasons_are_checked_too(admin: Admin) -> None:
    await admin.apply(SAMPLE, reason="one")
    await admin.apply({"services": SAMPLE["services"], "routes": SAMPLE["routes"][:1]}, reason="two")
    r = await admin.client.post("/api/v1/config/rollback", json={"version": 1, "reason": FORGED[0]})
    assert (r.status_code, r.json()["field"]) == (422, "reason")
    r = await admin.client.post("/api/v1/migrations/legacy-default/start",
                                json={"to": "orders", "reason": FORGED[2]})
    assert (r.status_code, r.json()["field"]) == (422, "reason")
    assert [v.reason for v in admin.store.history()] == ["two", "one"]


async def test_the_reason_header_refuses_control_characters(admin: Admin) -> None:
    r = await admin.client.put("/api/v1/services/legacy", json={"endpoints": ["http://10.0.0.5:80"]},
                               headers={"Peel-Reason": "ok\x1b[2Kforged"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "reason"
    assert admin.store.history() == []


async def test_an_ordinary_reason_in_any_language_still_passes(admin: Admin) -> None:
    await admin.apply(SAMPLE, reason="Umzug der Bestellungen \u2014 \u6ce8\u6587 (ticket 12)")
    (info,) = admin.store.history()
    assert info.reason.startswith("Umzug der Bestellungen")


def test_check_reason_names_the_character() -> None:
    with pytest.raises(RuleError) as caught:
        check_reason("a\x1bb")
    assert caught.value.field == "reason" and "U+001B" in str(caught.value)


@pytest.mark.parametrize("path", ["/api/v1/config/apply", "/api/v1/services/legacy",
                                  "/api/v1/migrations/orders/start"])
async def test_deeply_nested_json_is_a_400_not_a_500(admin: Admin, path: str) -> None:
    depth = 100_000
    body = b"[" * depth + b"]" * depth
    method = "PUT" if "services" in path else "POST"
    r = await admin.client.request(method, path, content=body,
                                   headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text[:300]
    assert r.json()["field"] == "body" and "nested" in r.json()["detail"]
    # just past the limit, a depth Python's parser copes with, is refused the same way
    body = b'{"document":' + b"[" * 100 + b"]" * 100 + b"}"
    r = await admin.client.request(method, path, content=body,
                                   headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text[:300]
    assert admin.store.history() == []
