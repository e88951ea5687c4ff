"""`GET /api/v1/migrations/{route}/shadow`: what the shadow stage has measured for a route.

The counts are summed over every process and gateway from the migration's newest transition on
(like the traffic counts of `GET /migrations/{route}`): compared pairs, the mismatch rate with its
Wilson interval, the noise baseline's, the copies dropped (queue full), skipped (method, body
size, failed primary) and failed (`to` did not answer in time), the top differing fields each with
its verdict (`regression`, `inconclusive`, `below-margin`, `noise`: `facade.noise`), and the
newest redacted example pairs.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from facade.noise import report
from facade.shadow_counts import ShadowTotals, shadow_examples_of, shadow_since
from gateway.admin.wire import answer, query_int
from routes.errors import NotFoundError
from routes.store import Store


def shadow_report(totals: ShadowTotals, *, top: int = 10) -> dict[str, Any]:
    """The report's JSON body (without the route's identity): rates, intervals, fields."""
    r = report(totals.counts, top=top)
    return {
        "pairs": r.pairs, "mismatched": r.mismatched, "mismatch_rate": r.mismatch_rate,
        "interval": list(r.interval),
        "baseline": {"pairs": r.baseline_pairs, "mismatched": r.baseline_mismatched,
                     "rate": r.baseline_rate, "interval": list(r.baseline_interval)},
        "dropped": totals.dropped, "skipped": totals.skipped, "failed": totals.failed,
        "regressions": r.regressions, "excess": list(r.excess),
        "fields": [{"field": f.field, "verdict": f.verdict, "new_diffs": f.new_diffs,
                    "old_diffs": f.old_diffs, "new_rate": f.new_rate, "old_rate": f.old_rate,
                    "excess": list(f.excess)} for f in r.fields],
    }


class ShadowResource:
    """The handler of `/api/v1/migrations/{route}/shadow`, bound to the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def routes(self) -> list[HTTPRoute]:
        return [HTTPRoute("/api/v1/migrations/{route}/shadow", self.get, methods=["GET"])]

    def _read(self, name: str, top: int, examples: int) -> tuple[int, dict[str, Any]]:
        latest = self.store.latest()
        route = latest.document.route(name)
        if route is None:
            raise NotFoundError(f"routes[{name}]", "no such route", name)
        if route.migration is None:
            raise NotFoundError(f"routes[{name}].migration", "the route has no migration", name)
        since = self.store.last_transitions().get(name)
        version = since.config_version if since is not None else 0
        body: dict[str, Any] = {
            "route": name, "stage": route.migration.stage, "from": route.service,
            "to": route.migration.to,
            "since": {"config_version": version,
                      "time": since.created_at.isoformat() if since is not None else None},
            **shadow_report(shadow_since(self.store, name, version), top=top),
            "examples": shadow_examples_of(self.store, name, examples),
        }
        return latest.version, body

    async def get(self, request: Request) -> Response:
        name = request.path_params["route"]
        top = query_int(request, "top", 10, minimum=1) or 10
        examples = query_int(request, "examples", 5, minimum=0)
        version, body = await run_in_threadpool(self._read, name, min(top, 200),
                                                min(5 if examples is None else examples, 10))
        return answer({"version": version, "shadow": body}, version=version)


def shadow_routes(store: Store) -> list[HTTPRoute]:
    return ShadowResource(store).routes()
