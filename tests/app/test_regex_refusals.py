"""The admin API refuses regexes RE2 cannot run and replacements that could split a request (422)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.app.conftest import SAMPLE, Admin

pytestmark = pytest.mark.anyio

CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"match": {"path_regex": r"^/a(?=b)"}}, "routes[x].match.path_regex", r"^/a(?=b)"),
    ({"match": {"path_prefix": "/x", "headers": [{"name": "X-A", "regex": r"(a)\1"}]}},
     "routes[x].match.headers[0].regex", r"(a)\1"),
    ({"match": {"path_prefix": "/x"}, "rewrite": {"path_regex": r"^/x(?<!y)", "replacement": "/"}},
     "routes[x].rewrite.path_regex", r"^/x(?<!y)"),
    ({"match": {"path_prefix": "/x"}, "rewrite": {"path_regex": "^/x", "replacement": "/y\r\nX-Evil: 1"}},
     "routes[x].rewrite.replacement", "/y\r\nX-Evil: 1"),
    ({"match": {"path_prefix": "/x"}, "rewrite": {"path_regex": "^/x", "replacement": r"/y\r\nX-Evil: 1"}},
     "routes[x].rewrite.replacement", r"/y\r\nX-Evil: 1"),
]


@pytest.mark.parametrize(("route", "field", "value"), CASES, ids=[c[1] for c in CASES])
async def test_refused_with_the_field_and_value(admin: Admin, route: dict[str, Any], field: str,
                                                value: str) -> None:
    await admin.apply(SAMPLE)
    r = await admin.client.put("/api/v1/routes/x", json={**route, "service": "orders"})
    assert r.status_code == 422, r.text
    problem = r.json()
    assert (problem["field"], problem["value"]) == (field, value)
    assert field in problem["detail"]
    assert admin.version() == 1


async def test_python_spellings_re2_reads_the_same_are_kept(admin: Admin) -> None:
    await admin.apply(SAMPLE)
    route = {"match": {"path_regex": r"^/users/(?P<id>\d+)\Z"}, "service": "orders",
             "rewrite": {"path_regex": r"^/users/(?P<id>\d+)", "replacement": r"/people/\g<id>"}}
    r = await admin.client.put("/api/v1/routes/x", json=route)
    assert r.status_code in (200, 201), r.text
    r = await admin.client.post("/api/v1/match", json={"url": "http://shop/users/42"})
    assert r.status_code == 200, r.text
    assert r.json()["route"] == "x" and r.json()["upstream_path"] == "/people/42", r.json()
