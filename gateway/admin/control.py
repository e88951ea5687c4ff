"""`/api/v1/control`: what a sidecar asks of its control plane, as itself (no admin token).

    GET    /api/v1/control/config?known=TAG&wait=S   the current config version and registered endpoints
    POST   /api/v1/control/endpoints   {"endpoint": URL, "ttl": S}   register or refresh the caller's endpoint
    DELETE /api/v1/control/endpoints   {"endpoint": URL}             remove it
    POST   /api/v1/control/counts      {"instance": ..., "traffic": [...], "edges": [...], ...}
                                       add what the caller's flushers counted to the store

Every request is authenticated by the caller's certificate and a signature of its key
(`gateway.identity.caller`: the renewal's proof of possession, applied to the request), checked
against `[identity] ca_dir`, like a renewal; the answer is for that identity. A sidecar registers
only under its own service, with its own identity.

`config` answers `{version, tag, document, registered}` with the tag also as `ETag`: the config
version and the registry's stamp (`routes.registry`), which together say what a gateway compiles.
With `known` equal to the current tag it waits (long poll, at most `MAX_WAIT` seconds) for either
to move and answers 304 when neither did. One `ChangeFeed` per admin app asks the store for the tag
at most every `POLL_INTERVAL` seconds however many sidecars wait, and only while one does.

`counts` takes what a sidecar would have written to the store (it has none): its traffic counts,
graph edges, guard samples and shadow counts, checked by `gateway.admin.control_counts` and added in
one transaction under the caller's identity, so the graph, `peel migrate status`, the guard and the
shadow report of the control plane include what its sidecars saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HTTPRoute

from gateway.admin import control_counts
from gateway.admin.wire import BadRequest, BodyTooLarge, body_object, encode, problem_response
from gateway.core import problems
from gateway.core.settings import Settings
from routes.errors import RuleError
from routes.registry import DEFAULT_TTL
from routes.revocations import Revocations
from routes.store import Store

CONFIG_PATH = "/api/v1/control/config"
ENDPOINTS_PATH = "/api/v1/control/endpoints"
COUNTS_PATH = control_counts.COUNTS_PATH
PATHS = frozenset({CONFIG_PATH, ENDPOINTS_PATH, COUNTS_PATH})
MAX_BODY = 4096
MAX_WAIT = 30.0
POLL_INTERVAL = 0.25


class ChangeFeed:
    """The store's current tag (config version and registry stamp), asked at most every `interval`
    seconds by whichever waiter comes first, shared by the others."""

    def __init__(self, store: Store, interval: float = POLL_INTERVAL) -> None:
        self.store = store
        self.interval = interval
        self._tag = ""
        self._at = -1e9
        self._lock = asyncio.Lock()

    def read(self) -> str:
        """Blocking: the tag now, `<config version>-<digest of the registry's stamp>` (URL-safe)."""
        version, stamp, _ = self.store.watch_poll()  # one statement, as a watcher's read
        return f"{version}-{hashlib.sha256(repr(stamp).encode()).hexdigest()[:16]}"

    def invalidate(self) -> None:
        """Read the store again at the next ask (this process just changed the registry)."""
        self._at = -1e9

    async def current(self) -> str:
        async with self._lock:
            if time.monotonic() - self._at >= self.interval:
                self._tag = await run_in_threadpool(self.read)
                self._at = time.monotonic()
            return self._tag

    async def wait_past(self, known: str, timeout: float, *,
                        stop: Callable[[], bool] = lambda: False) -> str:
        """The tag once it differs from `known`, or `known` after `timeout` seconds (or as soon as
        `stop()`: a draining control plane ends its long polls instead of waiting on them)."""
        deadline = time.monotonic() + timeout
        while True:
            tag = await self.current()
            left = deadline - time.monotonic()
            if tag != known or left <= 0 or stop():
                return tag
            await asyncio.sleep(min(self.interval, left))


async def _raw_body(request: Request, limit: int = MAX_BODY) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge("body", f"is larger than {limit} bytes", int(declared))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge("body", f"is larger than {limit} bytes")
    return b"".join(chunks)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("body", f"is not valid JSON: {exc}") from None


def write_report(store: Store, report: control_counts.Report) -> None:
    """Add a checked report to `store` in one transaction (blocking)."""
    from facade.shadow_counts import add_shadow

    with store._connect(write=True) as conn:
        # the store's own writers, each on this one connection (they open their transaction with
        # `_connect`; here it hands them the open one)
        one = copy.copy(store)
        object.__setattr__(one, "_connect", lambda *, write=False: contextlib.nullcontext(conn))
        one.add_traffic(report.instance, report.traffic)
        for minute, edges in sorted(report.edges.items()):
            one.add_edges(report.instance, minute, edges)
        one.add_guard_samples(report.instance, report.samples)
        add_shadow(one, report.instance, report.shadow, report.examples)


def _target(request: Request) -> str:
    """The request target as the caller sent (and signed) it: raw path and query."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    return raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")


def _refused(exc: Exception) -> Response:
    if type(exc).__name__ == "CaError":
        return problem_response(problems.problem(503, "ca-unavailable", str(exc)))
    return problem_response(problems.problem(401, "caller-refused", str(exc)),
                            {"WWW-Authenticate": 'PeelProof realm="peel"'})


class ControlResource:
    """The control paths over `store`, callers checked against the CA of `settings`."""

    def __init__(self, store: Store, settings: Settings, *, feed: ChangeFeed | None = None,
                 serving: Callable[[], bool] = lambda: True) -> None:
        self.store = store
        # false while the gateway drains (its readiness): long polls answer at once then
        self.serving = serving
        self.ca_dir = Path(settings.identity.ca_dir)
        self.feed = feed if feed is not None else ChangeFeed(store)
        # the answer of one tag and its revocations, loaded once for every sidecar that asks
        self._loaded: tuple[str, bytes, Revocations] | None = None
        self._loading = asyncio.Lock()

    def routes(self) -> list[HTTPRoute]:
        return [HTTPRoute(CONFIG_PATH, self.config, methods=["GET"]),
                HTTPRoute(ENDPOINTS_PATH, self.register, methods=["POST"]),
                HTTPRoute(ENDPOINTS_PATH, self.deregister, methods=["DELETE"]),
                HTTPRoute(COUNTS_PATH, self.counts, methods=["POST"])]

    async def _load(self, tag: str) -> tuple[bytes, Revocations]:
        """The config answer for `tag`, encoded (read after the tag: a change in between is
        answered now and again next time, never missed), and the latest version's revocations;
        once per tag, on a worker thread: every follower gets the same bytes, and a 10,000-route
        document is tens of milliseconds of Python the event loop would otherwise wait for."""
        async with self._loading:
            loaded = self._loaded
            if loaded is None or loaded[0] != tag:

                def load() -> tuple[bytes, Revocations]:
                    latest = self.store.latest()
                    registered = self.store.registrations()
                    body = {"version": latest.version, "tag": tag, "document": latest.document.to_dict(),
                            "registered": [r.to_dict() for r in registered]}
                    return encode(body), Revocations(latest.document.revocations)

                loaded = self._loaded = (tag, *await run_in_threadpool(load))
            return loaded[1], loaded[2]

    async def _caller(self, request: Request, body: bytes) -> str | Response:
        """The caller's SPIFFE ID, or the refusal to answer (401, or 403 for a revoked certificate,
        as a renewal's)."""
        from gateway.identity import caller
        from gateway.identity.errors import IdentityError
        from gateway.identity.revocation import describe, leaf_facts

        target, method = _target(request), request.method
        try:
            identity, leaf = await run_in_threadpool(caller.verify, self.ca_dir, request.headers, method,
                                                     target, body, now=datetime.now(UTC))
        except IdentityError as exc:
            return _refused(exc)
        _, revocations = await self._load(await self.feed.current())
        found = leaf_facts(leaf).refused_by(revocations)
        if found is not None:
            return problem_response(problems.problem(
                403, "certificate-revoked", f"the certificate is revoked: {describe(found)}; join again "
                "with a new token (`peel join-token create`)"))
        return str(identity)

    async def config(self, request: Request) -> Response:
        found = await self._caller(request, b"")
        if isinstance(found, Response):
            return found
        known = request.query_params.get("known", "")
        try:
            wait = float(request.query_params.get("wait", "0"))
        except ValueError:
            raise BadRequest("wait", "must be a number of seconds", request.query_params["wait"]) from None
        if not 0 <= wait <= MAX_WAIT:
            raise BadRequest("wait", f"must be from 0 to {MAX_WAIT:g} seconds", str(wait))
        tag = await self.feed.wait_past(known, wait, stop=lambda: not self.serving()) if known \
            else await self.feed.current()
        if known and tag == known:
            return Response(status_code=304, headers={"ETag": f'"{tag}"'})
        body, _ = await self._load(tag)
        return Response(body, media_type="application/json", headers={"ETag": f'"{tag}"'})

    async def _endpoint_body(self, request: Request,
                             allowed: tuple[str, ...]) -> tuple[bytes, dict[str, Any]]:
        raw = await _raw_body(request)
        body = body_object(_json(raw), allowed, ("endpoint",))
        if not isinstance(body["endpoint"], str):
            raise RuleError("endpoint", "must be a URL string", str(body["endpoint"]))
        return raw, body

    async def register(self, request: Request) -> Response:
        raw, body = await self._endpoint_body(request, ("endpoint", "ttl"))
        found = await self._caller(request, raw)
        if isinstance(found, Response):
            return found
        ttl = body.get("ttl", DEFAULT_TTL.total_seconds())
        if not isinstance(ttl, int | float) or isinstance(ttl, bool):
            raise RuleError("ttl", "must be a number of seconds", str(ttl))
        service = found.rsplit("/", 1)[1]
        registration = await run_in_threadpool(
            lambda: self.store.register_endpoint(service, body["endpoint"], found,
                                                 ttl=timedelta(seconds=ttl)))
        self.feed.invalidate()
        return JSONResponse(registration.to_dict())

    async def deregister(self, request: Request) -> Response:
        raw, body = await self._endpoint_body(request, ("endpoint",))
        found = await self._caller(request, raw)
        if isinstance(found, Response):
            return found
        service = found.rsplit("/", 1)[1]
        removed = await run_in_threadpool(self.store.deregister_endpoint, service, body["endpoint"])
        self.feed.invalidate()
        return JSONResponse({"service": service, "endpoint": body["endpoint"], "removed": removed})

    async def counts(self, request: Request) -> Response:
        raw = await _raw_body(request, control_counts.MAX_BODY)
        found = await self._caller(request, raw)  # who sent it first: its rows are named after it
        if isinstance(found, Response):
            return found
        value = _json(raw)
        if not isinstance(value, dict):
            raise BadRequest("body", "must be a JSON object")
        report = control_counts.decode(value, found)
        await run_in_threadpool(write_report, self.store, report)
        return JSONResponse({"instance": report.instance, "rows": report.rows()})
