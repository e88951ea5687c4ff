"""A route's own request body cap (`max_body`): parsing, refusals naming the field, round trips."""

from __future__ import annotations

from typing import Any

import pytest

from routes.compiler import compile_document
from routes.errors import RuleError
from routes.model import Document

SERVICES = [{"name": "legacy", "endpoints": ["http://127.0.0.1:8081"]}]


def document(**fields: Any) -> dict[str, Any]:
    return {"services": SERVICES,
            "routes": [{"name": "upload", "match": {"path_prefix": "/upload"}, "service": "legacy",
                        **fields}]}


def test_absent_means_the_listener_limit_and_is_not_written() -> None:
    parsed = Document.parse(document())
    assert parsed.routes[0].max_body is None
    assert "max_body" not in parsed.routes[0].to_dict()
    assert compile_document(parsed, 1).routes[0].max_body is None


@pytest.mark.parametrize("limit", [0, 1, 10 * 1024 * 1024])
def test_a_set_limit_round_trips_and_reaches_the_compiled_route(limit: int) -> None:
    parsed = Document.parse(document(max_body=limit))
    assert parsed.routes[0].max_body == limit
    assert parsed.to_dict()["routes"][0]["max_body"] == limit
    assert Document.parse(parsed.to_dict()) == parsed
    assert compile_document(parsed, 1).routes[0].max_body == limit


@pytest.mark.parametrize("value", [-1, 1.5, "1024", True, None, [1]])
def test_anything_but_a_whole_number_of_bytes_is_refused_naming_the_field(value: object) -> None:
    if value is None:
        # YAML `max_body: ~` is the same as leaving it out.
        assert Document.parse(document(max_body=None)).routes[0].max_body is None
        return
    with pytest.raises(RuleError) as caught:
        Document.parse(document(max_body=value))
    assert caught.value.field == "routes[upload].max_body"
