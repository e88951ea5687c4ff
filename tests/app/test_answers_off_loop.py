"""Answers that grow with the table are built and encoded on a worker thread, not on the event loop
the data plane shares: `GET /api/v1/routes` of 10,000 routes was 75 ms the loop waited for
(p99 at 1,500 req/s 73-82 ms while `peel routes list` ran in a loop; bench/README.md)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import types
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.admin import wire
from tests.app.conftest import SAMPLE, Admin

pytestmark = pytest.mark.anyio


@pytest.fixture
def render_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The threads every JSON answer is encoded on, from now on."""
    threads: list[int] = []
    render = wire.JSON.render

    def recording(self: wire.JSON, content: Any) -> bytes:
        threads.append(threading.get_ident())
        return render(self, content)

    monkeypatch.setattr(wire.JSON, "render", recording)
    return threads


@pytest.mark.parametrize("path", ["/api/v1/routes", "/api/v1/services", "/api/v1/config",
                                  "/api/v1/config/versions/1"])
async def test_a_table_sized_answer_is_encoded_off_the_event_loop(
        admin: Admin, render_threads: list[int], path: str) -> None:
    await admin.apply(SAMPLE)
    render_threads.clear()
    r = await admin.client.get(path)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == '"1"'
    assert render_threads and threading.get_ident() not in render_threads


@pytest.mark.parametrize("method,path,body", [
    ("PUT", "/api/v1/routes/orders", {"match": {"path_prefix": "/o"}, "service": "orders"}),
    ("POST", "/api/v1/config/apply", {"document": SAMPLE, "dry_run": True}),
    ("GET", "/api/v1/config/diff?from=0", None),
])
async def test_a_write_or_diff_answer_is_encoded_off_the_event_loop(
        admin: Admin, render_threads: list[int], method: str, path: str, body: Any) -> None:
    """Their diffs grow with the change: a whole table's at the first apply."""
    await admin.apply(SAMPLE)
    render_threads.clear()
    r = await admin.client.request(method, path, json=body)
    assert r.status_code == 200, r.text
    assert render_threads and threading.get_ident() not in render_threads


@dataclasses.dataclass(frozen=True)
class Item:
    name: str
    at: dt.datetime
    tags: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Described:
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "kind": "described"}


def reference_plain(value: Any) -> Any:
    """`plain` as it was before its fast paths: the result must not differ."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return reference_plain(value.to_dict())
        return {f.name: reference_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, types.MappingProxyType | dict | OrderedDict):
        return {str(k): reference_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [reference_plain(v) for v in value]
    return value


class Name(str):
    pass


def test_plain_gives_what_it_gave_before_its_fast_paths() -> None:
    at = dt.datetime(2026, 12, 5, 13, 0, tzinfo=dt.UTC)
    value = {"version": 3, 7: "int key", None: [1.5, True, None], "items": [
        Item("a", at, ("x", "y")), Described(2), {"nested": (Item("b", at, ()),)}],
        "proxy": types.MappingProxyType({1: at}), "ordered": OrderedDict([(2, "two")]),
        "sub": Name("kept"), "when": at}
    assert wire.plain(value) == reference_plain(value)
    assert wire.plain(value)["None"] == [1.5, True, None]
    assert wire.plain(value)["items"][0] == {"name": "a", "at": at.isoformat(), "tags": ["x", "y"]}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=7) | st.dictionaries(
        st.text(max_size=5) | st.integers() | st.booleans() | st.none(), inner, max_size=5),
    max_leaves=40)


@given(value=JSON_VALUES)
@settings(max_examples=300, deadline=None)
def test_encode_gives_the_bytes_of_one_dumps_call(value: Any) -> None:
    """Lists longer than `SPLIT` are encoded in slices; the bytes are json.dumps's."""
    split = wire.SPLIT
    wire.SPLIT = 2  # slices of two elements: every list of three or more is split
    try:
        got = wire.encode(value)
    finally:
        wire.SPLIT = split
    assert got == json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    assert wire.encode(value) == got
