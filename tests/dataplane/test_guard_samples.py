"""What the data plane records for the guard (facade.window.GuardSamples), in-process: only for a
guarded migration; per side; an error is a 5xx or an upstream failure, including a `to` failure
that the fallback answered from `from`; a 404 that the fallback answered is not one."""

from __future__ import annotations

from typing import Any

import pytest

from facade.window import GuardSamples
from tests.dataplane.conftest import Plane, PlaneFactory
from tests.dataplane.test_forwarding import LEGACY, NEW, migrated
from tests.fakes.upstream import Handler, echo, ok, reset, status


def guarded(plane: PlaneFactory, new: Handler, guard: bool = True) -> tuple[Plane, GuardSamples]:
    spec: dict[str, Any] = {"fallback": {"statuses": [404, 503]}}
    if guard:
        spec["guard"] = {}
    p = plane(migrated("migrated", **spec), {LEGACY: echo(), NEW: new})
    samples = p.app.samples = GuardSamples()
    return p, samples


def totals(samples: GuardSamples) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for (route, side, _), (requests, errors, hist) in samples.take().items():
        assert route == "shop" and sum(hist.values()) == requests
        r, e = out.get(side, (0, 0))
        out[side] = (r + requests, e + errors)
    return out


@pytest.mark.parametrize(("new", "answered", "expected"), [
    (ok(b"new"), 200, (2, 0)),
    (status(500), 500, (2, 2)),          # not a fallback status: answered as it is, an error
    (status(503), 200, (2, 2)),          # the fallback answered from `from`: still to's error
    (status(404), 200, (2, 0)),          # handed to the fallback, but not a failure of `to`
    (reset, 200, (2, 2)),                # an upstream failure
])
def test_to_answers_are_counted_with_their_errors(plane: PlaneFactory, new: Handler, answered: int,
                                                  expected: tuple[int, int]) -> None:
    p, samples = guarded(plane, new)

    async def go() -> None:
        for _ in range(2):
            r = await p.request("GET", "/shop/1")
            assert r.status == answered
        assert totals(samples) == {"to": expected}
    p.run(go)


def test_a_migration_without_a_guard_records_nothing(plane: PlaneFactory) -> None:
    p, samples = guarded(plane, ok(b"new"), guard=False)

    async def go() -> None:
        assert (await p.request("GET", "/shop/1")).status == 200
        assert samples.take() == {}
    p.run(go)
