"""`POST /api/v1/match`: which route and service would answer a request, without sending it.

The latest document is compiled into a route table once per config version (off the event loop)
and asked exactly what the data plane would ask: method, host without port, the normalised path,
the raw query and the headers.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import SplitResult, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from gateway.admin.wire import BadRequest, answer, body_object, read_json
from gateway.http.paths import DEFAULT_RULES, PathRules, normalise, path_rules
from gateway.server.settings import Settings
from routes.compiler import compile_document
from routes.errors import NotFoundError, RuleError
from routes.grammar import TOKEN_RE
from routes.model import HEADER_VALUE_RE
from routes.store import Store
from routes.table import RouteTable


class NoRoute(NotFoundError):
    code = "no-route"


class TableCache:
    """The compiled table of the latest config version; recompiled only when the version moves."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._table: RouteTable | None = None
        self._version = -1

    def current(self) -> tuple[int, RouteTable]:
        """Blocking: one cheap version query, and a compile when it changed."""
        version = self.store.latest_version()
        with self._lock:
            if self._table is not None and self._version == version:
                return version, self._table
        latest = self.store.latest()
        table = compile_document(latest.document, latest.version)
        with self._lock:
            if latest.version >= self._version:
                self._version, self._table = latest.version, table
        return latest.version, table


def _headers(value: object) -> list[tuple[bytes, bytes]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise RuleError("headers", "must be an object of header names to values", value)
    out: list[tuple[bytes, bytes]] = []
    for name, text in value.items():
        if not TOKEN_RE.match(name):
            raise RuleError(f"headers.{name}", "is not a valid header name", name)
        if not isinstance(text, str) or not HEADER_VALUE_RE.match(text):
            raise RuleError(f"headers.{name}", "must be a string of visible ASCII characters", text)
        out.append((name.lower().encode(), text.encode()))
    return out


def parse_request(body: dict[str, Any], paths: PathRules = DEFAULT_RULES,
                  ) -> tuple[str, str, str, bytes, list[tuple[bytes, bytes]]]:
    """(method, host, normalised path, raw query, headers) from a match request body.

    `paths` must be the data plane's path rules, or the answer is about a different path.
    """
    method = body.get("method", "GET")
    if not isinstance(method, str) or not TOKEN_RE.match(method):
        raise RuleError("method", "must be an HTTP method name", method)
    url = body["url"]
    if not isinstance(url, str) or not url:
        raise RuleError("url", "must be a URL like http://host/path?query, or a path", url)
    headers = _headers(body.get("headers"))
    if url.startswith("/"):
        # A path, as a request line carries it: `//admin` is a path with an empty first segment,
        # not a scheme-relative URL naming the host `admin` (which urlsplit would read).
        path_part, _, query = url.partition("#")[0].partition("?")
        parts = SplitResult("", "", path_part, query, "")
        host = ""
    else:
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
        except ValueError as exc:
            raise RuleError("url", f"is not a valid URL: {exc}", url) from None
        if parts.scheme and parts.scheme not in ("http", "https"):
            raise RuleError("url", "must be an http:// or https:// URL, or a path", url)
    if not host:
        # A bare path: the Host header says where it goes, as on the wire.
        given = next((v.decode() for k, v in headers if k == b"host"), "")
        host = given.rsplit(":", 1)[0] if not given.endswith("]") else given
        host = host.strip("[]").lower()
    elif not any(k == b"host" for k, _ in headers):
        headers.append((b"host", parts.netloc.rpartition("@")[2].encode("utf-8")))
    try:
        path = normalise((parts.path or "/").encode("utf-8"), paths)
    except ValueError as exc:
        raise BadRequest("url", f"has a path the gateway refuses: {exc}", url) from None
    return method.upper(), host, path, parts.query.encode("utf-8"), headers


class MatchResource:
    def __init__(self, store: Store) -> None:
        self.tables = TableCache(store)

    def routes(self) -> list[HTTPRoute]:
        return [HTTPRoute("/api/v1/match", self.match, methods=["POST"])]

    async def match(self, request: Request) -> Response:
        body = body_object(await read_json(request), ("method", "url", "headers"), ("url",))
        # The process's settings (on app.state) hold the `[paths]` rules the data plane uses.
        settings = getattr(request.app.state, "settings", None)
        paths = path_rules(settings.paths) if isinstance(settings, Settings) else DEFAULT_RULES
        method, host, path, query, headers = parse_request(body, paths)
        version, table = await run_in_threadpool(self.tables.current)
        route = table.match(method, host, path, query, headers)
        if route is None:
            raise NoRoute("url", f"no route matches {method} {body['url']}", body["url"])
        service = route.service
        return answer({"version": version, "route": route.name, "service": service.name,
                       "endpoints": [e.url for e in service.endpoints], "priority": route.priority,
                       "path": path, "upstream_path": route.rewrite_path(path),
                       "upstream_host": route.upstream_host}, version=version)
