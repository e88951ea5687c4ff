"""The sample legacy monolith: the app that Peel strangles in `peel demo`.

    python -m gateway.demo.monolith --port 8081

Home page, orders, users, a large streamed download and a health check; every response carries
`X-Served-By: legacy-monolith`, so a downstream can see who answered through the gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.demo.shop import OrderBook, OrderEndpoints, ServedBy, health, run_app

SERVED_BY = "legacy-monolith"
DEFAULT_PORT = 8081
MIB = 1024 * 1024
DEFAULT_DOWNLOAD_MIB = 100
MAX_DOWNLOAD_MIB = 100 * 1024
CHUNK = 64 * 1024

USERS: tuple[dict[str, object], ...] = (
    {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"},
    {"id": 2, "name": "Grace Hopper", "email": "grace@example.com"},
    {"id": 3, "name": "Linus Torvalds", "email": "linus@example.com"},
)

HOME = """<!doctype html>
<html><head><meta charset="utf-8"><title>Legacy monolith</title></head>
<body><h1>Legacy monolith</h1>
<p>The old application. Everything here is served by <code>legacy-monolith</code>.</p>
<ul>
<li><code>GET /orders</code>, <code>GET /orders/{id}</code>, <code>POST /orders</code></li>
<li><code>GET /users</code>, <code>GET /users/{id}</code></li>
<li><code>GET /download?mb=N</code> (N MiB streamed, default 100)</li>
<li><code>GET /health</code></li>
</ul></body></html>
"""


async def home(request: Request) -> HTMLResponse:
    return HTMLResponse(HOME)


async def users(request: Request) -> JSONResponse:
    return JSONResponse({"users": list(USERS), "count": len(USERS)})


async def user(request: Request) -> JSONResponse:
    raw = request.path_params["user_id"]
    found = next((u for u in USERS if str(u["id"]) == raw), None)
    if found is None:
        return JSONResponse({"error": "not found", "detail": f"no user {raw}"}, status_code=404)
    return JSONResponse(found)


async def zeros(total: int) -> AsyncIterator[bytes]:
    """`total` bytes in chunks generated on the fly: memory stays at one chunk whatever the size."""
    block = b"\0" * CHUNK
    left = total
    while left > 0:
        piece = block if left >= CHUNK else block[:left]
        left -= len(piece)
        yield piece


async def download(request: Request) -> Response:
    raw = request.query_params.get("mb", str(DEFAULT_DOWNLOAD_MIB))
    if not raw.isdigit() or int(raw) > MAX_DOWNLOAD_MIB:
        return PlainTextResponse(f"mb must be a whole number of MiB from 0 to {MAX_DOWNLOAD_MIB}\n",
                                 status_code=400)
    size = int(raw) * MIB
    return StreamingResponse(zeros(size), media_type="application/octet-stream",
                             headers={"Content-Length": str(size),
                                      "Content-Disposition": f'attachment; filename="{raw}mib.bin"'})


def build_app() -> Starlette:
    """A fresh monolith with its own seeded order book."""
    orders = OrderEndpoints(OrderBook.seeded())
    return Starlette(
        routes=[Route("/", home, methods=["GET"]),
                Route("/orders", orders.list, methods=["GET"]),
                Route("/orders", orders.create, methods=["POST"]),
                Route("/orders/{order_id}", orders.get, methods=["GET"]),
                Route("/users", users, methods=["GET"]),
                Route("/users/{user_id}", user, methods=["GET"]),
                Route("/download", download, methods=["GET"]),
                Route("/health", health, methods=["GET"])],
        middleware=[Middleware(ServedBy, name=SERVED_BY)])


app = build_app()

if __name__ == "__main__":
    run_app(app, "gateway.demo.monolith", DEFAULT_PORT)
