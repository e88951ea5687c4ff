"""`POST /api/v1/match`: which route and service would answer a request, without sending it.

The latest document is compiled into a route table once per config version (off the event loop)
and the request goes through the data plane's own resolve step (`gateway.dataplane.resolve`):
path rules, beta trust (with `from` as the downstream address), match, body limit, deadline and
the facade decision. So the answer names the service that would really answer (a migration's
side included) and why: the cohort key and its bucket, the beta value and whether it was trusted.
No rate-limit token is taken.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from typing import Any
from urllib.parse import SplitResult, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from facade.beta import BetaTrust
from facade.bucketing import bucket
from gateway.admin.wire import BadRequest, answer, body_object, read_json
from gateway.core.settings import DeadlineSettings, Settings
from gateway.dataplane.resolve import Incoming, Refusal, Resolution, Resolver
from gateway.http.paths import path_rules
from gateway.policy.deadline import DeadlineRules, whole_ms
from routes.compiler import compile_document
from routes.errors import NotFoundError, RuleError
from routes.grammar import TOKEN_RE, cookie_value, header_value
from routes.migration import CompiledMigration
from routes.model import HEADER_VALUE_RE
from routes.store import Store
from routes.table import RouteTable

# RFC 6265 cookie-octet: visible ASCII but for space, DQUOTE, comma, semicolon and backslash.
_COOKIE_VALUE = re.compile(r"^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*$")


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


def parse_request(body: dict[str, Any]) -> tuple[str, bytes, bytes, list[tuple[bytes, bytes]], str | None]:
    """(method, raw path, raw query, headers, client address) from a match request body.

    The URL's host becomes the Host header (origin form, as a client that was sent to the gateway
    for that host would send it) unless the headers name one; `cookies` join one Cookie header.
    """
    method = body.get("method", "GET")
    if not isinstance(method, str) or not TOKEN_RE.match(method):
        raise RuleError("method", "must be an HTTP method name", method)
    url = body["url"]
    if not isinstance(url, str) or not url:
        raise RuleError("url", "must be a URL like http://host/path?query, or a path", url)
    headers = _headers(body.get("headers"))
    cookies = body.get("cookies")
    if cookies is not None:
        if not isinstance(cookies, dict):
            raise RuleError("cookies", "must be an object of cookie names to values", cookies)
        pairs = []
        for name, value in cookies.items():
            if not TOKEN_RE.match(name):
                raise RuleError(f"cookies.{name}", "is not a valid cookie name", name)
            if not isinstance(value, str) or not _COOKIE_VALUE.match(value):
                raise RuleError(f"cookies.{name}", "must be a cookie value (visible ASCII without "
                                "spaces, quotes, commas, semicolons or backslashes)", value)
            pairs.append(f"{name}={value}")
        if pairs:
            headers.append((b"cookie", "; ".join(pairs).encode("ascii")))
    client = body.get("from")
    if client is not None:
        try:
            client = str(ipaddress.ip_address(client)) if isinstance(client, str) else None
        except ValueError:
            client = None
        if client is None:
            raise RuleError("from", "must be the IP address of the downstream", body.get("from"))
    if url.startswith("/"):
        # A path, as a request line carries it: `//admin` is a path with an empty first segment,
        # not a scheme-relative URL naming the host `admin` (which urlsplit would read).
        path_part, _, query = url.partition("#")[0].partition("?")
        parts = SplitResult("", "", path_part, query, "")
    else:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise RuleError("url", f"is not a valid URL: {exc}", url) from None
        if parts.scheme and parts.scheme not in ("http", "https"):
            raise RuleError("url", "must be an http:// or https:// URL, or a path", url)
        if parts.netloc and not any(k == b"host" for k, _ in headers):
            headers.append((b"host", parts.netloc.rpartition("@")[2].encode("utf-8")))
    return (method.upper(), (parts.path or "/").encode("utf-8"), parts.query.encode("utf-8"), headers,
            client)


def _resolver(settings: Settings | None) -> Resolver:
    """The data plane's resolve step as this process's settings make it, without rate limiters:
    `/match` takes no tokens."""
    if settings is None:
        return Resolver(deadlines=DeadlineRules(DeadlineSettings()))
    facade = settings.facade
    return Resolver(paths=path_rules(settings.paths), deadlines=DeadlineRules(settings.deadlines),
                    beta=BetaTrust(facade.trusted_networks, facade.beta_secret))


def explain_migration(migration: CompiledMigration, resolved: Resolution,
                      headers: list[tuple[bytes, bytes]], client: str | None) -> dict[str, Any]:
    """Why the migration picked its side for this request: stage, cohort key and bucket, beta."""
    spec = migration.spec
    decision = resolved.decision
    assert decision is not None
    out: dict[str, Any] = {"stage": spec.stage, "from": migration.from_service.name,
                           "to": migration.to_service.name, "side": decision.side,
                           "reason": decision.reason, "percent": spec.percent}
    if migration.cohort_header is not None:
        source = f"header {migration.cohort_header.decode()}"
    elif migration.cohort_cookie is not None:
        source = f"cookie {migration.cohort_cookie}"
    else:
        source = "client address"
    key = migration.cohort_key(resolved.headers, client)
    out["cohort"] = {"source": source, "key": key or None,
                     "bucket": bucket(migration.salt, key) if key else None,
                     "share": migration.spec.share}
    if migration.beta_source is not None:
        kind, name = migration.beta_source
        sent = (header_value(headers, name) if isinstance(name, bytes) else cookie_value(headers, name))
        user = resolved.beta_users.get(migration.beta_source)
        beta = spec.beta
        listed = None
        if user is not None and beta is not None:
            listed = "deny" if user in beta.deny else "allow" if user in beta.allow else None
        label = name.decode() if isinstance(name, bytes) else name
        out["beta"] = {"source": f"{kind} {label}", "sent": sent is not None,
                       "trusted": user is not None, "user": user, "list": listed}
    return out


class MatchResource:
    def __init__(self, store: Store) -> None:
        self.tables = TableCache(store)
        self._resolver: tuple[object, Resolver] | None = None

    def routes(self) -> list[HTTPRoute]:
        return [HTTPRoute("/api/v1/match", self.match, methods=["POST"])]

    def resolver(self, settings: Settings | None) -> Resolver:
        cached = self._resolver
        if cached is None or cached[0] is not settings:
            cached = self._resolver = (settings, _resolver(settings))
        return cached[1]

    async def match(self, request: Request) -> Response:
        body = body_object(await read_json(request), ("method", "url", "headers", "cookies", "from"),
                           ("url",))
        # The process's settings (on app.state) hold the `[paths]`, `[facade]` and `[deadlines]`
        # rules the data plane uses.
        settings = getattr(request.app.state, "settings", None)
        resolver = self.resolver(settings if isinstance(settings, Settings) else None)
        method, raw_path, query, headers, client = parse_request(body)
        version, table = await run_in_threadpool(self.tables.current)
        now = time.monotonic()
        resolved = resolver.resolve(table, Incoming(method, raw_path, query, list(headers), client), now)
        if isinstance(resolved, Refusal):
            if resolved.code == "bad-path":
                raise BadRequest("url", resolved.detail.replace("the request path is refused",
                                                                "has a path the gateway refuses"),
                                 body["url"])
            if resolved.code == "no-route":
                raise NoRoute("url", f"no route matches {method} {body['url']}", body["url"])
            if resolved.route is None:
                raise BadRequest("headers", resolved.detail, body.get("headers"))
            route = resolved.route
            return answer({"version": version, "route": route.name, "service": route.service.name,
                           "refused": {"status": resolved.status, "code": resolved.code,
                                       "detail": resolved.detail}}, version=version)
        route = resolved.route
        service = resolved.service
        migration = route.migration
        policy = route.rate_limit
        return answer({"version": version, "route": route.name, "service": service.name,
                       "endpoints": [e.url for e in service.endpoints], "priority": route.priority,
                       "path": resolved.path, "upstream_path": route.rewrite_path(resolved.path),
                       "upstream_host": route.upstream_host,
                       "side": resolved.decision.side if resolved.decision is not None else None,
                       "migration": (explain_migration(migration, resolved, headers, client)
                                     if migration is not None else None),
                       "from": client,
                       "rate_limit": ({"requests": policy.requests, "per": policy.per}
                                      if policy is not None else None),
                       "max_body": route.max_body,
                       "deadline_ms": (whole_ms(resolved.deadline - now)
                                       if resolved.deadline is not None else None),
                       "websocket": route.websocket}, version=version)
