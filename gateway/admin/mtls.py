"""`GET /api/v1/mtls/readiness?window=3600` (`peel mtls readiness`): who still speaks plaintext.

The inbound listener counts its requests by source, plaintext and mTLS (`Metrics.inbound`: the
caller's identity, else its address, with the time of the last request); every serving process
publishes them (`gateway.telemetry.procstats`). This merges them and lists the sources whose last
plaintext request falls in the window: while the list is not empty, `strict` would refuse
someone (`docs/mtls.md`). Counts are since each process started; `last_seen` is what the window
reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.telemetry.procstats import LiveView
from routes.fields import duration

DEFAULT_WINDOW = 3600.0


def readiness(processes: Iterable[Mapping[str, Any]], now: float, window: float) -> dict[str, Any]:
    """The sources seen on the inbound listener (merged over `processes`' snapshots)."""
    merged: dict[tuple[str, str], list[float]] = {}
    for snap in processes:
        metrics: Mapping[str, Any] = snap.get("metrics") or {}
        for mtls, source, count, last in metrics.get("inbound", ()):
            row = merged.setdefault((str(mtls), str(source)), [0.0, 0.0])
            row[0] += float(count)
            row[1] = max(row[1], float(last))
    since = now - window

    def listed(mtls: str) -> list[dict[str, Any]]:
        rows = [{"source": source, "requests": int(count), "last_seen": last}
                for (kind, source), (count, last) in merged.items() if kind == mtls and last >= since]
        return sorted(rows, key=lambda r: (-r["last_seen"], r["source"]))

    plaintext = listed("false")
    return {"window": window, "plaintext": plaintext, "mtls": listed("true"), "ready": not plaintext}


async def _readiness(request: Request) -> Response:
    # a bad window is a RuleError naming `window`: the admin app's handler answers it
    window = duration(request.query_params.get("window", "1h"), "window")
    live: LiveView | None = request.app.state.live
    if live is None:
        processes: list[dict[str, Any]] = []
    else:
        local = live.local_snapshot()
        processes = await run_in_threadpool(live.processes, local)
    return JSONResponse(readiness(processes, time.time(), window))


def mtls_routes() -> list[BaseRoute]:
    return [Route("/api/v1/mtls/readiness", _readiness, methods=["GET"])]
