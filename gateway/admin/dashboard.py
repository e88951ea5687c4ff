"""The dashboard: one page on the admin listener that shows where each migration stands.

    GET /dashboard              the page (no data in it: it asks the API with the operator's token)
    GET /dashboard/app.js       its script
    GET /dashboard/app.css      its styles

The page polls `GET /api/v1/migrations` (and `.../{route}/shadow` for the migrations in the shadow
stage) and `GET /api/v1/config/versions` every 5 seconds with a bearer token of `read` scope, and
shows each migration's stage, the share of its requests still answered by legacy since the stage
began, fallbacks, the guard's verdict, the shadow's comparison, alerts (a retired route that still
met requests only legacy could have answered, a guard rolling back, a shadow's regression), and the
latest config versions ([docs/dashboard.md](../../docs/dashboard.md)).

The three files are the only paths of the admin API open without a token (with `/healthz` and
`/readyz`): they are the same for everyone and hold nothing of the gateway's; every figure comes
from the token-protected API. The token is typed into the page or handed to it in the URL's
fragment (`/dashboard#token=...`, which a browser never sends to a server), kept in the tab's
`sessionStorage` and removed from the address bar. The answers forbid everything the page does not
use (`Content-Security-Policy`: scripts, styles and requests from this origin only, no inline code,
no frames), so a value shown on the page (a route name, a reason) can never run as code; the
script writes every value as text, never as markup.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

PATH = "/dashboard"
_FILES = {PATH: ("index.html", "text/html; charset=utf-8"),
          PATH + "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          PATH + "/app.css": ("app.css", "text/css; charset=utf-8")}
OPEN_PATHS = frozenset(_FILES)
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
_loaded: dict[str, bytes] = {}


def _body(name: str) -> bytes:
    """A file of `gateway/admin/static/`, read on its first request (package data in a wheel)."""
    body = _loaded.get(name)
    if body is None:
        body = _loaded[name] = resources.files("gateway.admin").joinpath("static", name).read_bytes()
    return body


async def _serve(request: Request) -> Response:
    name, media_type = _FILES[request.url.path]
    return Response(_body(name), media_type=media_type, headers=HEADERS)


def dashboard_routes() -> list[HTTPRoute]:
    return [HTTPRoute(path, _serve, methods=["GET"]) for path in _FILES]


__all__ = ["OPEN_PATHS", "PATH", "dashboard_routes"]
